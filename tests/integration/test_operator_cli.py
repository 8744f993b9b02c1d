"""The operator commands write the right records: ``sagas retry/cancel/resolve/signal`` and ``dlq``.

Each test drives the real CLI (typer's ``CliRunner``, in process) against the real broker and
reads back what it wrote with a ``read_committed`` consumer: an ``OperatorAction`` or event on
the saga's inbox keyed by the instance with the ``sagalog.note`` header; dead letters listed
with their reason and origin; chosen dead letters back on their origin topic with their key,
value and original headers. No processor runs here: that the engine acts on these records is
shown by the end-to-end tests.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from typer.testing import CliRunner, Result

from examples.order_fulfillment.messages import PaymentCompleted
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.cli import app
from sagas.operator import REDRIVEN_FROM
from stream_processors.codecs.records import decode_record
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import OperatorAction
from stream_processors.engine.routing import (
    COMMAND_ID,
    DLQ_REASON,
    NOTE,
    OPERATOR_ID,
    dead_letter_headers,
    header,
)
from stream_processors.kafka.config import consumer_config
from stream_processors.kafka.reading import watermarks
from stream_processors.kafka.topics import SagaTopics, ensure_topics
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    FLAKY_TARGET,
    FLAKY_TOPICS,
    CommittedReader,
    Jobs,
    SagaRun,
    sagas_cli,
)

pytestmark = pytest.mark.kafka

SAGA_TARGET = "examples.order_fulfillment.saga:OrderFulfillment"
TOPICS = SagaTopics.for_saga(OrderFulfillment.definition, 8)

Headers = list[tuple[str, bytes | None]]


def _cli(kafka: KafkaCluster, *args: str) -> Result:
    """Run ``sagas <args>`` in process; wide enough that tables never wrap what tests look for."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "COLUMNS": "250"}
    return CliRunner().invoke(app, list(args), env=env)


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


