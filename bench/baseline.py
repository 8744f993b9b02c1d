"""The engine as issue 14 measured it, run in the same bench run: the per-processor baseline.

Issue 14 asked for at least three times "today's inputs/s per processor", today being the
engine of commit ``ISSUE_ERA`` (its ``SagaProcessor`` of 493 lines and 25 methods, the code of
the 2026-11-21 full run the issue quotes). A rate measured on another day, on another host, is
no baseline: the same code ran at 9,000-10,000 inputs/s on the machine of 2026-11-21 and at
14,600-14,900 on that of 2026-12-05. So the engine phase runs that commit's processor too, on
the same inbox records, through the same harness, minutes from the current one.

The code comes from the project's own history (``git archive``), unpacked once under the
bench's folder; it runs with the current virtualenv (its dependencies are a subset of today's).
Without the history (a shallow clone, an unpacked archive) the baseline says why it is missing.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from bench.common import BASE, STATE

#: The commit whose engine issue 14 measured (its processor: 493 lines, 25 methods).
ISSUE_ERA = "0ff3609"
#: Where the processor's store folder keeps its identity (the same layout then and now).
SLOT = Path("order_fulfillment") / "slot-0"
ROOT = Path(__file__).resolve().parents[1]


class Unavailable(Exception):
    """The baseline's code could not be had; the message says why."""


def source_tree(commit: str = ISSUE_ERA, root: Path = ROOT, into: Path | None = None) -> Path:
    """The project as it was at ``commit``, unpacked once (later calls reuse it)."""
    tree = (into or BASE / "baseline") / commit
    done = tree / ".unpacked"
    if done.exists():
        return tree
    archived = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", commit],
        capture_output=True,
        check=False,
    )
    if archived.returncode != 0:
        reason = archived.stderr.decode(errors="replace").strip() or "git archive failed"
        raise Unavailable(f"commit {commit} not in {root}'s history: {reason}")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archived.stdout)) as archive:
        archive.extractall(tree, filter="data")
    done.touch()
    return tree


def fresh_state(state: Path, current: Path = STATE) -> Path:
    """An empty store folder for the baseline's processor that takes over the current
    processor's identity: its static group membership and transactional id, as an upgrade in
    place would. With an identity of its own, each switch between the two would wait for the
    other's session to time out (10 s) before the partitions moved."""
    shutil.rmtree(state, ignore_errors=True)
    slot = state / SLOT
    slot.mkdir(parents=True)
    identity = current / SLOT / "IDENTITY"
    if identity.exists():
        shutil.copyfile(identity, slot / "IDENTITY")
    return state
