"""Which instance a record names, and whether its Kafka key agrees. Pure: no Kafka, no I/O.

The inbox is keyed by instance id, and an instance's partition is where its key hashes to: a
record keyed by anything else is processed in a partition where its instance does not live (a
start there creates the instance where its replies never find it). So the key is never taken
on trust:

- ``route_key``: a source event is routed to the inbox by the instance its *fields* name, never
  by the key it was published with: the start event by the saga's key field (which may differ
  from the event class's own ``key=``), any other event by its class's key field;
- ``key_mismatch``: an inbox record whose key disagrees with the instance it names goes to the
  dead-letter topic as ``key-mismatch``. A start event or an event the saga waits for or
  handles names its instance by its key field; any record by its ``sagalog.instance`` header
  and by the instance in a ``sagalog.command_id`` of this saga (``saga/instance/...``). A
  worker's reply names its instance only by those headers: its own fields (a payment's id,
  say) need not be the instance id. An operator's action names it by its key alone.
"""

from __future__ import annotations

from stream_processors.codecs.records import Event, Record
from stream_processors.core.model import OperatorAction, ReplyRole, SagaDefinition

#: The dead-letter reason of an inbox record whose key disagrees with the instance it names.
KEY_MISMATCH = "key-mismatch"


def route_key(definition: SagaDefinition, record: Record) -> str | None:
    """The instance id a source event is routed to, or None if it names none."""
    if type(record) is definition.start:
        return str(getattr(record, definition.key))
    return record.key() if isinstance(record, Event) else None


def _named_by_fields(definition: SagaDefinition, record: Record) -> str | None:
    """The instance ``record``'s fields name, if they are how it finds its instance."""
    kind = type(record)
    if kind is definition.start:
        return route_key(definition, record)
    if isinstance(record, OperatorAction):
        return None
    claim = definition.replies.get(kind)
    if claim is not None:  # a reply: only a wait's event is routed by its fields
        step, role = claim
        task = definition.tasks[step]
        compensation = role in (ReplyRole.COMPENSATED, ReplyRole.COMPENSATION_FAILED)
        spec = task.compensation if compensation else task.action
        if spec is None or spec.command is not None:
            return None
    return record.key() if isinstance(record, Event) else None


def key_mismatch(
    definition: SagaDefinition,
    record: Record,
    key: str,
    command_id: str | None = None,
    instance_header: str | None = None,
) -> str | None:
    """Why the inbox record ``record``, keyed ``key``, names another instance; None if not.

    ``command_id`` and ``instance_header`` are its ``sagalog.command_id`` and
    ``sagalog.instance`` headers, if it has them. The answer is the dead letter's detail.
    """
    name = type(record).__name__
    named = _named_by_fields(definition, record)
    if named is not None and named != key:
        return f"{name} names instance {named!r}, its key is {key!r}"
    if instance_header is not None and instance_header != key:
        return f"{name}: sagalog.instance is {instance_header!r}, its key is {key!r}"
    ours = f"{definition.name}/"
    if command_id and command_id.startswith(ours) and not command_id.startswith(f"{ours}{key}/"):
        return f"{name}: sagalog.command_id {command_id!r} is not of instance {key!r}"
    return None


__all__ = ["KEY_MISMATCH", "key_mismatch", "route_key"]
