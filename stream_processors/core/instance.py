"""The folded state of one saga instance, and its snapshot encoding.

``Instance`` is what ``fold`` produces and ``decide`` reads: the engine's bookkeeping (status,
each step's command in flight, the steps that completed, in order) around the saga's own typed
state (``data``). Snapshots are the Avro encoding of an ``Instance`` (schema ``sagalog.Snapshot``)
and must be byte-identical when rebuilt from the journal, so every field is derived from journal
entries only and every collection keeps a deterministic order.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stream_processors.codecs.avro import HEADER_SIZE, AvroSchema, DecodeError, decode, encode
from stream_processors.codecs.frozen import fast_init
from stream_processors.codecs.records import CATALOG, Record, decode_record

# Importing the journal module loads the built-in schema folder, which holds sagalog.Snapshot.
from stream_processors.core.journal import JournalEntry as _JournalEntry  # noqa: F401  isort: skip


class Status(StrEnum):
    """Where an instance is in its life. The values are stored: never rename one."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    RESOLVED = "resolved"

    @property
    def finished(self) -> bool:
        return self in (Status.COMPLETED, Status.COMPENSATED, Status.FAILED, Status.RESOLVED)


class StepStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATION_RETRYING = "compensation_retrying"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    #: In flight, but a failed sibling branch cancelled it: its reply is awaited, then undone.
    CANCELLED = "cancelled"

    @property
    def compensation(self) -> bool:
        """Whether the step's current attempt is of its compensation."""
        return self in (
            StepStatus.COMPENSATING,
            StepStatus.COMPENSATION_RETRYING,
            StepStatus.COMPENSATED,
            StepStatus.COMPENSATION_FAILED,
        )


#: Step statuses in which the step is active: waiting for a reply or for its next attempt.
ACTIVE_STEP = frozenset(
    {
        StepStatus.PENDING,
        StepStatus.RETRYING,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATION_RETRYING,
        StepStatus.CANCELLED,
    }
)


@fast_init
@dataclass(frozen=True, slots=True)
class StepState:
    """The latest command of one step: what it is waiting for, and since when."""

    status: StepStatus
    command_id: str
    attempt: int
    sent_at_ms: int
    #: The definition's node this step is an activation of (its key may carry a map prefix
    #: and a visit suffix), and the block and branch it runs on ("" and 0: the main path).
    node: str = ""
    block: str = ""
    branch: int = 0


