"""Waiting on the broker without a broker: bounded retries, a stop flag that ends every wait,
and what an abort does with each kind of error (``stream_processors.kafka.transactions``), the
wait of a service started while the broker is down (``wait_until_reachable``), and broker limits
that are not asked for again right after the broker did not answer.

The client calls are stand-ins that raise the errors librdkafka raises; the paths through a
real broker crash are exercised by the chaos suite's broker-kill phase (``chaos.broker_kill``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from stream_processors.kafka import transactions
from stream_processors.kafka.broker_limits import BrokerLimits
from stream_processors.kafka.errors import wait_until_reachable

TIMED_OUT = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
ABORTABLE = KafkaException(KafkaError(KafkaError._STATE, "abort it", txn_requires_abort=True))
FATAL = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
REFUSED = KafkaException(KafkaError(KafkaError._STATE, "not valid in this state"))


class _Calls:
    """A client call that raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: KafkaException) -> None:
        self.errors = list(errors)
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> str:
        self.timeouts.append(timeout)
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_a_retriable_error_is_retried_with_short_calls() -> None:
    call = _Calls(TIMED_OUT, TIMED_OUT)
    assert transactions.retrying(call) == "done"
    assert len(call.timeouts) == 3
    assert max(call.timeouts) <= transactions.STEP


def test_retries_end_once_the_patience_is_spent() -> None:
    call = _Calls(*[TIMED_OUT] * 1000)
    began = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        transactions.retrying(call, patience=0.3)
    assert raised.value is TIMED_OUT
    assert time.monotonic() - began < 1.0


def test_a_stop_request_ends_the_retries() -> None:
    stopping = threading.Event()

    def call(timeout: float) -> None:
        stopping.set()  # asked to stop while this call waited on the broker
        raise TIMED_OUT

    with pytest.raises(transactions.Stopped):
        transactions.retrying(call, stopping)


def test_an_error_that_is_not_retriable_is_raised_at_once() -> None:
    call = _Calls(ABORTABLE)
    with pytest.raises(KafkaException):
        transactions.retrying(call)
    assert len(call.timeouts) == 1


def test_until_done_waits_through_any_error_and_stops_when_asked() -> None:
    assert transactions.until_done(_Calls(REFUSED, TIMED_OUT), "x", None) == "done"
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    began = time.monotonic()
    with pytest.raises(transactions.Stopped):
        transactions.until_done(_Calls(*[REFUSED] * 10_000), "x", stopping)
    assert time.monotonic() - began < 1.5


class _Producer:
    def __init__(self, *errors: KafkaException) -> None:
        self.abort_transaction = _Calls(*errors)


class _Consumer:
    def assignment(self) -> list[object]:
        return []  # nothing to rewind


def test_an_abortable_error_aborts_and_a_fatal_one_is_raised() -> None:
    producer = _Producer()
    transactions.abort(producer, _Consumer(), ABORTABLE)  # type: ignore[arg-type]
    assert len(producer.abort_transaction.timeouts) == 1
    with pytest.raises(KafkaException) as raised:
        transactions.abort(_Producer(), _Consumer(), FATAL)  # type: ignore[arg-type]
    assert raised.value is FATAL


def test_a_timed_out_commit_is_aborted_and_a_failed_abort_raised_for_a_new_producer() -> None:
    # A retriable error that outlived the retries: the transaction is aborted, not the process.
    producer = _Producer(TIMED_OUT)
    transactions.abort(producer, _Consumer(), TIMED_OUT)  # type: ignore[arg-type]
    assert len(producer.abort_transaction.timeouts) == 2
    with pytest.raises(KafkaException) as raised:
        transactions.abort(_Producer(REFUSED), _Consumer(), TIMED_OUT)  # type: ignore[arg-type]
    assert raised.value is REFUSED


