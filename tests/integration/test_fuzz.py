"""The short hostile-input fuzz run, inside ``make test`` (``make chaos`` runs the full one).

Legitimate orders beside every kind of hostile record in ``chaos.hostile`` (sizes at and just
over the default limits, forged replies and commands, bad reply addresses, garbage), once with
signing on and once with it off: no process exits, every hostile record is dead-lettered with
its reason or counted as ignored, and every legitimate order ends as planned (with signing off,
except the forgeries' own targets).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.fuzz import FuzzConfig, run_fuzz
from tests.conftest import KafkaCluster

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("signing", [True, False], ids=["signed", "unsigned"])
def test_hostile_input_stops_nothing_and_changes_no_legitimate_outcome(
    signing: bool, kafka: KafkaCluster, tmp_path: Path
) -> None:
    config = FuzzConfig(
        sagas=150,
        publish_seconds=10,
        signing=signing,
        storm=1_000,
        timeout=120,
        bootstrap=kafka.bootstrap,
        work_dir=tmp_path / "fuzz",
    )
    report = run_fuzz(config)

    assert report.exited == []
    assert report.problems == []
    assert len(report.hostile) >= 30, sorted(report.hostile)
    assert "missing" not in report.outcomes
    forged_targets = 0 if signing else 3 * config.forgeries  # unchecked without signing
    assert sum(report.outcomes.values()) == report.legitimate - forged_targets