class TopicTail:
    """The committed records of a topic written after this object was made (no consumer group)."""

    def __init__(self, kafka: KafkaCluster, topic: str) -> None:
        self.topic = topic
        config = consumer_config(
            kafka.bootstrap, "operator-cli-test", f"operator-cli-{time.time_ns()}"
        )
        self._consumer = Consumer(config)
        # Watermarks come from a consumer that never fetches: asked of the fetching one, each
        # query would queue behind a long-polling fetch (fetch.wait.max.ms) on the connection.
        self._probe = Consumer(config)
        partitions = self._probe.list_topics(topic, timeout=15).topics[topic].partitions
        self._start = {p: self._end(p) for p in sorted(partitions)}
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in self._start.items()])

    def _end(self, partition: int) -> int:
        return watermarks(self._probe, TopicPartition(self.topic, partition))[1]

    def read(self, keep: Callable[[Message], bool] = lambda _: True) -> list[Message]:
        """Every kept record up to the topic's current end (positions reach the high watermarks)."""
        ends = {p: self._end(p) for p in self._start}
        pending = {p for p in ends if ends[p] > self._start[p]}
        kept: list[Message] = []
        deadline = time.monotonic() + 30
        while pending:
            for message in self._consumer.consume(num_messages=1000, timeout=0.2):
                assert message.error() is None, message.error()
                if keep(message):
                    kept.append(message)
            for tp in self._consumer.position([TopicPartition(self.topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
            assert time.monotonic() < deadline, f"{self.topic} not read to its end"
        return kept

    def close(self) -> None:
        self._consumer.close()
        self._probe.close()


def _keyed(key: str) -> Callable[[Message], bool]:
    return lambda message: message.key() == key.encode()


def _headers(message: Message) -> Headers:
    return [
        (name, value.encode() if isinstance(value, str) else value)
        for name, value in message.headers() or []
    ]


# -- dead letters ------------------------------------------------------------------------------


def _dead_letter(
    kafka: KafkaCluster,
    origin: str,
    dlq: str,
    records: list[tuple[str, bytes, Headers, str]],
    detail: Callable[[str], str] = lambda key: f"detail of {key}",
) -> list[tuple[Message, int, int]]:
    """Produce ``(key, value, headers, reason)`` records to ``origin``, read them back, and
    dead-letter each to ``dlq`` the way the processor does (headers from ``dead_letter_headers``,
    inside a transaction). Returns (original message, dlq partition, dlq offset) for each."""
    tail = TopicTail(kafka, origin)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "partitioner": "murmur2_random"})
    for key, value, headers, _ in records:
        producer.produce(origin, key=key.encode(), value=value, headers=headers)
    assert producer.flush(30) == 0
    originals = {m.key(): m for m in tail.read()}
    tail.close()
    assert len(originals) == len(records)

    placed: dict[bytes, tuple[int, int]] = {}

    def delivered(error: object, message: Message) -> None:
        assert error is None, error
        placed[message.key()] = (message.partition(), message.offset())

    dead = Producer(
        {"bootstrap.servers": kafka.bootstrap, "transactional.id": f"opcli-{uuid.uuid4().hex}"}
    )
    dead.init_transactions(30)
    dead.begin_transaction()
    for key, _, _, reason in records:
        message = originals[key.encode()]
        dead.produce(
            dlq,
            key=message.key(),
            value=message.value(),
            headers=dead_letter_headers(message, reason, detail(key)),
            on_delivery=delivered,
        )
    dead.commit_transaction(30)
    return [(originals[k.encode()], *placed[k.encode()]) for k, _, _, _ in records]


@pytest.fixture
def dlq_pair(kafka: KafkaCluster) -> tuple[str, str]:
    """A fresh origin topic (3 partitions) and its dead-letter topic (2 partitions)."""
    origin = kafka.create_topic(f"opcli-origin.{uuid.uuid4().hex[:10]}", partitions=3)
    dlq = kafka.create_topic(f"{origin}.dlq", partitions=2)
    return origin, dlq


def test_dlq_list_shows_dead_letters_with_reason_and_origin(
    kafka: KafkaCluster, dlq_pair: tuple[str, str]
) -> None:
    origin, dlq = dlq_pair
    run = uuid.uuid4().hex[:8]
    records = [
        (f"order-{run}-a", b"\x00payload-a", [("trace-id", b"t-a")], "handler-error"),
        (f"order-{run}-b", b"\x00payload-b", [("trace-id", b"t-b")], "not-avro"),
    ]
    (first, first_partition, first_offset), _ = _dead_letter(kafka, origin, dlq, records)

    table = _ok(_cli(kafka, "dlq", "list", dlq))
    assert f"order-{run}-a" in table and f"order-{run}-b" in table
    assert "handler-error" in table and "not-avro" in table
    assert f"{origin}[{first.partition()}]@{first.offset()}" in table

    listed = json.loads(_ok(_cli(kafka, "dlq", "list", dlq, "--json")))
    assert {entry["key"] for entry in listed} == {f"order-{run}-a", f"order-{run}-b"}
    entry = next(e for e in listed if e["key"] == f"order-{run}-a")
    assert entry["reason"] == "handler-error"
    assert entry["detail"] == f"detail of order-{run}-a"
    assert entry["origin"] == {
        "topic": origin,
        "partition": first.partition(),
        "offset": first.offset(),
    }
    assert (entry["partition"], entry["offset"]) == (first_partition, first_offset)
    assert entry["headers"] == [["trace-id", "t-a"]]  # the dlq headers are not "original" ones
    assert bytes.fromhex(entry["value_hex"]) == b"\x00payload-a"

    only = json.loads(_ok(_cli(kafka, "dlq", "list", dlq, "--json", "--reason", "not-avro")))
    assert [e["key"] for e in only] == [f"order-{run}-b"]
    assert len(json.loads(_ok(_cli(kafka, "dlq", "list", dlq, "--json", "--limit", "1")))) == 1


def test_dlq_list_survives_a_detail_cut_inside_a_character(
    kafka: KafkaCluster, dlq_pair: tuple[str, str]
) -> None:
    """``dead_letter_headers`` cuts the detail at 1,000 bytes, which can split a character."""
    origin, dlq = dlq_pair
    key = f"order-{uuid.uuid4().hex[:8]}"
    long_detail = "x" + "é" * 600  # 1 + 1,200 bytes: the cut falls inside an "é"
    _dead_letter(kafka, origin, dlq, [(key, b"v", [], "handler-error")], lambda _: long_detail)

    (entry,) = json.loads(_ok(_cli(kafka, "dlq", "list", dlq, "--json")))
    assert entry["key"] == key and entry["detail"].startswith("xéé")
    assert key in _ok(_cli(kafka, "dlq", "list", dlq))


def test_dlq_list_of_an_empty_or_missing_topic(
    kafka: KafkaCluster, dlq_pair: tuple[str, str]
) -> None:
    _, dlq = dlq_pair
    assert "no dead letters" in _ok(_cli(kafka, "dlq", "list", dlq))
    assert json.loads(_ok(_cli(kafka, "dlq", "list", dlq, "--json"))) == []
    missing = _cli(kafka, "dlq", "list", f"opcli-missing-{uuid.uuid4().hex}.dlq")
    assert missing.exit_code == 1 and "not found" in missing.output
    assert _cli(kafka, "dlq", "list", "not-a-dead-letter-topic").exit_code == 2


def test_dlq_list_of_a_saga_reads_its_dlq(kafka: KafkaCluster) -> None:
    ensure_topics(TOPICS, kafka.bootstrap)
    result = _cli(kafka, "dlq", "list", SAGA_TARGET, "--limit", "1")
    assert result.exit_code == 0, result.output
    assert TOPICS.dlq in result.output  # the table's title, or "no dead letters in <dlq>"


def test_dlq_redrive_by_offset_sends_exactly_that_record_back(
    kafka: KafkaCluster, dlq_pair: tuple[str, str]
) -> None:
    origin, dlq = dlq_pair
    run = uuid.uuid4().hex[:8]
    records = [
        (f"order-{run}-{i}", f"value-{i}".encode(), [("trace-id", f"t-{i}".encode())], reason)
        for i, reason in enumerate(["handler-error", "no-handler", "handler-error"])
    ]
    letters = _dead_letter(kafka, origin, dlq, records)
    chosen, chosen_partition, chosen_offset = letters[1]
    tail = TopicTail(kafka, origin)

    out = _ok(_cli(kafka, "dlq", "redrive", dlq, "--offset", f"{chosen_partition}:{chosen_offset}"))
    assert f"sent 1 dead letters from {dlq} back: 1 to {origin}" in out

    back = tail.read()
    assert len(back) == 1
    (message,) = back
    assert message.key() == chosen.key()
    assert message.value() == chosen.value()
    assert message.partition() == chosen.partition()  # the key lands where it belongs
    assert _headers(message) == [
        *_headers(chosen),
        (REDRIVEN_FROM, f"{dlq}:{chosen_partition}:{chosen_offset}".encode()),
    ]
    assert header(message.headers(), DLQ_REASON) is None

    # --reason selects by reason: the two handler errors, and nothing else.
    out = _ok(_cli(kafka, "dlq", "redrive", dlq, "--reason", "handler-error"))
    assert f"sent 2 dead letters from {dlq} back: 2 to {origin}" in out
    again = tail.read()
    assert sorted(m.key() for m in again) == sorted([letters[0][0].key(), letters[2][0].key()])
    for message in again:
        original = letters[0][0] if message.key() == letters[0][0].key() else letters[2][0]
        assert message.value() == original.value()
        assert _headers(message)[:-1] == _headers(original)
    tail.close()


def test_dlq_redrive_refuses_without_a_selection(
    kafka: KafkaCluster, dlq_pair: tuple[str, str]
) -> None:
    origin, dlq = dlq_pair
    run = uuid.uuid4().hex[:8]
    _dead_letter(kafka, origin, dlq, [(f"order-{run}", b"v", [], "handler-error")])
    tail = TopicTail(kafka, origin)

    no_selector = _cli(kafka, "dlq", "redrive", dlq)
    assert no_selector.exit_code == 2 and "--offset" in no_selector.output
    assert _cli(kafka, "dlq", "redrive", dlq, "--all", "--reason", "x").exit_code == 2
    assert _cli(kafka, "dlq", "redrive", dlq, "--offset", "nonsense").exit_code == 2
    nowhere = _cli(kafka, "dlq", "redrive", dlq, "--offset", "0:999", "--offset", "1:998")
    assert nowhere.exit_code == 1 and "0:999" in nowhere.output
    no_match = _cli(kafka, "dlq", "redrive", dlq, "--reason", "no-such-reason")
    assert no_match.exit_code == 1 and "nothing to send back" in no_match.output
    assert tail.read() == []

    assert "1 to" in _ok(_cli(kafka, "dlq", "redrive", dlq, "--all"))
    assert [m.key() for m in tail.read()] == [f"order-{run}".encode()]
    tail.close()


# -- actions on instances ------------------------------------------------------------------------


@pytest.fixture
def inbox(kafka: KafkaCluster) -> Iterator[TopicTail]:
    ensure_topics(TOPICS, kafka.bootstrap)
    tail = TopicTail(kafka, TOPICS.inbox)
    yield tail
    tail.close()


@pytest.mark.parametrize("action", ["retry", "cancel", "resolve"])
def test_operator_action_goes_to_the_inbox_keyed_by_instance_with_a_note(
    kafka: KafkaCluster, inbox: TopicTail, action: str
) -> None:
    instance = f"opcli-{uuid.uuid4().hex}"
    reason = f"ticket {instance[-6:]}: card replaced"
    args = [action, SAGA_TARGET, instance, "--by", "alice", "--reason", reason, "--no-wait"]
    out = _ok(_cli(kafka, *args))
    assert out.startswith(f"sent {action} to {instance} (inbox[")

    (message,) = inbox.read(_keyed(instance))
    record = decode_record(message.value())
    assert record == OperatorAction(action=action, by="alice", reason=reason)
    assert header(message.headers(), NOTE) == f"{action} by alice: {reason}"
    assert header(message.headers(), OPERATOR_ID) in out  # the request id, printed


def test_by_defaults_to_the_os_user(
    kafka: KafkaCluster, inbox: TopicTail, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "os-user-bob")
    instance = f"opcli-{uuid.uuid4().hex}"
    _ok(_cli(kafka, "resolve", SAGA_TARGET, instance, "--reason", "refunded by hand", "--no-wait"))
    (message,) = inbox.read(_keyed(instance))
    record = decode_record(message.value())
    assert isinstance(record, OperatorAction) and record.by == "os-user-bob"
    assert header(message.headers(), NOTE) == "resolve by os-user-bob: refunded by hand"


def test_an_action_needs_a_reason(kafka: KafkaCluster, inbox: TopicTail) -> None:
    instance = f"opcli-{uuid.uuid4().hex}"
    assert _cli(kafka, "retry", SAGA_TARGET, instance).exit_code == 2
    assert _cli(kafka, "retry", SAGA_TARGET, instance, "--reason", " ").exit_code == 2
    assert inbox.read(_keyed(instance)) == []


@pytest.mark.parametrize(
    "event_type", ["PaymentCompleted", "examples.order_fulfillment.messages:PaymentCompleted"]
)
def test_signal_sends_the_event_to_the_instance(
    kafka: KafkaCluster, inbox: TopicTail, event_type: str
) -> None:
    instance = f"opcli-{uuid.uuid4().hex}"
    data = json.dumps({"order_id": instance, "payment_id": "pay-by-phone-1"})
    args = ["signal", SAGA_TARGET, instance, event_type, "--data", data]
    out = _ok(_cli(kafka, *args, "--by", "carol", "--reason", "paid by phone", "--no-wait"))
    assert f"sent signal PaymentCompleted to {instance}" in out

    (message,) = inbox.read(_keyed(instance))
    assert decode_record(message.value()) == PaymentCompleted(
        order_id=instance, payment_id="pay-by-phone-1"
    )
    assert header(message.headers(), NOTE) == "signal by carol: paid by phone"
    # It names the step, so it answers whichever attempt of the payment is in flight.
    step = f"order_fulfillment/{instance}/payment"
    assert header(message.headers(), COMMAND_ID) == step


def test_signal_names_the_attempt_it_is_told_to(kafka: KafkaCluster, inbox: TopicTail) -> None:
    instance = f"opcli-{uuid.uuid4().hex}"
    data = json.dumps({"order_id": instance, "payment_id": "p"})
    attempt = f"order_fulfillment/{instance}/payment/2"
    args = ["signal", SAGA_TARGET, instance, "PaymentCompleted", "--data", data]
    _ok(_cli(kafka, *args, "--reason", "paid", "--command-id", attempt, "--no-wait"))
    (message,) = inbox.read(_keyed(instance))
    assert header(message.headers(), COMMAND_ID) == attempt


def test_signal_refuses_a_bad_type_or_bad_fields(kafka: KafkaCluster, inbox: TopicTail) -> None:
    instance = f"opcli-{uuid.uuid4().hex}"
    base = ["signal", SAGA_TARGET, instance]
    why = ["--reason", "test"]
    good = json.dumps({"order_id": instance, "payment_id": "p"})
    command = json.dumps(
        {"order_id": instance, "customer_id": "c", "amount_cents": 1, "card_token": "t"}
    )
    failures = {
        "unknown type": [*base, "NoSuchEvent", "--data", good, *why],
        "not an input": [
            *base,
            "examples.order_fulfillment.messages:MakePayment",
            "--data",
            command,
            *why,
        ],
        "missing field": [*base, "PaymentCompleted", "--data", '{"order_id": "x"}', *why],
        "unknown field": [*base, "PaymentCompleted", "--data", '{"nope": 1}', *why],
        "wrong type": [
            *base,
            "PaymentCompleted",
            "--data",
            json.dumps({"order_id": 1, "payment_id": "p"}),
            *why,
        ],
        "another instance's event": [
            *base,
            "OrderPlaced",
            "--data",
            json.dumps(
                {
                    "order_id": f"{instance}-other",
                    "customer_id": "c",
                    "amount_cents": 1,
                    "card_token": "t",
                    "postcode": "p",
                }
            ),
            *why,
        ],
        "not JSON": [*base, "PaymentCompleted", "--data", "{order_id", *why],
        "not an object": [*base, "PaymentCompleted", "--data", "[1]", *why],
    }
    for case, args in failures.items():
        result = _cli(kafka, *args)
        assert result.exit_code == 2, (case, result.output)
        assert "Invalid value" in result.output, (case, result.output)
    unknown = _cli(kafka, *failures["unknown type"])
    assert "PaymentCompleted" in unknown.output  # the message names the accepted types
    assert inbox.read(_keyed(instance)) == []


# -- verdicts: a processor decides, the command says what it decided ---------------------------


def _sagas(jobs: Jobs, *args: str) -> subprocess.CompletedProcess[str]:
    """``sagas <args>`` as an operator runs it, whatever its exit code."""
    return sagas_cli(jobs.kafka.bootstrap, *args)


def _entry(jobs: Jobs, instance: str, kind: Kind) -> JournalEntry:
    return jobs.wait_for(instance, kind, timeout=30)


def test_operator_commands_wait_for_the_processors_verdict(jobs: Jobs) -> None:
    """Retry of a completed instance and cancel of an unknown one are refused (exit 1) and the
    refusal journaled; a resolve of a parked instance is applied, at the journal position the
    command prints."""
    jobs.flag("undo-broken", on=True)
    jobs.start()
    done, parked = jobs.job("ok"), jobs.job("fail-finish")
    jobs.wait_for(done, Kind.SAGA_COMPLETED)
    jobs.wait_for(parked, Kind.SAGA_PARKED)

    retry = _sagas(jobs, "retry", FLAKY_TARGET, done, "--by", "alice", "--reason", "try again")
    assert retry.returncode == 1, (retry.stdout, retry.stderr)
    why = "retry applies to a parked instance (needs_attention); this one is completed"
    assert retry.stdout.startswith(f"refused retry to {done}: {why} ")
    refusal = _entry(jobs, done, Kind.OPERATOR_REFUSED)
    assert refusal.seq == -1 and refusal.operator_id
    assert (
        refusal.reason
        == f"retry by alice: try again; refused (operator-retry-not-applicable): {why}"
    )
    assert decode_record(refusal.record) == OperatorAction(
        action="retry", by="alice", reason="try again"
    )

    unknown = f"{jobs.run}-never-started"
    cancel = _sagas(
        jobs, "cancel", FLAKY_TARGET, unknown, "--by", "bob", "--reason", "typo", "--json"
    )
    assert cancel.returncode == 1, (cancel.stdout, cancel.stderr)
    (verdict,) = json.loads(cancel.stdout)
    assert (verdict["outcome"], verdict["code"]) == ("refused", "unknown-instance")
    assert verdict["why"].startswith(f"there is no instance '{unknown}' of flaky_jobs")
    journaled = _entry(jobs, unknown, Kind.OPERATOR_REFUSED)
    assert journaled.operator_id == verdict["request"]
    assert jobs.entries(unknown) == [journaled]  # and no instance: nothing else, no snapshot
    assert _snapshots_of(jobs, unknown) == []
    history = _sagas(jobs, "history", FLAKY_TARGET, unknown)  # the refusal, at no position
    assert history.returncode == 0 and "OperatorRefused" in history.stdout, history.stderr
    state = _sagas(jobs, "state", FLAKY_TARGET, unknown)
    assert state.returncode == 1 and f"{unknown} had not started" in state.stderr

    resolve = _sagas(jobs, "resolve", FLAKY_TARGET, parked, "--reason", "undone by hand", "--json")
    assert resolve.returncode == 0, (resolve.stdout, resolve.stderr)
    (applied,) = json.loads(resolve.stdout)
    assert (applied["outcome"], applied["kind"]) == ("applied", "OperatorAction")
    action = _entry(jobs, parked, Kind.OPERATOR_ACTION)
    assert (action.seq, action.operator_id) == (applied["seq"], applied["request"])
    journal = CommittedReader(jobs.kafka.bootstrap, FLAKY_TOPICS.journal, from_end=False)
    try:
        at = _record_at(journal, applied["journal_partition"], applied["journal_offset"])
    finally:
        journal.close()
    assert JournalEntry.decode(at.value()) == action
    _entry(jobs, parked, Kind.SAGA_RESOLVED)


def _snapshots_of(jobs: Jobs, instance: str) -> list[Message]:
    reader = CommittedReader(
        jobs.kafka.bootstrap, FLAKY_TOPICS.snapshots, from_end=False, keep=_keyed(instance)
    )
    try:
        return reader.read_to_end()
    finally:
        reader.close()


def _record_at(reader: CommittedReader, partition: int, offset: int) -> Message:
    found = [m for m in reader.read_to_end() if (m.partition(), m.offset()) == (partition, offset)]
    assert len(found) == 1, (partition, offset)
    return found[0]


def test_no_verdict_in_time_exits_3_and_says_what_to_check(
    kafka: KafkaCluster, inbox: TopicTail
) -> None:
    """No processor of the order saga runs here: the command waits --timeout, then says so."""
    instance = f"opcli-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = _cli(kafka, "retry", SAGA_TARGET, instance, "--reason", "test", "--timeout", "2")
    waited = time.monotonic() - started
    assert result.exit_code == 3, result.output
    assert result.output.startswith(f"no verdict on retry to {instance}: none within 2 s")
    assert "is a processor of order_fulfillment running" in result.output
    assert 2 <= waited < 20
    (message,) = inbox.read(_keyed(instance))  # it was sent all the same
    assert header(message.headers(), OPERATOR_ID) in result.output


def test_an_instance_waiting_on_a_dead_lettered_command_is_found_stuck_and_acted_on(
    jobs: Jobs,
) -> None:
    """``work`` has no timeout: a job whose command a worker dead-lettered waits for ever.
    ``sagas list --stuck`` finds it, saying why; ``--where stuck=...`` acts on it in bulk."""
    dlq = CommittedReader(jobs.kafka.bootstrap, "flaky.work.dlq", from_end=True)
    jobs.flag("work-misconfigured", on=True)
    jobs.start()
    job = jobs.job("ok")
    deadline = time.monotonic() + 60
    dead: list[Message] = []
    while not dead and time.monotonic() < deadline:
        dead = [m for m in dlq.poll(0.5) if m.key() == job.encode()]
    dlq.close()
    assert dead, jobs.processes.log_tails()
    command = header(dead[0].headers(), COMMAND_ID)

    index = ["--state-dir", str(jobs.tmp / "index")]
    found = _sagas(jobs, "list", FLAKY_TARGET, "--stuck", "--older-than", "1h", "--json", *index)
    assert found.returncode == 0, found.stderr
    stuck = {i["instance"]: i["stuck"] for i in json.loads(found.stdout)["instances"]}
    assert stuck[job] == [f"work: {command} dead-lettered (handler-error)"]
    table = _sagas(jobs, "list", FLAKY_TARGET, "--stuck", *index)  # piped: nothing cut
    assert f"work: {command} dead-lettered (handler-error)" in table.stdout

    mine = ["--where", "stuck=1h", "--where", f"data.job_id={job}", "--yes", *index]
    retry = _sagas(jobs, "retry", FLAKY_TARGET, *mine, "--reason", "bulk test")
    assert retry.returncode == 1, (retry.stdout, retry.stderr)
    assert f"refused retry to {job}: retry applies to a parked instance" in retry.stdout
    cancel = _sagas(jobs, "cancel", FLAKY_TARGET, *mine, "--reason", "bulk test", "--json")
    assert cancel.returncode == 0, (cancel.stdout, cancel.stderr)
    (verdict,) = json.loads(cancel.stdout)
    assert (verdict["instance"], verdict["outcome"]) == (job, "applied")
    # Cancelled while its command is in flight (dead-lettered): the saga waits for its reply.
    assert _entry(jobs, job, Kind.SAGA_COMPENSATING).seq == verdict["seq"] + 1


def test_a_signal_is_applied_or_refused_and_says_so(saga: SagaRun) -> None:
    """No worker answers the payment: a signalled PaymentCompleted is applied (journaled at the
    printed position) and the same signal again is refused, the attempt being answered."""
    saga.start_processor()
    (order,) = saga.plan(1, seed=3, failures=0)
    order_id = order.event.order_id
    saga.publish([order])
    _until_journaled(saga, order_id, Kind.COMMAND_SENT)
    data = json.dumps({"order_id": order_id, "payment_id": "paid-by-phone"})
    args = ["signal", SAGA_TARGET, order_id, "PaymentCompleted", "--data", data]
    applied = sagas_cli(saga.kafka.bootstrap, *args, "--reason", "bank says paid", "--json")
    assert applied.returncode == 0, (applied.stdout, applied.stderr)
    (verdict,) = json.loads(applied.stdout)
    assert (verdict["outcome"], verdict["kind"], verdict["what"]) == (
        "applied",
        "InputAccepted",
        "signal PaymentCompleted",
    )
    accepted = _until_journaled(saga, order_id, Kind.INPUT_ACCEPTED)
    assert (accepted.seq, accepted.operator_id) == (verdict["seq"], verdict["request"])
    assert accepted.reason == f"signal by {getpass.getuser()}: bank says paid"
    again = sagas_cli(saga.kafka.bootstrap, *args, "--reason", "once more")
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert again.stdout.startswith(f"refused signal PaymentCompleted to {order_id}: ")
    assert "[duplicate]" in again.stdout


def _until_journaled(saga: SagaRun, instance: str, kind: Kind) -> JournalEntry:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        saga.journal.catch_up()
        found = [e for e in saga.journal.entries.get(instance, []) if e.kind == kind.value]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{instance}: no {kind.value}\n{saga.processes.log_tails()}")
