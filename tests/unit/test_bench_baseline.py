"""The issue's engine as the bench's per-processor baseline: its code from the project's
history, its store folder, its row and target in the report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.baseline import SLOT, Unavailable, fresh_state, source_tree
from bench.report import ISSUE_ERA_TARGET, derived, markdown

RECORD = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.json"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True)
    return done.stdout.decode().strip()


def test_the_baseline_is_the_project_as_it_was_at_its_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "engine.py").write_text("then\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "then")
    then = _git(repo, "rev-parse", "--short", "HEAD")
    (repo / "engine.py").write_text("now\n")
    tree = source_tree(then, repo, tmp_path / "baseline")
    assert (tree / "engine.py").read_text() == "then\n"
    (tree / "engine.py").write_text("kept\n")  # unpacked once: a second call reuses it
    assert (source_tree(then, repo, tmp_path / "baseline") / "engine.py").read_text() == "kept\n"
    with pytest.raises(Unavailable, match="not in"):
        source_tree("0000000", repo, tmp_path / "baseline")


def test_the_baseline_s_store_is_empty_and_has_the_current_processor_s_identity(
    tmp_path: Path,
) -> None:
    current = tmp_path / "current"
    (current / SLOT).mkdir(parents=True)
    (current / SLOT / "IDENTITY").write_text("b80b4c34")
    state = tmp_path / "baseline"
    (state / SLOT / "rocksdb").mkdir(parents=True)  # a store of an earlier run
    fresh_state(state, current)
    assert sorted(p.name for p in (state / SLOT).iterdir()) == ["IDENTITY"]
    assert (state / SLOT / "IDENTITY").read_text() == "b80b4c34"
    fresh_state(tmp_path / "alone", tmp_path / "none")  # no current processor yet
    assert list((tmp_path / "alone" / SLOT).iterdir()) == []


def _figures(issue_era: dict[str, Any], over: float | None) -> dict[str, Any]:
    figures: dict[str, Any] = json.loads(RECORD.read_text())
    figures["engine"] |= {"issue_era": issue_era, "over_issue_era": over}
    figures["derived"] = derived(figures)
    return figures


def _row(figures: dict[str, Any]) -> str:
    table = markdown(figures, "python -m bench", Path("profile.txt"), RECORD)
    return next(line for line in table.splitlines() if "of the issue's day" in line)


def test_the_per_processor_target_is_today_s_rate_over_the_issue_s_in_the_same_run() -> None:
    slower = _figures({"commit": "0ff3609", "inputs_per_second": 14_000.0}, 0.882)
    assert slower["derived"]["targets"][ISSUE_ERA_TARGET] is False
    row = _row(slower)
    assert "commit 0ff3609" in row and "14,000 inputs/s" in row
    assert "today's one processor is 0.88x" in row and "**not met**" in row
    faster = _figures({"commit": "0ff3609", "inputs_per_second": 4_000.0}, 3.088)
    assert faster["derived"]["targets"][ISSUE_ERA_TARGET] is True
    assert _row(faster).endswith("| >= 3x | met |")


def test_a_baseline_that_could_not_run_says_why_and_leaves_the_target_unjudged() -> None:
    missing = _figures({"commit": "0ff3609", "error": "commit 0ff3609 not in /x's history"}, None)
    assert missing["derived"]["targets"][ISSUE_ERA_TARGET] is None
    assert "not measured: commit 0ff3609 not in /x's history" in _row(missing)
    assert _row(missing).endswith("| n/a |")


def test_a_run_from_before_the_baseline_says_it_was_not_measured() -> None:
    figures: dict[str, Any] = json.loads(RECORD.read_text())
    figures["engine"].pop("issue_era", None)
    figures["derived"] = derived(figures)
    assert "| not measured in this run | >= 3x | n/a |" in _row(figures)
