"""Source routing: re-keying a service's event by the instance it names, into the saga's inbox.

A source event is routed by the instance its fields name (``route_key``), never by its Kafka
key, and carries its own headers minus any ``sagalog.*`` one, plus where it came from; with
signing on it is signed for the inbox. Anything that cannot be routed (unreadable, of a type the
saga does not start or take from sources, naming no instance, an id too long, a copy too large
for the inbox) is refused with the reason, for the processor to dead-letter. ``read`` makes the
checks, ``copy`` the inbox copy: a source event decided without the hop
(``stream_processors.engine.direct``) is read and checked the same way, and never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message

from stream_processors.codecs.records import Record
from stream_processors.codecs.signing import Keyring, Purpose, signed
from stream_processors.core import limits
from stream_processors.core.keys import route_key
from stream_processors.core.model import SagaDefinition
from stream_processors.engine.inputs import Rejected, id_too_long, read_record
from stream_processors.engine.routing import Headers, origin_headers


@dataclass(frozen=True)
class Routed:
    """The inbox copy of a source event."""

    key: bytes
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class Source:
    """A source event read and checked: its record and the instance id its fields name."""

    record: Record
    key: bytes


@dataclass(frozen=True)
class SourceRouter:
    definition: SagaDefinition
    inbox: str
    signing: Keyring | None
    max_record_bytes: int
    max_instance_id_bytes: int
    limit: Callable[[str], limits.Limits]

    def route(self, message: Message) -> Routed | Rejected:
        source = self.read(message)
        return source if isinstance(source, Rejected) else self.copy(message, source)

    def read(self, message: Message) -> Source | Rejected:
        """The event's record and instance, or why it cannot be routed (nor decided)."""
        record = read_record(message, self.max_record_bytes)
        if isinstance(record, Rejected):
            return record
        if type(record) not in self.definition.source_inputs:  # a reply or operator action too
            return Rejected("unexpected-type", type(record).__qualname__)
        key = route_key(self.definition, record)  # by its fields, never its Kafka key
        if not key:
            return Rejected("no-key", f"{type(record).__qualname__} names no instance")
        encoded = key.encode()
        too_long = id_too_long(encoded, self.max_instance_id_bytes)
        return too_long if too_long is not None else Source(record, encoded)

    def copy(self, message: Message, source: Source) -> Routed | Rejected:
        """The inbox copy of the event ``read`` accepted, or why it cannot be produced."""
        encoded, inbox = source.key, self.inbox
        value, headers = message.value(), origin_headers(message)
        if self.signing is not None:
            headers = signed(self.signing, Purpose.INBOX, inbox, encoded, value, headers)
        oversize = self.limit(inbox).oversize("routed copy", inbox, encoded, value, headers)
        if oversize is not None:
            return Rejected(limits.OUTPUTS_TOO_LARGE, oversize.detail())
        return Routed(encoded, value, headers)
