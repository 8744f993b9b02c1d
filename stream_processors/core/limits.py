"""How big a record may be, and what to send instead when one would not fit (pure, no I/O).

Two limits apply to every record Sagalog produces, and either one breached fails the send:

- the producer's ``message.max.bytes`` (librdkafka's default 1,000,000), checked by ``produce``
  itself on the record's worst-case wire size: ``record_size`` computes that size exactly as
  librdkafka does (key + value + each header's name and value with their zigzag-varint lengths +
  36 bytes of worst-case record overhead), so a record of ``record_size == message.max.bytes``
  is accepted and one byte more is refused;
- the destination topic's ``max.message.bytes`` (the broker's ``message.max.bytes`` unless the
  topic overrides it), checked by the broker on the whole record batch: a record must leave room
  for the batch header (``BATCH_OVERHEAD``, with a margin). librdkafka sends a batch uncompressed
  when compressing would make it bigger, so the uncompressed size is the worst case.

``Limits`` holds both for one destination and answers ``fits``/``oversize``; the shell
(``stream_processors.kafka.broker_limits``) reads the topic's limit from the broker. Decisions are
returned as data: ``first_oversize`` names the first record of a set that would not fit (the
processor then dead-letters the input as ``outputs-too-large`` and parks its instance: see
``stream_processors.core.oversize``), and ``fit_dead_letter`` shrinks
a dead letter until it fits: it always keeps the dead-letter headers (reason, detail, origin);
then, largest first, drops original headers it has no room for (naming them in
``sagalog.dlq.dropped_headers``), cuts a key longer than ``MAX_DEAD_LETTER_KEY`` (its original size
in ``sagalog.dlq.key_truncated``) and cuts the value (its original size in
``sagalog.dlq.truncated``). A truncated dead letter is evidence, not a record to redrive.

Instance ids are bounded too (``ProcessorConfig.max_instance_id_bytes``): an id is repeated in the
keys, fields and headers of every journal entry, command and snapshot of its instance, so one
long id multiplies. ``instance_id_too_long`` is the check.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from stream_processors.codecs.frozen import fast_init

#: librdkafka's default ``message.max.bytes`` for a producer.
DEFAULT_PRODUCER_MAX_BYTES = 1_000_000
#: librdkafka's worst-case per-record overhead of the v2 record format (``RD_KAFKAP_MESSAGE_V2_
#: MAX_OVERHEAD``): length, attributes, timestamp delta, offset delta, key and value lengths and
#: the header count, each at its largest varint size.
RECORD_OVERHEAD = 36
#: A v2 record batch's header is 61 bytes; the rest is a margin for what we cannot see.
BATCH_OVERHEAD = 61 + 64
#: A dead letter's key is cut to this many bytes when it must be cut.
MAX_DEAD_LETTER_KEY = 1024
#: Room kept for the headers ``fit_dead_letter`` may add to say what it cut.
_MARKERS_ROOM = 512

DLQ_TRUNCATED = "sagalog.dlq.truncated"
DLQ_KEY_TRUNCATED = "sagalog.dlq.key_truncated"
DLQ_DROPPED_HEADERS = "sagalog.dlq.dropped_headers"

#: Reasons of dead letters this module's checks lead to.
OUTPUTS_TOO_LARGE = "outputs-too-large"
INSTANCE_ID_TOO_LONG = "instance-id-too-long"
TOO_LARGE = "too-large"

HeaderPairs = Sequence[tuple[str, str | bytes | None]]


def _varint_size(value: int) -> int:
    """Bytes of ``value`` as a zigzag varint (how Kafka writes header lengths)."""
    encoded = (value << 1) ^ (value >> 63)
    size = 1
    while encoded >= 0x80:
        encoded >>= 7
        size += 1
    return size


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def header_size(name: str, value: str | bytes | None) -> int:
    """One header's serialized size, as librdkafka counts it."""
    name_length, value_length = len(name.encode()), len(_bytes(value))
    return _varint_size(name_length) + name_length + _varint_size(value_length) + value_length


def headers_size(headers: HeaderPairs | None) -> int:
    """The headers' serialized size: the sum of ``header_size``, computed inline.

    This runs for every record the engine produces or receives, so it avoids calls and
    encoding: an ASCII string's UTF-8 size is its length, and a zigzag varint of a length under
    64 is one byte.
    """
    total = 0
    for name, value in headers or ():
        name_length = len(name) if name.isascii() else len(name.encode())
        if value is None:
            value_length = 0
        elif isinstance(value, bytes):
            value_length = len(value)
        else:
            value_length = len(value) if value.isascii() else len(value.encode())
        total += name_length + value_length
        total += 1 if name_length < 64 else _varint_size(name_length)
        total += 1 if value_length < 64 else _varint_size(value_length)
    return total


def record_size(key: bytes | None, value: bytes | None, headers: HeaderPairs | None = None) -> int:
    """A record's worst-case wire size: what librdkafka compares with ``message.max.bytes``."""
    size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
    return size + headers_size(headers) if headers else size


