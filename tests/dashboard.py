"""The Grafana dashboard's queries (monitoring/grafana/provisioning/dashboards/sagalog.json), as
Prometheus evaluates them, and the metric names they and the processes name.

Grafana's variables are substituted the way Grafana would for "all sagas": ``$saga`` by the
variable's all-value, ``$__rate_interval`` by ``RATE_INTERVAL``. Names are read with PromQL's
own grammar (``promql_parser``, Prometheus' parser), so a query that does not parse fails too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PROVISIONING = ROOT / "monitoring" / "grafana" / "provisioning"
DASHBOARD = PROVISIONING / "dashboards" / "sagalog.json"
RATE_INTERVAL = "1m"
#: The sample names each kind of metric family exports beside its own name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows (and the panels rows hold, collapsed or not)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every panel's queries, with Grafana's variables substituted."""
    return [
        Query(panel["title"], target["refId"], substituted(dashboard, target["expr"]))
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def substituted(dashboard: dict[str, Any], expr: str) -> str:
    for variable in dashboard["templating"]["list"]:
        expr = expr.replace(f"${variable['name']}", variable["allValue"])
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def variable_metrics(dashboard: dict[str, Any]) -> set[str]:
    """The metrics the variables' ``label_values(metric, label)`` queries read."""
    names = set()
    for variable in dashboard["templating"]["list"]:
        definition = variable["definition"]
        assert definition.startswith("label_values(") and definition.endswith(")"), definition
        selector = definition.removeprefix("label_values(").removesuffix(")").rsplit(",", 1)[0]
        names |= metric_names(selector)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (its selectors' names, or their ``__name__``)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(
                m.value for m in node.matchers.matchers if m.name == "__name__" and m.value
            )

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def exported() -> dict[str, str]:
    """Every sample name the processor and worker register, to its family's name."""
    import sagas.worker  # noqa: F401  (the worker's metrics live in the same module)
    import stream_processors.engine.metrics  # noqa: F401

    return dict(_sample_names())


def _sample_names() -> Iterator[tuple[str, str]]:
    for family in REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            yield family.name + suffix, family.name
