"""Record sizes and what fits (stream_processors.core.limits), checked against librdkafka itself.

librdkafka refuses an oversized record in ``produce``, before any connection: a producer that
never reaches a broker tells whether ``record_size`` counts as it does, at the exact boundary.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException, Producer

from stream_processors.core.limits import (
    BATCH_OVERHEAD,
    DLQ_DROPPED_HEADERS,
    DLQ_KEY_TRUNCATED,
    DLQ_TRUNCATED,
    MAX_DEAD_LETTER_KEY,
    Limits,
    Outgoing,
    first_oversize,
    fit_dead_letter,
    header_size,
    headers_size,
    instance_id_too_long,
    record_size,
)

Pairs = list[tuple[str, str | bytes | None]]


@pytest.fixture
def producer() -> Iterator[Producer]:
    unreachable = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    yield unreachable
    unreachable.purge()


def _accepted(producer: Producer, key: bytes | None, value: bytes, headers: Pairs) -> bool:
    try:
        producer.produce("t", key=key, value=value, headers=headers or None)
        return True
    except KafkaException as error:
        assert error.args[0].name() == "MSG_SIZE_TOO_LARGE"
        return False


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        (None, []),
        (b"k" * 300, []),
        (b"order-1", [("sagalog.origin.topic", b"orders.events"), ("n", None)]),
        (b"x" * 200, [("h" * 130, b"v" * 70_000), ("é", "text")]),
    ],
)
def test_record_size_is_librdkafkas_at_the_boundary(
    producer: Producer, key: bytes | None, headers: Pairs
) -> None:
    limit = 1_000_000  # librdkafka's default message.max.bytes
    room = limit - record_size(key, b"", headers)
    assert record_size(key, b"v" * room, headers) == limit
    assert _accepted(producer, key, b"v" * room, headers)
    assert not _accepted(producer, key, b"v" * (room + 1), headers)


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 8191, 8192, 1_048_575, 1_048_576])
def test_headers_size_is_the_sum_of_header_sizes(length: int) -> None:
    """The inline count agrees with ``header_size`` around each varint length boundary, for
    ASCII and non-ASCII names and values, text or bytes."""
    headers: Pairs = [
        ("a" * length, b"b" * length),
        ("é" * (length // 2), "ü" * (length // 2)),
        ("n" * length, None),
        ("t", "x" * length),
    ]
    assert headers_size(headers) == sum(header_size(name, value) for name, value in headers)


def test_limits_take_the_smaller_of_producer_and_topic() -> None:
    assert Limits().max_record_bytes == 1_000_000
    assert Limits(1_000_000, 1_048_588).max_record_bytes == 1_000_000
    assert Limits(2_000_000, 500_000).max_record_bytes == 500_000 - BATCH_OVERHEAD
    limits = Limits(1_000)
    fitting = b"v" * (1_000 - record_size(b"k", b""))
    assert limits.fits(b"k", fitting, None)
    assert limits.oversize("x", "t", b"k", fitting, None) is None
    over = limits.oversize("routed copy", "saga.inbox", b"k", fitting + b"v", None)
    assert over is not None
    assert over.detail() == "routed copy for saga.inbox: 1001 bytes > limit 1000"


def test_first_oversize_names_the_first_record_that_would_not_fit() -> None:
    small, large = Limits(1_000), Limits(10_000)
    records = [
        (Outgoing("journal entry", "j", b"k", b"x" * 100), small),
        (Outgoing("command c/1", "cmds", b"k", b"x" * 5_000), large),
        (Outgoing("snapshot", "s", b"k", b"x" * 2_000), small),
        (Outgoing("late", "s", b"k", b"x" * 2_000), small),
    ]
    found = first_oversize(records)
    assert found is not None and (found.what, found.topic) == ("snapshot", "s")
    assert first_oversize(records[:2]) is None


def test_instance_ids_over_the_bound_are_named() -> None:
    assert instance_id_too_long(b"o" * 256, 256) is None
    assert instance_id_too_long(b"o" * 257, 256) == "instance id of 257 bytes > limit 256"


def _marks() -> Pairs:
    return [
        ("sagalog.dlq.reason", b"too-large"),
        ("sagalog.dlq.detail", b"d" * 1000),
        ("sagalog.dlq.topic", b"orders.events"),
        ("sagalog.dlq.partition", b"3"),
        ("sagalog.dlq.offset", b"12345"),
    ]


def _header(headers: Pairs, name: str) -> str | bytes | None:
    return dict(headers).get(name)


def test_a_dead_letter_that_fits_is_unchanged() -> None:
    letter = fit_dead_letter(b"k", b"value", [("a", b"1")], _marks(), 1_000_000)
    assert (letter.key, letter.value, letter.truncated) == (b"k", b"value", False)
    assert letter.headers == [("a", b"1"), *_marks()]


def test_a_large_value_is_cut_and_marked_keeping_origin_and_small_headers() -> None:
    value = b"v" * 1_200_000
    original: Pairs = [("trace", b"abc")]
    letter = fit_dead_letter(b"order-1", value, original, _marks(), 1_000_000)
    assert record_size(letter.key, letter.value, letter.headers) <= 1_000_000
    assert letter.truncated and letter.key == b"order-1"
    assert letter.value is not None and value.startswith(letter.value)
    assert len(letter.value) > 990_000
    assert _header(letter.headers, DLQ_TRUNCATED) == b"1200000"
    assert _header(letter.headers, "trace") == b"abc"
    for name, mark in _marks():
        assert _header(letter.headers, name) == mark


def test_oversized_headers_and_key_are_dropped_and_cut_before_a_small_value() -> None:
    original: Pairs = [("sagalog.note", b"n" * 999_000), ("small", b"s")]
    key = b"o" * 300_000
    letter = fit_dead_letter(key, b"payload", original, _marks(), 1_000_000)
    assert record_size(letter.key, letter.value, letter.headers) <= 1_000_000
    assert letter.value == b"payload"
    assert letter.key == key[:MAX_DEAD_LETTER_KEY]
    assert _header(letter.headers, DLQ_KEY_TRUNCATED) == b"300000"
    assert _header(letter.headers, DLQ_DROPPED_HEADERS) == b"sagalog.note"
    assert _header(letter.headers, "small") == b"s"
    assert DLQ_TRUNCATED not in dict(letter.headers)


@pytest.mark.parametrize("limit", [2_000, 100_000, 1_000_000])
def test_whatever_the_record_its_dead_letter_fits(limit: int) -> None:
    original: Pairs = [("a", b"x" * 5_000), ("b", b"y" * 700_000), ("c", None)]
    for key, value in [(None, None), (b"k" * 2_000_000, b"v" * 3_000_000), (b"k", b"v" * 10)]:
        letter = fit_dead_letter(key, value, original, _marks(), limit)
        assert record_size(letter.key, letter.value, letter.headers) <= limit
        assert _header(letter.headers, "sagalog.dlq.reason") == b"too-large"
