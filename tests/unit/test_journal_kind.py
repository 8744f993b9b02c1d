"""``entry_kind`` reads an entry's kind from its first bytes: the same kind a decode gives, or
None, never a wrong kind and never an exception."""

from __future__ import annotations

import pytest

from stream_processors.codecs.avro import HEADER_SIZE, MAGIC
from stream_processors.codecs.peek import LeadingString
from stream_processors.core.journal import REFUSAL_SEQ, JournalEntry, Kind, entry_kind

INSTANCES = ("", "o", "order-e4430809-0000010", "x" * 200)  # 200: a two-byte length
SEQS = (0, 1, 63, 64, 8191, 2**40, REFUSAL_SEQ)


def _entry(kind: str, instance: str = "order-1", seq: int = 3) -> JournalEntry:
    return JournalEntry(
        instance=instance,
        seq=seq,
        kind=kind,
        at_ms=1_700_000_000_000,
        saga_version=2,
        step="payment",
        record=b"\x00" * 50,
        reason="why",
    )


@pytest.mark.parametrize("kind", [kind.value for kind in Kind] + ["AKindOfTomorrow", ""])
def test_the_kind_read_is_the_kind_decoded(kind: str) -> None:
    for instance in INSTANCES:
        for seq in SEQS:
            data = _entry(kind, instance, seq).encode()
            assert entry_kind(data) == JournalEntry.decode(data).kind == kind


def test_a_prefix_gives_the_kind_or_none_and_never_raises() -> None:
    data = _entry(Kind.SAGA_COMPLETED.value, "order-e4430809-0000010").encode()
    kind_end = HEADER_SIZE + 1 + len("order-e4430809-0000010") + 1 + 1 + len("SagaCompleted")
    for end in range(len(data) + 1):
        expected = Kind.SAGA_COMPLETED.value if end >= kind_end else None
        assert entry_kind(data[:end]) == expected, end


def test_another_framing_or_writer_schema_is_left_to_the_decoder() -> None:
    data = _entry(Kind.COMMAND_SENT.value).encode()
    other_writer = MAGIC + bytes(8) + data[HEADER_SIZE:]
    registry_framed = b"\x00\x00\x00\x00\x07" + data[HEADER_SIZE:]
    assert entry_kind(other_writer) is None
    assert entry_kind(registry_framed) is None
    assert entry_kind(b"") is None
    assert entry_kind(b"not avro at all") is None


def test_a_kind_that_is_not_utf8_is_none() -> None:
    data = bytearray(_entry("ab").encode())
    at = data.index(b"ab")
    data[at : at + 2] = b"\xff\xfe"
    assert entry_kind(bytes(data)) is None


def test_a_layout_the_current_schema_does_not_begin_with_reads_nothing() -> None:
    data = _entry(Kind.COMMAND_SENT.value).encode()
    wrong_order = LeadingString("sagalog.JournalEntry", (("seq", "long"), ("kind", "string")))
    wrong_type = LeadingString(
        "sagalog.JournalEntry", (("instance", "record"), ("seq", "long"), ("kind", "string"))
    )
    right = LeadingString(
        "sagalog.JournalEntry", (("instance", "string"), ("seq", "long"), ("kind", "string"))
    )
    assert wrong_order.read(data) is None
    assert wrong_type.read(data) is None
    assert right.read(data) == Kind.COMMAND_SENT.value