@dataclass(frozen=True)
class Oversize:
    """A record that would not fit: which, where to, how big, and the limit."""

    what: str
    topic: str
    size: int
    limit: int

    def detail(self) -> str:
        return f"{self.what} for {self.topic}: {self.size} bytes > limit {self.limit}"


@dataclass(frozen=True)
class Limits:
    """The limits of one destination topic: the producer's and the topic's (None: unknown)."""

    producer_max_bytes: int = DEFAULT_PRODUCER_MAX_BYTES
    topic_max_bytes: int | None = None

    @cached_property
    def max_record_bytes(self) -> int:
        """The largest ``record_size`` that passes both the producer and the broker."""
        if self.topic_max_bytes is None:
            return self.producer_max_bytes
        return min(self.producer_max_bytes, self.topic_max_bytes - BATCH_OVERHEAD)

    def fits(self, key: bytes | None, value: bytes | None, headers: HeaderPairs | None) -> bool:
        return record_size(key, value, headers) <= self.max_record_bytes

    def oversize(
        self,
        what: str,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: HeaderPairs | None = None,
    ) -> Oversize | None:
        """None when the record fits, else what is wrong with it."""
        size = record_size(key, value, headers)
        limit = self.max_record_bytes
        return None if size <= limit else Oversize(what, topic, size, limit)


@fast_init  # four per input: see stream_processors.codecs.frozen
@dataclass(frozen=True)
class Outgoing:
    """A record to check before it is produced; ``what`` names it in a dead letter's detail."""

    what: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: HeaderPairs | None = None


def first_oversize(records: Iterable[tuple[Outgoing, Limits]]) -> Oversize | None:
    """The first record that would not fit under its destination's limits, or None."""
    found = first_oversize_at(records)
    return None if found is None else found[1]


def first_oversize_at(records: Iterable[tuple[Outgoing, Limits]]) -> tuple[int, Oversize] | None:
    """``first_oversize`` with the record's position in ``records``, or None."""
    for index, (record, limits) in enumerate(records):
        found = limits.oversize(record.what, record.topic, record.key, record.value, record.headers)
        if found is not None:
            return index, found
    return None


def instance_id_too_long(instance_id: bytes, max_bytes: int) -> str | None:
    """The dead-letter detail for an instance id over ``max_bytes`` bytes, or None."""
    if len(instance_id) <= max_bytes:
        return None
    return f"instance id of {len(instance_id)} bytes > limit {max_bytes}"


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter as it will be produced: (key, value, headers), shrunk to fit if needed."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    truncated: bool = False


def fit_dead_letter(
    key: bytes | None,
    value: bytes | None,
    original: HeaderPairs,
    added: HeaderPairs,
    max_bytes: int,
) -> DeadLetterRecord:
    """The dead letter of a record (``original`` headers; ``added``: the ``sagalog.dlq.*`` ones),
    cut until its ``record_size`` is at most ``max_bytes``.

    ``added`` are always kept (``routing.dead_letter_headers`` bounds them). Then: a key longer
    than ``MAX_DEAD_LETTER_KEY`` bytes (or a quarter of the room, if less) is cut to that, original
    headers are dropped largest first until the value has at least half the room left (or all it
    needs, if less), and the value is cut to what room remains. Each cut is named in a header.
    """
    headers = [*original, *added]
    if record_size(key, value, headers) <= max_bytes:
        return DeadLetterRecord(key, value, headers)
    markers: list[tuple[str, str | bytes | None]] = []
    key_room = max(0, min(MAX_DEAD_LETTER_KEY, (max_bytes - record_size(None, None, added)) // 4))
    if key is not None and len(key) > key_room:
        markers.append((DLQ_KEY_TRUNCATED, str(len(key)).encode()))
        key = key[:key_room]
    room = max_bytes - record_size(key, None, added) - _MARKERS_ROOM
    body = value or b""
    kept = list(original)
    wanted = min(len(body), max(0, room) // 2)
    dropped: list[str] = []
    while kept and headers_size(kept) > room - wanted:
        largest = max(range(len(kept)), key=lambda i: header_size(*kept[i]))
        dropped.append(kept.pop(largest)[0])
    if dropped:
        markers.append((DLQ_DROPPED_HEADERS, ",".join(dropped)[:200].encode()))
    space = max(0, room - headers_size(kept))
    if value is not None and len(value) > space:
        markers.append((DLQ_TRUNCATED, str(len(value)).encode()))
        value = value[:space]
    return DeadLetterRecord(key, value, [*kept, *added, *markers], truncated=True)


__all__ = [
    "BATCH_OVERHEAD",
    "DEFAULT_PRODUCER_MAX_BYTES",
    "DLQ_DROPPED_HEADERS",
    "DLQ_KEY_TRUNCATED",
    "DLQ_TRUNCATED",
    "INSTANCE_ID_TOO_LONG",
    "OUTPUTS_TOO_LARGE",
    "RECORD_OVERHEAD",
    "TOO_LARGE",
    "DeadLetterRecord",
    "Limits",
    "Outgoing",
    "Oversize",
    "first_oversize",
    "first_oversize_at",
    "fit_dead_letter",
    "header_size",
    "headers_size",
    "instance_id_too_long",
    "record_size",
]
