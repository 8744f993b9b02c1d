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
from stream_processors.kafka.clients import Stopping
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


def _calls(stopping: threading.Event | None = None) -> transactions.Calls:
    return transactions.Calls(stopping)


def _in(seconds: float) -> float:
    return time.monotonic() + seconds


def test_a_retriable_error_is_retried_with_short_calls() -> None:
    call = _Calls(TIMED_OUT, TIMED_OUT)
    assert _calls().retrying(call, _in(20)) == "done"
    assert len(call.timeouts) == 3
    assert max(call.timeouts) <= transactions.STEP


def test_retries_end_at_the_deadline_with_an_error_that_aborts() -> None:
    call = _Calls(*[TIMED_OUT] * 1000)
    began = time.monotonic()
    with pytest.raises(transactions.GaveUp) as raised:
        _calls().retrying(call, _in(0.3))
    error = raised.value.args[0]
    assert not error.fatal() and not error.retriable()  # abort the transaction, keep the producer
    assert "still failing at its deadline" in error.str() and "timed out" in error.str()
    assert time.monotonic() - began < 1.0


def test_a_stop_request_ends_the_retries() -> None:
    stopping = threading.Event()

    def call(timeout: float) -> None:
        stopping.set()  # asked to stop while this call waited on the broker
        raise TIMED_OUT

    with pytest.raises(Stopping):
        _calls(stopping).retrying(call, _in(20))


def test_a_commit_on_the_way_out_is_not_interrupted_by_the_stop_request() -> None:
    stopping = threading.Event()
    stopping.set()
    call = _Calls(TIMED_OUT)
    assert _calls(stopping).retrying(call, _in(20), interruptible=False) == "done"


def test_an_error_that_is_not_retriable_is_raised_at_once() -> None:
    call = _Calls(ABORTABLE)
    with pytest.raises(KafkaException) as raised:
        _calls().retrying(call, _in(20))
    assert raised.value is ABORTABLE
    assert len(call.timeouts) == 1


def test_until_done_waits_through_errors_saying_so_and_stops_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="stream_processors.kafka.transactions"):
        assert _calls().until_done(_Calls(REFUSED, TIMED_OUT), "x") == "done"
    assert any("waiting for x" in r.getMessage() for r in caplog.records)
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    began = time.monotonic()
    with pytest.raises(Stopping):
        _calls(stopping).until_done(_Calls(*[REFUSED] * 10_000), "x")
    assert time.monotonic() - began < 1.5


def test_until_done_gives_up_at_once_on_a_fatal_error() -> None:
    call = _Calls(FATAL)
    with pytest.raises(KafkaException) as raised:
        _calls().until_done(call, "x")
    assert raised.value is FATAL and len(call.timeouts) == 1


def test_the_calls_share_one_helper_thread_until_one_is_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "HUNG_AFTER", 0.2)
    calls, threads = _calls(), []

    def where(timeout: float) -> None:
        threads.append(threading.current_thread())

    for _ in range(3):
        calls.bounded(where, 0.1)
    assert len(set(threads)) == 1 and threads[0] is not threading.current_thread()
    release = threading.Event()
    with pytest.raises(transactions.Hung):
        calls.bounded(lambda timeout: release.wait(10), 0.1)
    calls.bounded(where, 0.1)  # the hung one still holds its thread: a new one serves
    assert threads[-1] is not threads[0]
    release.set()


class _Producer:
    def __init__(self, *errors: KafkaException) -> None:
        self.abort_transaction = _Calls(*errors)


class _Consumer:
    def assignment(self) -> list[object]:
        return []  # nothing to rewind


def test_an_abortable_error_aborts_and_a_fatal_one_is_raised() -> None:
    producer = _Producer()
    transactions.abort(_calls(), producer, _Consumer(), ABORTABLE)  # type: ignore[arg-type]
    assert len(producer.abort_transaction.timeouts) == 1
    with pytest.raises(KafkaException) as raised:
        transactions.abort(_calls(), _Producer(), _Consumer(), FATAL)  # type: ignore[arg-type]
    assert raised.value is FATAL


def test_a_timed_out_commit_is_aborted_and_a_failed_abort_raised_for_a_new_producer() -> None:
    # A retriable error that outlived the retries: the transaction is aborted, not the process.
    producer = _Producer(TIMED_OUT)
    transactions.abort(_calls(), producer, _Consumer(), TIMED_OUT)  # type: ignore[arg-type]
    assert len(producer.abort_transaction.timeouts) == 2
    with pytest.raises(KafkaException) as raised:
        transactions.abort(_calls(), _Producer(REFUSED), _Consumer(), TIMED_OUT)  # type: ignore[arg-type]
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
    with pytest.raises(transactions.Hung) as raised:
        _calls().retrying(hangs, _in(20))
    assert raised.value.args[0].fatal()
    assert time.monotonic() - began < transactions.STEP + 1.0
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    monkeypatch.setattr(transactions, "HUNG_AFTER", 60)
    began = time.monotonic()
    with pytest.raises(Stopping):
        _calls(stopping).retrying(hangs, _in(20))
    assert time.monotonic() - began < 1.0
    release.set()


def test_a_call_refused_because_a_hung_one_is_in_progress_is_fatal() -> None:
    busy = KafkaError(
        KafkaError._PREV_IN_PROGRESS, "simultaneous calls not allowed", retriable=True
    )
    call = _Calls(KafkaException(busy))
    with pytest.raises(KafkaException) as raised:
        _calls().retrying(call, _in(20))
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
    transactions.rewind(_calls(), consumer)  # type: ignore[arg-type]
    assert consumer.seeks == [("cmds", 3, 42)]
    never_committed = _Rewinding(offset=-1001)  # no offset committed yet: from the beginning
    transactions.rewind(_calls(), never_committed)  # type: ignore[arg-type]
    assert never_committed.seeks == [("cmds", 3, OFFSET_BEGINNING)]


def test_a_rewind_that_cannot_read_the_offsets_gives_the_consumer_up() -> None:
    """After a broker SIGKILL a consumer's offset fetches were seen failing for minutes: the
    rewind gives up after its patience with a fatal ``ConsumerFailed``, for a new consumer."""
    consumer = _Rewinding(*[TIMED_OUT] * 10_000)
    began = time.monotonic()
    with pytest.raises(transactions.ConsumerFailed) as raised:
        transactions.rewind(_calls(), consumer, patience=0.3)  # type: ignore[arg-type]
    assert time.monotonic() - began < 1.5
    assert raised.value.args[0].fatal()
    assert "committed offsets unreadable" in raised.value.args[0].str()
    assert consumer.seeks == []


def test_a_rewind_ends_when_asked_to_stop() -> None:
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    with pytest.raises(Stopping):
        transactions.rewind(_calls(stopping), _Rewinding(*[TIMED_OUT] * 10_000))  # type: ignore[arg-type]


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
    serving.calls = _calls(serving.stopping)
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