@pytest.fixture
def nowhere() -> Iterator[str]:
    """An address where nothing listens (the port stays bound, never listening)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def test_a_service_waits_for_the_broker_saying_why_now_and_then(
    nowhere: str, caplog: pytest.LogCaptureFixture
) -> None:
    stopping = threading.Event()
    threading.Timer(2.5, stopping.set).start()
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stream_processors.kafka.errors"):
        assert wait_until_reachable(nowhere, "worker test", stopping) is False
    assert 2.5 <= time.monotonic() - began < 4.0
    lines = [r.getMessage() for r in caplog.records if r.name == "stream_processors.kafka.errors"]
    assert 1 <= len(lines) <= 2, lines  # one line every few seconds, not one per attempt
    assert "worker test waits for the Kafka cluster" in lines[0]
    assert "connection refused" in lines[0]


def test_limits_are_not_asked_for_again_right_after_the_broker_did_not_answer(
    nowhere: str,
) -> None:
    limits = BrokerLimits(nowhere, {}, timeout=0.5, unanswered_pause=60)
    began = time.monotonic()
    assert limits.problem("a") is None  # an unanswered broker dead-letters nothing
    first = time.monotonic() - began
    for topic in ("a", "b", "c"):
        assert limits.limits(topic).max_record_bytes > 0
    assert first >= 0.4
    assert time.monotonic() - began - first < 0.2


def test_a_call_that_does_not_return_is_taken_for_hung_and_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "HUNG_AFTER", 0.3)
    release = threading.Event()

    def hangs(timeout: float) -> None:  # as send_offsets_to_transaction after a broker restart
        release.wait(10)

    began = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        transactions.retrying(hangs)
    assert raised.value.args[0].fatal()
    assert time.monotonic() - began < transactions.STEP + 1.0
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    monkeypatch.setattr(transactions, "HUNG_AFTER", 60)
    began = time.monotonic()
    with pytest.raises(transactions.Stopped):
        transactions.retrying(hangs, stopping)
    assert time.monotonic() - began < 1.0
    release.set()


def test_a_call_refused_because_a_hung_one_is_in_progress_is_fatal() -> None:
    busy = KafkaError(
        KafkaError._PREV_IN_PROGRESS, "simultaneous calls not allowed", retriable=True
    )
    call = _Calls(KafkaException(busy))
    with pytest.raises(KafkaException) as raised:
        transactions.retrying(call)
    assert raised.value.args[0].fatal()
    assert len(call.timeouts) == 1


class _Rewinding:
    """A consumer with one assigned partition whose committed offsets answer after ``errors``."""

    def __init__(self, *errors: KafkaException, offset: int = 42) -> None:
        self.committed_calls = _Calls(*errors)
        self.offset = offset
        self.seeks: list[tuple[str, int, int]] = []
        self.closed = False

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("cmds", 3)]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.committed_calls(timeout)
        return [TopicPartition(tp.topic, tp.partition, self.offset) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def close(self) -> None:
        self.closed = True


def test_a_rewind_seeks_to_the_committed_offsets_once_they_can_be_read() -> None:
    consumer = _Rewinding(TIMED_OUT, offset=42)
    transactions.rewind(consumer)  # type: ignore[arg-type]
    assert consumer.seeks == [("cmds", 3, 42)]
    never_committed = _Rewinding(offset=-1001)  # no offset committed yet: from the beginning
    transactions.rewind(never_committed)  # type: ignore[arg-type]
    assert never_committed.seeks == [("cmds", 3, OFFSET_BEGINNING)]


def test_a_rewind_that_cannot_read_the_offsets_gives_the_consumer_up() -> None:
    """After a broker SIGKILL a consumer's offset fetches were seen failing for minutes: the
    rewind gives up after its patience with a fatal ``ConsumerFailed``, for a new consumer."""
    consumer = _Rewinding(*[TIMED_OUT] * 10_000)
    began = time.monotonic()
    with pytest.raises(transactions.ConsumerFailed) as raised:
        transactions.rewind(consumer, None, patience=0.3)  # type: ignore[arg-type]
    assert time.monotonic() - began < 1.5
    assert raised.value.args[0].fatal()
    assert "committed offsets unreadable" in raised.value.args[0].str()
    assert consumer.seeks == []


def test_a_rewind_ends_when_asked_to_stop() -> None:
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    with pytest.raises(transactions.Stopped):
        transactions.rewind(_Rewinding(*[TIMED_OUT] * 10_000), stopping)  # type: ignore[arg-type]


def test_a_worker_whose_consumer_cannot_rewind_aborts_and_consumes_with_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transaction is aborted; the consumer that cannot read its committed offsets is
    closed and replaced (a new one starts from them), and the worker goes on."""
    from sagas import worker as worker_module

    monkeypatch.setattr(transactions, "REWIND_PATIENCE", 0.3)
    stuck, fresh = _Rewinding(*[TIMED_OUT] * 10_000), _Rewinding()
    serving = object.__new__(worker_module._Serving)
    serving.worker = type("W", (), {"_heartbeats": None})()  # type: ignore[assignment]
    serving.stopping = threading.Event()
    serving.handled = None
    serving.producer = _Producer()  # type: ignore[assignment]
    serving.consumer = stuck  # type: ignore[assignment]
    serving.offsets, serving.replies = {("cmds", 3): 50}, []
    serving.open, serving.committing = True, False
    monkeypatch.setattr(serving, "_subscribed", lambda: fresh)
    serving._abort(ABORTABLE)
    assert len(serving.producer.abort_transaction.timeouts) == 1  # type: ignore[attr-defined]
    assert stuck.closed and serving.consumer is fresh
    assert not serving.open and serving.offsets == {}
