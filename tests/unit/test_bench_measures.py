"""The bench's pure parts: hop statistics from record times, pipe shapes, RocksDB bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import pure_core_speed
from bench.end_to_end import COMMIT_COUNT, COMMIT_SUM, commits_between, median_round
from bench.hops import COMMAND, DECIDED, PUBLISHED, REPLY, ROUTED, Event, statistics
from bench.limit import Output, load_shape, save_shape
from bench.report import (
    broker_settings_line,
    derived,
    latency_sections,
    pure_core_line,
)
from stream_processors.engine.store import MemoryBounds, SnapshotStore


def _saga(t0: int, routed: int, decided: int, reply: int, done: int) -> list[Event]:
    return [
        (t0, PUBLISHED, "published"),
        (t0 + routed, ROUTED, "routed"),
        (t0 + routed + decided, DECIDED, "SagaStarted"),
        (t0 + routed + decided, DECIDED, "CommandSent"),
        (t0 + routed + decided, COMMAND, "command Pay"),
        (t0 + routed + decided + reply, REPLY, "reply Paid"),
        (t0 + routed + decided + reply + done, DECIDED, "SagaCompleted"),
    ]


def test_hops_follow_the_common_path_and_group_a_decisions_entries() -> None:
    events = {f"s{n}": _saga(1000 * n, 10 + n, 5, 40, 7) for n in range(5)}
    # A saga that took another path is counted, not mixed into the hops.
    events["odd"] = [(0, PUBLISHED, "published"), (3, DECIDED, "SagaStarted")]
    found = statistics(events)
    assert found["sagas"] == 5 and found["of"] == 6
    assert [h["hop"] for h in found["hops"]] == [
        "published → routed",
        "routed → decided",
        "decided → command Pay",
        "command Pay → reply Paid",
        "reply Paid → decided",
    ]
    assert [h["p50_ms"] for h in found["hops"]] == [12, 5, 0, 40, 7]
    assert found["hops"][0]["p99_ms"] == 14
    assert found["total_p50_ms"] == 12 + 5 + 40 + 7


def test_a_source_event_decided_without_the_inbox_hop_makes_one_hop() -> None:
    # Decided directly (docs/direct-sources.md): no routed copy between publish and decision.
    events = {
        f"s{n}": [e for e in _saga(1000 * n, 10, 5, 40, 7) if e[1] != ROUTED] for n in range(3)
    }
    found = statistics(events)
    assert found["path"].startswith("published → decided → command Pay")
    assert [h["p50_ms"] for h in found["hops"]][:2] == [15, 0]


def test_ties_at_one_millisecond_are_put_in_causal_order() -> None:
    # The reply and the decision it causes carry the same millisecond.
    saga: list[Event] = [(5, DECIDED, "SagaCompleted"), (5, REPLY, "reply Paid")]
    events = {"s": [*saga, (1, COMMAND, "command c")]}
    assert statistics(events)["path"] == "command c → reply Paid → decided"


def test_no_events_no_hops() -> None:
    assert statistics({})["hops"] == []


def test_a_pipe_shape_survives_its_file(tmp_path: Path) -> None:
    outputs = [
        Output("journal", b"\x00entry", [], same_partition=True),
        Output("payments.commands", b"cmd", [("sagalog.command_id", b"x/1")]),
        Output("sink"),
    ]
    save_shape(outputs, tmp_path / "shape.json")
    assert load_shape(tmp_path / "shape.json") == outputs


def test_memory_bounds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGALOG_ROCKSDB_BLOCK_CACHE_MB", "3")
    monkeypatch.setenv("SAGALOG_ROCKSDB_WRITE_BUFFERS", "")
    bounds = MemoryBounds.from_environment()
    assert bounds == MemoryBounds(block_cache_mb=3, write_buffer_mb=MemoryBounds().write_buffer_mb)
    monkeypatch.setenv("SAGALOG_ROCKSDB_WRITE_BUFFER_MB", "0")
    with pytest.raises(ValueError, match="SAGALOG_ROCKSDB_WRITE_BUFFER_MB"):
        MemoryBounds.from_environment()


def test_a_bounded_store_reads_what_it_wrote(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "db", MemoryBounds(1, 1, 2))
    try:
        store.write([(3, f"i{n}", bytes(300)) for n in range(20_000)], {3: 19_999})
        assert store.get(3, "i19999") == bytes(300)
        assert store.changelog_offset(3) == 19_999
    finally:
        store.close()


def _round(rate: float, p50: int, missing: int = 0) -> dict[str, object]:
    return {
        "orders": 100,
        "finished": 100 - missing,
        "mismatches": 0,
        "missing": missing,
        "sagas_per_second": rate,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
    }


def test_saturation_reports_the_median_round_and_any_round_s_losses() -> None:
    median = median_round(
        [_round(1_400.0, 900), _round(910.0, 1_500, missing=2), _round(1_300.0, 1_000)]
    )
    assert (median["sagas_per_second"], median["p50_ms"]) == (1_300.0, 1_000)
    assert median["rounds_sagas_per_second"] == [1_400.0, 910.0, 1_300.0]  # in the order run
    assert (median["orders"], median["finished"], median["missing"]) == (300, 298, 2)


def test_one_saturation_round_is_itself() -> None:
    assert median_round([_round(1_000.0, 700)])["sagas_per_second"] == 1_000.0


def test_a_paced_run_s_commits_are_the_difference_of_two_readings() -> None:
    before = {COMMIT_COUNT: 100.0, COMMIT_SUM: 0.5}
    after = {COMMIT_COUNT: 400.0, COMMIT_SUM: 3.32}
    assert commits_between(before, after) == {"count": 300, "mean_ms": 9.4}
    assert commits_between(after, after) == {"count": 0, "mean_ms": None}  # none meanwhile
    assert commits_between({}, before) == {"count": 100, "mean_ms": 5.0}  # no sample before


def _paced(commits: dict[str, object] | None) -> dict[str, object]:
    hop = {"hop": "published → decided", "p50_ms": 3, "p99_ms": 9, "mean_ms": 4.0}
    hops = {"sagas": 9, "of": 10, "path": "published → decided", "hops": [hop]}
    run: dict[str, object] = {"hops": hops | {"total_p50_ms": 3, "total_p99_ms": 9}}
    return run if commits is None else run | {"processor_commits": commits}


def test_the_hop_table_shows_the_processor_s_commits_when_measured() -> None:
    e2e = {
        "quarter_load": _paced({"count": 1716, "mean_ms": 9.4}) | {"offered_per_second": 380},
        "fixed_rates": {"10": _paced({"count": 0, "mean_ms": None}), "50": _paced(None)},
    }
    lines = latency_sections({"end_to_end": e2e})
    row = next(line for line in lines if line.startswith("| the processor's commits"))
    assert row.endswith("| 9.4 ms (1,716) | none | - |")
    older = latency_sections({"end_to_end": {"quarter_load": _paced(None)}})
    assert not any(line.startswith("| the processor's commits") for line in older)


def test_the_machine_section_names_the_broker_s_latency_settings_when_recorded() -> None:
    recorded = {"broker_settings": {"transaction.partition.verification.enable": "true"}}
    assert broker_settings_line(recorded) == [
        "- broker settings that shape a transaction's latency: "
        "`transaction.partition.verification.enable=true`"
    ]
    assert broker_settings_line({}) == []  # a run from before they were recorded
    assert broker_settings_line({"broker_settings": {}}) == []  # the broker could not be asked


def test_the_machine_section_gives_the_host_s_calibration_and_the_engine_s_share() -> None:
    core = {"shape": "start", "inputs": 20000, "inputs_per_second": [20000, 24000, 25000]}
    [line] = pure_core_line({"pure_core": core}, 12500.0)
    assert "20,000 start inputs, best of 3): 25,000 inputs/s of CPU time" in line
    assert "the engine's one processor ran at 50% of it" in line
    [alone] = pure_core_line({"pure_core": core}, None)  # the engine phase failed or was skipped
    assert "25,000 inputs/s" in alone and "engine" not in alone.split("inputs/s")[1]
    assert pure_core_line({}, 12500.0) == []  # a run from before it was measured
    [failed] = pure_core_line({"pure_core": {"error": "ImportError: x"}}, 12500.0)
    assert failed == "- the host's calibration failed: `ImportError: x`"


def test_the_host_s_calibration_runs_the_pure_path() -> None:
    figures = pure_core_speed(3000)
    assert figures["shape"] == "start" and figures["inputs"] == 3000
    rates = figures["inputs_per_second"]
    assert len(rates) == 3 and rates == sorted(rates) and rates[0] > 0


def _end_to_end(rate: float, quarter: tuple[int, int], fifty: int) -> dict[str, object]:
    return {
        "saturation": {"sagas_per_second": rate},
        "quarter_load": _paced(None) | {"p50_ms": quarter[0], "p99_ms": quarter[1]},
        "fixed_rates": {"50": _paced(None) | {"p50_ms": fifty, "p99_ms": 2 * fifty}},
    }


def test_the_fewer_partitions_run_has_targets_and_rows_of_its_own() -> None:
    figures: dict[str, object] = {
        "end_to_end": _end_to_end(3000.0, (99, 198), 14) | {"partitions": 8},
        "end_to_end_few": _end_to_end(1900.0, (46, 86), 12) | {"partitions": 2},
        "faust": {"fixed_rates": {"50": {"p50_ms": 13}}},
    }
    targets = derived(figures)["targets"]
    assert targets["p50 <= 60 ms at a quarter of saturation"] is False
    assert targets["p99 <= 200 ms at a quarter of saturation"] is True
    assert targets["p50 <= 60 ms at a quarter of saturation, 2 partitions"] is True
    assert targets["end to end >= 2,000 sagas/s"] is True
    assert targets["end to end >= 2,000 sagas/s, 2 partitions"] is False
    assert targets["p50 below faust-streaming's at 50 sagas/s"] is False
    assert targets["p50 below faust-streaming's at 50 sagas/s, 2 partitions"] is True
    sections = latency_sections(figures)
    assert any(line.startswith("| Sagalog, 2 partitions | ") for line in sections)
    assert any("| quarter (-/s), 2 partitions |" in line for line in sections)


def test_without_the_fewer_partitions_run_its_targets_are_unmeasured_and_it_has_no_rows() -> None:
    figures: dict[str, object] = {"end_to_end": _end_to_end(3000.0, (50, 90), 14)}
    targets = derived(figures)["targets"]
    assert targets["p50 <= 60 ms at a quarter of saturation"] is True
    assert targets["p50 <= 60 ms at a quarter of saturation, 2 partitions"] is None
    assert not any(line.startswith("| Sagalog, 2 partitions") for line in latency_sections(figures))
