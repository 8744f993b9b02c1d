"""What makes an input record acceptable, before anything is decided on it.

An input is refused (and dead-lettered by the processor, with the reason and a detail) when it is
too large, unreadable, keyless or keyed by something that is not text, names an instance id over
the length limit, or, on the inbox, is unsigned while signing is on, or is keyed by another
instance than it names (``key-mismatch``: see ``stream_processors.core.keys``). ``inbox_input``
makes these checks for an inbox record and returns what ``decide`` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Message

from stream_processors.codecs.avro import DecodeError
from stream_processors.codecs.records import Record, decode_record
from stream_processors.codecs.signing import BAD_SIGNATURE, Keyring, Purpose, verify
from stream_processors.core import limits
from stream_processors.core.decide import Input
from stream_processors.core.keys import KEY_MISMATCH, key_mismatch
from stream_processors.core.model import SagaDefinition
from stream_processors.engine import tracing
from stream_processors.engine.routing import (
    COMMAND_ID,
    INSTANCE,
    NOTE,
    OPERATOR_ID,
    PARENT_INSTANCE,
    REPLY_TO,
    Headers,
    ReceivedHeaders,
    header,
    received_headers,
)


@dataclass(frozen=True)
class Rejected:
    """Why an input goes to the dead-letter topic."""

    reason: str
    detail: str


@dataclass(frozen=True)
class InboxInput:
    instance_id: str
    key: bytes
    input: Input


def read_record(message: Message, max_record_bytes: int) -> Record | Rejected:
    """The record a message carries, or why it cannot be read."""
    value = message.value()
    size = limits.record_size(message.key(), value, received_headers(message))
    if size > max_record_bytes:
        return Rejected(limits.TOO_LARGE, f"{size} bytes > limit {max_record_bytes}")
    try:
        return decode_record(value)
    except DecodeError as error:
        return Rejected(error.reason, error.detail)


def id_too_long(instance_id: bytes, max_bytes: int) -> Rejected | None:
    detail = limits.instance_id_too_long(instance_id, max_bytes)
    return None if detail is None else Rejected(limits.INSTANCE_ID_TOO_LONG, detail)


def inbox_input(
    message: Message,
    definition: SagaDefinition,
    inbox: str,
    signing: Keyring | None,
    max_record_bytes: int,
    max_instance_id_bytes: int,
) -> InboxInput | Rejected:
    """An inbox record checked (signature first, before it is even decoded) and decoded."""
    key, value, headers = message.key(), message.value(), message.headers()
    if signing is not None:
        problem = verify(signing, Purpose.INBOX, inbox, key, value, headers)
        if problem is not None:
            return Rejected(BAD_SIGNATURE, problem)
    record = read_record(message, max_record_bytes)
    if isinstance(record, Rejected):
        return record
    if not key:
        return Rejected("no-key", "inbox records are keyed by instance id")
    try:
        instance_id = key.decode()
    except UnicodeDecodeError:
        return Rejected("bad-key", "the key is not UTF-8 text")
    assert value is not None
    too_long = id_too_long(key, max_instance_id_bytes)
    if too_long is not None:
        return too_long
    return _received(definition, record, value, key, instance_id, headers)


def source_input(
    definition: SagaDefinition,
    record: Record,
    key: bytes,
    value: bytes | None,
    headers: Headers,
    max_record_bytes: int,
) -> InboxInput | Rejected:
    """A source event decided without the inbox hop (``stream_processors.engine.direct``), from
    the routed copy it would have had (``key``, ``value``, ``headers``: see ``SourceRouter.
    copy``) and the ``record`` read from it, checked as ``inbox_input`` checks that copy once
    ``route`` checked the event (no signature: the inbox's only proves the processor routed it),
    so that the decision, journal and snapshot are the routed path's."""
    size = limits.record_size(key, value, headers)
    if size > max_record_bytes:
        return Rejected(limits.TOO_LARGE, f"{size} bytes > limit {max_record_bytes}")
    assert value is not None  # ``record`` was read from it
    return _received(definition, record, value, key, key.decode(), headers)


def _received(
    definition: SagaDefinition,
    record: Record,
    value: bytes,
    key: bytes,
    instance_id: str,
    headers: ReceivedHeaders,
) -> InboxInput | Rejected:
    """What ``decide`` needs from a readable input keyed by ``instance_id``, unless its key and
    the instance it names disagree (``key-mismatch``)."""
    command_id, note = header(headers, COMMAND_ID), header(headers, NOTE)
    mismatch = key_mismatch(definition, record, instance_id, command_id, header(headers, INSTANCE))
    if mismatch is not None:
        return Rejected(KEY_MISMATCH, mismatch)
    reply_to, parent = header(headers, REPLY_TO), header(headers, PARENT_INSTANCE)
    if type(record) is not definition.start or not (reply_to and reply_to.endswith(".inbox")):
        reply_to = parent = None  # only a start names a parent, and only a saga's inbox
    trace = None
    if tracing.ENABLED and type(record) is definition.start:  # a saga's trace is its start's
        trace = tracing.incoming(headers)
    operator_id = header(headers, OPERATOR_ID)
    key_text = instance_id if operator_id is not None else None  # a refusal names the instance
    received = Input(
        record, value, command_id, note, reply_to, parent, trace, operator_id, key_text
    )
    return InboxInput(instance_id, key, received)
