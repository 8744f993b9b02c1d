"""The Grafana dashboard names only metrics the processes export, and shows every one of them.

The queries are parsed with PromQL's grammar (``tests/dashboard.py``); the metric families are
those the processor and the worker register with prometheus_client. The integration test
(tests/integration/test_dashboard.py) evaluates every query against a real Prometheus.
"""

from __future__ import annotations

import re

from tests.dashboard import (
    PROVISIONING,
    exported,
    load,
    metric_names,
    panels,
    queries,
    variable_metrics,
)


def test_every_query_names_only_metrics_the_processes_export() -> None:
    dashboard = load()
    samples = exported()
    unknown = {
        f"{query.panel} {query.ref}: {name}"
        for query in queries(dashboard)
        for name in metric_names(query.expr)
        if name not in samples
    }
    unknown |= {f"variable: {name}" for name in variable_metrics(dashboard) - samples.keys()}
    assert unknown == set()


def test_every_sagalog_metric_has_a_panel() -> None:
    shown = {exported()[name] for query in queries(load()) for name in metric_names(query.expr)}
    ours = {family for family in exported().values() if family.startswith("sagalog_")}
    assert ours - shown == set()


def test_every_panel_queries_the_provisioned_datasource() -> None:
    provisioned = (PROVISIONING / "datasources" / "prometheus.yml").read_text()
    (uid,) = re.findall(r"^\s+uid: (\S+)$", provisioned, re.MULTILINE)  # one datasource
    dashboard = load()
    for panel in panels(dashboard):
        assert panel["targets"], f"{panel['title']} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    titles = [panel["title"] for panel in panels(dashboard)]
    assert len(titles) == len(set(titles))


def test_the_metric_names_are_read_from_the_grammar_not_guessed() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x=~"sum|rate"}[5m]))) '
        '/ on() group_left max(b) + {__name__="c"} or vector(1)'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