class BranchStatus(StrEnum):
    """Where one branch of a block (or one item of a map) is. Stored: never rename."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@fast_init
@dataclass(frozen=True, slots=True)
class BlockState:
    """One activation of a parallel or map block: its branches and their results so far."""

    node: str
    kind: str
    block: str
    branch: int
    status: BranchStatus
    branches: tuple[BranchStatus, ...]
    items: bytes | None = None
    results: tuple[bytes | None, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class EarlyEvent:
    """An awaited event that arrived before its wait started (framed Avro), and when."""

    at_ms: int
    record: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class Timer:
    """A durable timer: due at ``due_ms``; ``step`` and ``attempt`` say what it is about."""

    due_ms: int
    step: str | None
    attempt: int


@fast_init
@dataclass(frozen=True, slots=True)
class Instance:
    """One saga instance as folded from its journal."""

    instance_id: str
    saga_version: int
    status: Status
    seq: int
    started_at_ms: int
    updated_at_ms: int
    reason: str | None
    steps: Mapping[str, StepState]
    completed: tuple[str, ...]
    data: Record
    timers: Mapping[str, Timer] = field(default_factory=dict)
    #: While parked: the status to resume in when an operator retries (see ``fold``).
    parked_from: Status | None = None
    blocks: Mapping[str, BlockState] = field(default_factory=dict)
    #: How often each node was entered, by map prefix and name (``map[2]/node``).
    visits: Mapping[str, int] = field(default_factory=dict)
    early: tuple[EarlyEvent, ...] = ()
    #: A child saga's parent: its inbox, its instance id, and the command that started us.
    reply_to: str | None = None
    reply_key: str | None = None
    reply_command: str | None = None
    #: Child sagas started by a step: the step's key to the child's instance id.
    children: Mapping[str, str] = field(default_factory=dict)
    #: The W3C trace context the instance was started with (its SagaStarted entry's ``trace``):
    #: the engine's spans for it belong to that trace (``stream_processors.engine.tracing``).
    trace: str | None = None

    @property
    def active(self) -> tuple[str, ...]:
        """Steps in flight or due another attempt (the active states of the state machine)."""
        return tuple(name for name, step in self.steps.items() if step.status in ACTIVE_STEP)


def block_prefix(instance: Instance, block: str, branch: int) -> str:
    """The prefix of the keys of steps on ``branch`` of ``block`` ("" on the main path).

    A map's items run the same nodes side by side, so each item's steps are prefixed with the
    map's key and the item's index (``items[2]/charge``); a parallel's branches run distinct
    nodes and share the prefix of the path the parallel itself is on."""
    if not block:
        return ""
    state = instance.blocks[block]
    if state.kind == "map":
        return f"{block}[{branch}]/"
    return block_prefix(instance, state.block, state.branch)


def visit_key(instance: Instance, node: str, block: str, branch: int) -> str:
    """The key under which visits of ``node`` on that branch are counted."""
    return f"{block_prefix(instance, block, branch)}{node}"


def _snapshot_schema() -> AvroSchema:
    return CATALOG.current("sagalog.Snapshot")


def encode_snapshot(instance: Instance) -> bytes:
    datum: dict[str, Any] = {
        "instance": instance.instance_id,
        "saga_version": instance.saga_version,
        "status": instance.status.value,
        "seq": instance.seq,
        "started_at_ms": instance.started_at_ms,
        "updated_at_ms": instance.updated_at_ms,
        "reason": instance.reason,
        "steps": [
            {
                "name": name,
                "status": step.status.value,
                "command_id": step.command_id,
                "attempt": step.attempt,
                "sent_at_ms": step.sent_at_ms,
                "node": None if step.node == name else step.node,
                "block": step.block,
                "branch": step.branch,
            }
            for name, step in instance.steps.items()
        ],
        "completed": list(instance.completed),
        "data": instance.data.encode(),
        "timers": [
            {"name": name, "due_ms": t.due_ms, "step": t.step, "attempt": t.attempt}
            for name, t in instance.timers.items()
        ],
        "parked_from": None if instance.parked_from is None else instance.parked_from.value,
        "blocks": [
            {
                "key": key,
                "node": block.node,
                "kind": block.kind,
                "block": block.block,
                "branch": block.branch,
                "status": block.status.value,
                "branches": [b.value for b in block.branches],
                "items": block.items,
                "results": list(block.results),
            }
            for key, block in instance.blocks.items()
        ],
        "visits": [{"node": n, "count": c} for n, c in instance.visits.items()],
        "early": [{"at_ms": e.at_ms, "record": e.record} for e in instance.early],
        "reply_to": instance.reply_to,
        "reply_key": instance.reply_key,
        "reply_command": instance.reply_command,
        "children": [{"step": k, "instance": v} for k, v in instance.children.items()],
        "trace": instance.trace,
    }
    return encode(_snapshot_schema(), datum)


def decode_snapshot(data: bytes) -> Instance:
    datum = _snapshot_datum(data)
    return Instance(
        instance_id=datum["instance"],
        saga_version=datum["saga_version"],
        status=Status(datum["status"]),
        seq=datum["seq"],
        started_at_ms=datum["started_at_ms"],
        updated_at_ms=datum["updated_at_ms"],
        reason=datum["reason"],
        steps={
            step["name"]: StepState(
                StepStatus(step["status"]),
                step["command_id"],
                step["attempt"],
                step["sent_at_ms"],
                step["node"] or step["name"],
                step["block"],
                step["branch"],
            )
            for step in datum["steps"]
        },
        completed=tuple(datum["completed"]),
        data=decode_record(datum["data"]),
        timers=timers_of(datum),
        parked_from=None if datum["parked_from"] is None else Status(datum["parked_from"]),
        blocks={
            block["key"]: BlockState(
                block["node"],
                block["kind"],
                block["block"],
                block["branch"],
                BranchStatus(block["status"]),
                tuple(BranchStatus(b) for b in block["branches"]),
                block["items"],
                tuple(block["results"]),
            )
            for block in datum["blocks"]
        },
        visits={v["node"]: v["count"] for v in datum["visits"]},
        early=tuple(EarlyEvent(e["at_ms"], e["record"]) for e in datum["early"]),
        reply_to=datum["reply_to"],
        reply_key=datum["reply_key"],
        reply_command=datum["reply_command"],
        children={c["step"]: c["instance"] for c in datum["children"]},
        trace=datum["trace"],
    )


def timers_of(datum: Mapping[str, Any]) -> dict[str, Timer]:
    """The timers of a decoded snapshot datum (restore reads them without the saga's data)."""
    return {t["name"]: Timer(t["due_ms"], t["step"], t["attempt"]) for t in datum["timers"]}


def schedule(instance: Instance) -> tuple[list[int], int | None]:
    """When the instance's timers are due, and when it finished (None while it is not)."""
    finished = instance.updated_at_ms if instance.status.finished else None
    return [timer.due_ms for timer in instance.timers.values()], finished


def schedule_text(due: list[int], finished: int | None) -> bytes:
    """A snapshot's ``schedule`` as its changelog record carries it (``sagalog.schedule``):
    ``<finished ms, or nothing>;<due ms>,<due ms>...``, so that a restore indexes the timers
    and the expiry without decoding the snapshot (which was most of a restore's time)."""
    return f"{'' if finished is None else finished};{','.join(map(str, due))}".encode()


def parse_schedule(text: bytes) -> tuple[list[int], int | None]:
    """``schedule_text`` read back (``ValueError`` for anything else)."""
    finished, separator, due = text.decode().partition(";")
    if not separator:
        raise ValueError(f"not a schedule: {text[:40]!r}")
    return [int(ms) for ms in due.split(",") if ms], int(finished) if finished else None


def is_snapshot(data: bytes) -> bool:
    """Whether ``data`` is framed as a ``sagalog.Snapshot`` (read off its frame header only)."""
    if data[:HEADER_SIZE] in snapshot_frames():
        return True
    try:  # another framing (a registry's), or a version this process learnt of since
        return CATALOG.writer_of(data)[0].full_name == "sagalog.Snapshot"
    except DecodeError:
        return False


@functools.cache
def snapshot_frames() -> frozenset[bytes]:
    """The frame headers of every version of ``sagalog.Snapshot`` (its type, by first bytes)."""
    return CATALOG.frame_headers("sagalog.Snapshot")


def _snapshot_datum(data: bytes) -> dict[str, Any]:
    """The decoded fields of an encoded snapshot; ``DecodeError`` for any other record."""
    schema, datum = decode(CATALOG, data)
    if schema.full_name != "sagalog.Snapshot":
        raise DecodeError("wrong-type", f"expected a snapshot, got {schema.full_name}")
    return dict(datum)


def snapshot_schedule(data: bytes) -> tuple[list[int], int | None]:
    """``schedule`` of an encoded snapshot, without decoding the saga's own data."""
    datum = _snapshot_datum(data)
    finished = datum["updated_at_ms"] if Status(datum["status"]).finished else None
    return [timer["due_ms"] for timer in datum["timers"]], finished
