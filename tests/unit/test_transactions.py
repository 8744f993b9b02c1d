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
from confluent_kafka import KafkaError, KafkaException

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
