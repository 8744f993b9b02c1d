"""Schema evolution on the real broker: old records stay readable; breaking changes are refused.

- Events written with v1 of a schema are read after a compatible change to v2 (a field added
  with a default): unreadable to a reader that knows only v2, readable with the default filled
  in once it has loaded the schema history. A reader that loaded the history earlier finds a
  writer schema recorded later when a record needs it.
- The history records each (topic, schema) once per process, and forgetting one (a tombstone)
  takes it out of later loads. A worker records the schema of the replies it sends, for the
  topic it sends them to (publishers are seen doing the same in the end-to-end test).
- The start check, called as the processor calls it, refuses a v2 that v1 records cannot take,
  naming topic, schema and field.
- End to end, with real ``sagas run`` processes and a tiny ticket saga written for each test into
  a temporary folder (with its ``schemas/`` beside it, so a test changes a schema by rewriting
  a file): a ticket opened under v1 and closed after the event *and* the saga state gained a
  field with a default completes, its v1 snapshot read through the history; and a processor
  whose source event gained a field with no default exits non-zero, naming the field.
- A foreign producer's new version (issue 17), with the ticket saga's processor running: a
  producer that is not Sagalog's writes ``Opened`` v2 (an added optional field, single-object
  encoded with a fingerprint no Python class or history entry has). Unregistered, it is
  dead-lettered as ``unknown-schema`` (what happens to any writer schema nobody recorded). Then
  ``sagas schemas register v2.avsc --topic ...`` (the real command line, run from the app's
  folder so the readers' v1 is found in its ``schemas/``) records it and prints its fingerprint
  and header; the processor, still running, reads the next v2 records (the fingerprint it had
  just given up on included) and their sagas complete, nothing more dead-lettered. A v3 that
  drops a field the readers need is refused in one line naming the field (exit 1); ``list``
  shows v2 as foreign; ``forget`` removes it, and refuses to forget the readers' own v1.

Every test uses its own schema namespace, topics and saga name; the history topic
``_sagalog.schemas`` is shared and only grows (one record per new schema).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from sagas.local import LocalProcess, stop_all
from sagas.worker import CommandContext, Worker
from stream_processors.codecs.avro import DecodeError, SchemaCatalog, decode, encode, parse
from stream_processors.codecs.records import CATALOG, Command, Event, decode_record
from stream_processors.core.instance import decode_snapshot
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.engine.routing import DLQ_REASON, command_headers
from stream_processors.engine.schema_history import (
    IncompatibleSchemaError,
    SchemaHistory,
    refuse_incompatible,
)
from stream_processors.kafka.config import producer_config
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import CommittedReader, log_text, wait_for_log

pytestmark = pytest.mark.kafka

REPO_ROOT = Path(__file__).resolve().parents[2]


def record_schema(namespace: str, name: str, *fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": list(fields)}


def string(name: str) -> dict[str, Any]:
    return {"name": name, "type": "string"}


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


def produce(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    producer = Producer(producer_config(bootstrap, "evolution-test"))
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def read_values(bootstrap: str, topic: str) -> list[bytes]:
    reader = CommittedReader(bootstrap, topic)
    try:
        return [m.value() or b"" for m in reader.read_to_end()]
    finally:
        reader.close()


# --- the history, record by record ---------------------------------------------------------------


def test_events_written_with_v1_are_read_after_a_compatible_change_to_v2(
    kafka: KafkaCluster, run_id: str, tmp_path: Path
) -> None:
    namespace, topic = f"tests.evolution.r{run_id}", f"evo.{run_id}.parcels"
    v1_definition = record_schema(
        namespace, "Parcel", string("id"), {"name": "weight_g", "type": "long"}
    )
    v2_definition = {
        **v1_definition,
        "fields": [
            *v1_definition["fields"],
            {"name": "fragile", "type": "boolean", "default": False},
            {"name": "label", "type": ["null", "string"], "default": None},
        ],
    }
    kafka.create_topic(topic)

    # The old service: v1 is its current schema; it records it, then publishes (as Publisher does).
    old_service = SchemaCatalog()
    v1 = old_service.add(parse(v1_definition))
    SchemaHistory(kafka.bootstrap, catalog=old_service).record(topic, v1)
    for number in range(3):
        datum = {"id": f"p-{number}", "weight_g": 100 + number}
        produce(kafka.bootstrap, topic, datum["id"], old_service.encode(v1, datum))

    # The new reader: v2 is its current schema, from a schemas folder.
    folder = tmp_path / "schemas"
    folder.mkdir()
    (folder / "Parcel.avsc").write_text(json.dumps(v2_definition))
    reader = SchemaCatalog()
    (v2,) = reader.load_directory(folder)
    values = read_values(kafka.bootstrap, topic)
    assert len(values) == 3
    with pytest.raises(DecodeError) as unknown:
        decode(reader, values[0])
    assert unknown.value.reason == "unknown-schema"

    history = SchemaHistory(kafka.bootstrap, catalog=reader)
    assert history.load() >= 1
    assert [s.fingerprint for s in history.recorded(topic)] == [v1.fingerprint]
    assert history.check(topic, [v2]) == []
    decoded = [decode(reader, value) for value in values]
    assert [schema for schema, _ in decoded] == [v2, v2, v2]
    assert [datum for _, datum in decoded] == [
        {"id": f"p-{n}", "weight_g": 100 + n, "fragile": False, "label": None} for n in range(3)
    ]


def test_a_writer_recorded_after_loading_is_found_when_a_record_needs_it(
    kafka: KafkaCluster, run_id: str
) -> None:
    namespace, topic = f"tests.evolution.r{run_id}", f"evo.{run_id}.late"
    v1 = parse(record_schema(namespace, "Late", string("id")))
    v2 = parse(
        record_schema(namespace, "Late", string("id"), {"name": "n", "type": "long", "default": 7})
    )
    reader = SchemaCatalog()
    reader.add(v2)
    history = SchemaHistory(kafka.bootstrap, catalog=reader)
    history.load()
    history.serve_unknown()

    SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog()).record(topic, v1)  # another process
    assert decode(reader, v1.header + b"\x04ab") == (v2, {"id": "ab", "n": 7})  # read late
    assert [s.fingerprint for s in history.recorded(topic)] == [v1.fingerprint]

    unknown = b"\xc3\x01" + bytes(8)
    with pytest.raises(DecodeError, match="unknown-schema"):
        decode(reader, unknown + b"\x00")
    asked = time.monotonic()
    with pytest.raises(DecodeError, match="unknown-schema"):
        decode(reader, unknown + b"\x00")  # not asked again so soon: no history read
    assert time.monotonic() - asked < 0.05


def test_a_schema_is_recorded_once_and_can_be_forgotten(kafka: KafkaCluster, run_id: str) -> None:
    topic = f"evo.{run_id}.once"
    schema = parse(record_schema(f"tests.evolution.r{run_id}", "Once", string("id")))
    writer = SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog())
    assert writer.record(topic, schema) is True
    assert writer.record(topic, schema) is False
    # Another history object in this process knows it was recorded here.
    assert SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog()).record(topic, schema) is False

    later = SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog())
    later.load()
    assert [s.fingerprint for s in later.recorded(topic)] == [schema.fingerprint]

    writer.forget(topic, schema.fingerprint)
    after = SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog())
    after.load()
    assert after.recorded(topic) == []
    assert writer.record(topic, schema) is True  # recording it again after forgetting works


def test_the_start_check_refuses_a_change_old_records_cannot_take(
    kafka: KafkaCluster, run_id: str
) -> None:
    namespace, topic = f"tests.evolution.r{run_id}", f"evo.{run_id}.orders"
    v1 = parse(
        record_schema(
            namespace, "OrderPlaced", string("order_id"), {"name": "amount_cents", "type": "long"}
        )
    )
    v2 = parse(
        record_schema(
            namespace,
            "OrderPlaced",
            string("order_id"),
            string("amount_cents"),
            string("coupon"),
        )
    )
    SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog()).record(topic, v1)

    history = SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog())
    history.load()
    with pytest.raises(IncompatibleSchemaError) as refused:
        refuse_incompatible(history, {topic: [v2]})
    message = str(refused.value)
    assert f"topic {topic}, schema {namespace}.OrderPlaced" in message
    assert "OrderPlaced.amount_cents: writer long cannot be read as string" in message
    assert "OrderPlaced.coupon: reader field has no default and the writer lacks it" in message
    refuse_incompatible(history, {topic: [v1], f"evo.{run_id}.other": [v2]})


def test_a_worker_records_its_reply_schema_for_the_reply_topic(
    kafka: KafkaCluster, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"tests.evolution.r{run_id}"
    commands, replies = f"evo.{run_id}.commands", f"evo.{run_id}.inbox"
    folder = tmp_path / "schemas"
    folder.mkdir()
    for name in ("Ping", "Pong"):
        definition = record_schema(namespace, name, string("id"))
        (folder / f"{name}.avsc").write_text(json.dumps(definition))
    monkeypatch.setenv("SAGALOG_SCHEMA_PATH", str(folder))
    monkeypatch.setattr(CATALOG, "fallback", CATALOG.fallback)  # run() installs one

    class Ping(Command, schema=f"{namespace}.Ping", topic=commands):
        id: str

    class Pong(Event, schema=f"{namespace}.Pong"):
        id: str

    worker = Worker(f"evo-{run_id}")

    @worker.handles(Ping)
    def pong(command: Ping, context: CommandContext) -> Pong:
        return Pong(id=command.id)

    kafka.create_topic(replies)
    serving = threading.Thread(target=worker.run, args=(kafka.bootstrap,), daemon=True)
    serving.start()
    try:
        producer = Producer(producer_config(kafka.bootstrap, "evolution-test"))
        producer.produce(
            commands,
            key=b"i-1",
            value=Ping(id="i-1").encode(),
            headers=command_headers("evo/i-1/ping/1", replies, "i-1", "evo"),
        )
        assert producer.flush(30) == 0
        reader = CommittedReader(kafka.bootstrap, replies)
        try:
            deadline = time.monotonic() + 60
            received: list[bytes] = []
            while not received and time.monotonic() < deadline:
                received += [m.value() or b"" for m in reader.poll(0.5)]
        finally:
            reader.close()
        assert [decode_record(value) for value in received] == [Pong(id="i-1")]
    finally:
        worker.stop()
        serving.join(30)

    history = SchemaHistory(kafka.bootstrap, catalog=SchemaCatalog())
    history.load()
    assert [s.fingerprint for s in history.recorded(replies)] == [Pong.__avro__.fingerprint]


# --- end to end: a saga's processor across a schema change --------------------------------------

SAGA_MODULE = '''
"""A ticket saga for tests/integration/test_schema_evolution.py; EVO_VERSION picks the schemas."""

from __future__ import annotations

import os
import sys

from sagas import Event, Publisher, Saga, State, Wait

NS = "tests.evolution.rRUN_ID"
TOPIC = "evo.RUN_ID.tickets"
VERSION = os.environ.get("EVO_VERSION", "1")


class Opened(Event, schema=f"{NS}.Opened", topic=TOPIC, key="ticket_id"):
    ticket_id: str
    title: str
    if VERSION == "2":
        priority: int = 3
    elif VERSION == "bad":
        priority: int


class Closed(Event, schema=f"{NS}.Closed", topic=TOPIC, key="ticket_id"):
    ticket_id: str


class Ticket(State, schema=f"{NS}.Ticket"):
    ticket_id: str
    title: str
    if VERSION == "2":
        priority: int = 3


class Tickets(Saga, name="evo_RUN_ID"):
    start = Opened
    state = Ticket

    @staticmethod
    def begin(event: Opened) -> Ticket:
        return Ticket(ticket_id=event.ticket_id, title=event.title)

    closed = Wait(success=Closed, timeout=3600)


if __name__ == "__main__":
    kind, ticket = sys.argv[1:3]
    with Publisher() as publisher:
        if kind == "open":
            publisher.publish(Opened(ticket_id=ticket, title=f"about {ticket}"))
        else:
            publisher.publish(Closed(ticket_id=ticket))
'''

TICKET_FIELDS = [string("ticket_id"), string("title")]
PRIORITY_DEFAULT = {"name": "priority", "type": "int", "default": 3}
PRIORITY_REQUIRED = {"name": "priority", "type": "int"}


class TicketApp:
    """The ticket saga's module and schemas in a folder of their own, and its processes."""

    def __init__(self, kafka: KafkaCluster, run_id: str, root: Path) -> None:
        self.kafka, self.run_id, self.root = kafka, run_id, root
        self.namespace = f"tests.evolution.r{run_id}"
        self.module = f"evo_tickets_{run_id}"
        self.topic = f"evo.{run_id}.tickets"
        self.saga = f"evo_{run_id}"
        self.app = root / "app"
        (self.app / "schemas").mkdir(parents=True)
        (self.app / f"{self.module}.py").write_text(SAGA_MODULE.replace("RUN_ID", run_id))
        self.processes: list[LocalProcess] = []

    def definitions(self, version: str) -> dict[str, dict[str, Any]]:
        opened = [*TICKET_FIELDS]
        ticket = [*TICKET_FIELDS]
        if version == "2":
            opened.append(PRIORITY_DEFAULT)
            ticket.append(PRIORITY_DEFAULT)
        elif version == "bad":
            opened.append(PRIORITY_REQUIRED)
        return {
            "Opened": record_schema(self.namespace, "Opened", *opened),
            "Closed": record_schema(self.namespace, "Closed", string("ticket_id")),
            "Ticket": record_schema(self.namespace, "Ticket", *ticket),
        }

    def use(self, version: str) -> None:
        """Make ``version`` the schemas in the app's ``schemas/`` folder (a schema change)."""
        self.version = version
        for name, definition in self.definitions(version).items():
            (self.app / "schemas" / f"{name}.avsc").write_text(json.dumps(definition, indent=1))

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "PYTHONPATH": os.pathsep.join([str(self.app), str(REPO_ROOT)]),
            "EVO_VERSION": self.version,
            "SAGALOG_STATE_DIR": str(self.root / "state"),
        }

    def processor(self) -> LocalProcess:
        log = self.root / f"processor-{len(self.processes)}.log"
        process = LocalProcess(["run", f"{self.module}:Tickets"], log, env=self.env())
        self.processes.append(process.start())
        return process

    def publish(self, kind: str, ticket: str) -> None:
        """Publish from a separate process that runs the current version (a service)."""
        done = subprocess.run(
            [sys.executable, "-m", self.module, kind, ticket],
            env=os.environ | self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def stop_all(self) -> None:
        stop_all(self.processes)


@pytest.fixture
def tickets(kafka: KafkaCluster, run_id: str, tmp_path: Path) -> Iterator[TicketApp]:
    app = TicketApp(kafka, run_id, tmp_path)
    try:
        yield app
    finally:
        app.stop_all()


def ready(process: LocalProcess) -> None:
    wait_for_log(process, lambda text: "restored partition" in text, 90, "its partitions")


def wait_for_entries(
    reader: CommittedReader, ticket: str, kind: Kind, entries: list[JournalEntry], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.instance == ticket and e.kind == kind.value for e in entries):
        if time.monotonic() > deadline:
            seen = [(e.instance, e.kind) for e in entries]
            raise AssertionError(f"no {kind.value} for {ticket} in {timeout:.0f} s; saw {seen}")
        entries += [JournalEntry.decode(m.value() or b"") for m in reader.poll(0.5)]


def test_a_saga_started_under_v1_completes_after_event_and_state_gain_fields(
    tickets: TicketApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    tickets.use("1")
    first = tickets.processor()
    ready(first)
    journal = CommittedReader(tickets.kafka.bootstrap, f"{tickets.saga}.journal")
    entries: list[JournalEntry] = []
    try:
        tickets.publish("open", "t-1")
        wait_for_entries(journal, "t-1", Kind.WAIT_STARTED, entries, 60)
        assert first.stop() == 0, log_text(first)

        # v2: Opened and the saga's state each gain a field with a default.
        tickets.use("2")
        second = tickets.processor()
        ready(second)
        assert "schema history: read" in log_text(second)
        tickets.publish("close", "t-1")  # t-1's snapshot holds its state as written under v1
        tickets.publish("open", "t-2")
        tickets.publish("close", "t-2")
        wait_for_entries(journal, "t-1", Kind.SAGA_COMPLETED, entries, 60)
        wait_for_entries(journal, "t-2", Kind.SAGA_COMPLETED, entries, 60)
        assert "dead letter" not in log_text(second)
    finally:
        journal.close()

    # This process, on v2, reads the v1 event journaled when t-1 started, and its snapshots.
    monkeypatch.setenv("EVO_VERSION", "2")
    monkeypatch.syspath_prepend(str(tickets.app))
    saga_module = importlib.import_module(tickets.module)
    SchemaHistory(tickets.kafka.bootstrap).load()
    started = next(e for e in entries if e.instance == "t-1" and e.kind == Kind.SAGA_STARTED)
    assert decode_record(started.record) == saga_module.Opened("t-1", "about t-1", priority=3)
    snapshots = [
        decode_snapshot(value)
        for value in read_values(tickets.kafka.bootstrap, f"{tickets.saga}.snapshots")
    ]
    first_state = next(s for s in snapshots if s.instance_id == "t-1")  # written under v1
    assert first_state.data == saga_module.Ticket("t-1", "about t-1", priority=3)
    assert {s.status.value for s in snapshots if s.instance_id == "t-1"} >= {
        "running",
        "completed",
    }
    # Both processors recorded the state schema they wrote.
    history = SchemaHistory(tickets.kafka.bootstrap, catalog=SchemaCatalog())
    history.load()
    recorded = {
        s.fingerprint
        for s in history.recorded(f"{tickets.saga}.snapshots")
        if "Ticket" in s.full_name
    }
    v1_state = parse(tickets.definitions("1")["Ticket"]).fingerprint
    assert recorded == {v1_state, CATALOG.current(f"{tickets.namespace}.Ticket").fingerprint}


def test_a_processor_refuses_to_start_when_a_source_event_gains_a_required_field(
    tickets: TicketApp,
) -> None:
    # v1 of Opened was recorded for the source topic (as a service publishing it would).
    v1 = parse(tickets.definitions("1")["Opened"])
    SchemaHistory(tickets.kafka.bootstrap, catalog=SchemaCatalog()).record(tickets.topic, v1)

    tickets.use("bad")  # Opened gains ``priority`` with no default
    refused = tickets.processor()
    assert refused.popen is not None
    code = refused.popen.wait(90)
    output = log_text(refused)
    assert code != 0, output
    assert f"topic {tickets.topic}, schema {tickets.namespace}.Opened" in output
    assert "Opened.priority: reader field has no default and the writer lacks it" in output
    assert "Traceback" not in output  # a message, not a crash

    # Refused before recording anything it would write.
    history = SchemaHistory(tickets.kafka.bootstrap, catalog=SchemaCatalog())
    history.load()
    assert history.recorded(f"{tickets.saga}.snapshots") == []
    assert [s.fingerprint for s in history.recorded(tickets.topic)] == [v1.fingerprint]


# --- a foreign writer registered with `sagas schemas register` ----------------------------------


def sagas(app: TicketApp, *args: str) -> subprocess.CompletedProcess[str]:
    """``sagas ARGS`` from the app's folder, as a person registering a schema would run it."""
    return subprocess.run(
        [sys.executable, "-m", "sagas", *args],
        cwd=app.app,
        env=os.environ | app.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_registered_foreign_writer_is_read_by_a_running_processor(
    tickets: TicketApp, tmp_path: Path
) -> None:
    tickets.use("1")
    v1 = tickets.definitions("1")
    v2_definition = {
        **v1["Opened"],
        "fields": [
            *v1["Opened"]["fields"],
            {"name": "channel", "type": ["null", "string"], "default": None},
        ],
    }
    v3_definition = {
        **v1["Opened"],
        "fields": [f for f in v1["Opened"]["fields"] if f["name"] != "title"],
    }
    v2, closed = parse(v2_definition), parse(v1["Closed"])
    (tmp_path / "v2.avsc").write_text(json.dumps(v2_definition))
    (tmp_path / "v3.avsc").write_text(json.dumps(v3_definition))
    bootstrap = tickets.kafka.bootstrap

    def opened(ticket: str) -> None:  # the foreign producer: v2, single-object encoding
        datum = {"ticket_id": ticket, "title": f"about {ticket}", "channel": "java"}
        produce(bootstrap, tickets.topic, ticket, encode(v2, datum))

    def close(ticket: str) -> None:
        produce(bootstrap, tickets.topic, ticket, encode(closed, {"ticket_id": ticket}))

    processor = tickets.processor()
    ready(processor)
    journal = CommittedReader(bootstrap, f"{tickets.saga}.journal")
    dlq = CommittedReader(bootstrap, f"{tickets.saga}.dlq")
    entries: list[JournalEntry] = []
    try:
        # Unregistered: dead-lettered as unknown-schema.
        opened("t-1")
        letters = []
        for _ in range(120):
            letters += dlq.poll(0.5)
            if letters:
                break
        assert [dict(m.headers() or [])[DLQ_REASON] for m in letters] == [b"unknown-schema"]

        registered = sagas(
            tickets, "schemas", "register", str(tmp_path / "v2.avsc"), "--topic", tickets.topic
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert f"recorded {tickets.namespace}.Opened for {tickets.topic}" in registered.stdout
        assert f"fingerprint {v2.fingerprint.hex()}" in registered.stdout
        assert f"header      c301{v2.fingerprint.hex()}" in registered.stdout

        # The processor, still running, reads v2 from the next record on.
        for ticket in ("t-2", "t-3"):
            opened(ticket)
            close(ticket)
        for ticket in ("t-2", "t-3"):
            wait_for_entries(journal, ticket, Kind.SAGA_COMPLETED, entries, 60)
        assert dlq.poll(1.0) == []
        assert processor.running, log_text(processor)
    finally:
        journal.close()
        dlq.close()

    # A v3 the readers cannot read is refused, naming the field.
    refused = sagas(
        tickets, "schemas", "register", str(tmp_path / "v3.avsc"), "--topic", tickets.topic
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "Opened.title: reader field has no default and the writer lacks it" in refused.stderr

    listed = sagas(tickets, "schemas", "list", tickets.topic, "--json")
    assert listed.returncode == 0, listed.stderr
    entries_json = json.loads(listed.stdout)
    foreign = [e for e in entries_json if e["fingerprint"] == v2.fingerprint.hex()]
    assert [(e["full_name"], e["foreign"]) for e in foreign] == [
        (f"{tickets.namespace}.Opened", True)
    ]
    assert foreign[0]["recorded_by"].startswith("sagas schemas register by ")
    table = sagas(tickets, "schemas", "list", tickets.topic)
    assert v2.fingerprint.hex() in table.stdout

    forgot = sagas(tickets, "schemas", "forget", tickets.topic, v2.fingerprint.hex())
    assert forgot.returncode == 0, forgot.stderr
    after = json.loads(sagas(tickets, "schemas", "list", tickets.topic, "--json").stdout)
    assert v2.fingerprint.hex() not in [e["fingerprint"] for e in after]
    # v1, recorded as a Python publisher of the app would, is current in the app's schemas/
    # folder: forgetting it is refused (Sagalog writes and reads it).
    current = parse(v1["Opened"])
    SchemaHistory(bootstrap, catalog=SchemaCatalog()).record(tickets.topic, current)
    kept = sagas(tickets, "schemas", "forget", tickets.topic, current.fingerprint.hex())
    assert kept.returncode == 1
    assert f"{current.fingerprint.hex()} is the current schema of" in kept.stderr
