"""The byte-level examples of docs/wire-contract.md, computed with Sagalog's own code.

    .venv/bin/python tools/wire_examples.py            # print every example
    .venv/bin/python tools/wire_examples.py --write    # put them into docs/wire-contract.md
    .venv/bin/python tools/wire_examples.py --check    # exit 1 if the document's differ

The document shows each example as a fenced ``text`` block right after a marker line
``<!-- wire-example: NAME -->``; ``--write`` replaces those blocks, ``--check`` compares them
(tests/unit/test_wire_contract.py runs the check). Every example goes through the code paths the
engine uses: ``Record.encode`` and ``SchemaCatalog`` for the encodings, ``decide`` for commands
and journal entries, ``routing`` for headers, ``Worker.handle`` for a reply, ``signing`` for
signatures, ``SchemaHistory.record`` (with a producer that only captures) for the history
record. Nothing here connects to Kafka, and every input is fixed, so the output never changes
unless the code does. The instance is ``o-1001``, the time 2026-01-01T00:00:00Z, and the
signing key ``k1`` is 32 bytes anyone can see below: never use it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from unittest import mock

import fastavro
from confluent_kafka import Message
from fastavro.schema import to_parsing_canonical_form

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from examples.order_fulfillment.messages import (  # noqa: E402
    MakePayment,
    OrderPlaced,
    PaymentCompleted,
)
from examples.order_fulfillment.saga import OrderFulfillment  # noqa: E402
from sagas.idempotency import HandledCommand  # noqa: E402
from sagas.worker import CommandContext, Outgoing, TaskError, Worker  # noqa: E402
from stream_processors.codecs.avro import AvroSchema, SchemaCatalog, decode  # noqa: E402
from stream_processors.codecs.records import CATALOG  # noqa: E402
from stream_processors.codecs.signing import (  # noqa: E402
    Keyring,
    Purpose,
    last_header,
    signed,
    signed_bytes,
    verify,
)
from stream_processors.core.decide import Input, command_id, decide, idempotency_key  # noqa: E402
from stream_processors.core.instance import encode_snapshot  # noqa: E402
from stream_processors.core.model import CommandFailed, OperatorAction  # noqa: E402
from stream_processors.core.partitioner import murmur2, partition_for  # noqa: E402
from stream_processors.core.tasks import (  # noqa: E402
    TaskCommand,
    TaskFailed,
    TaskSucceeded,
    json_text,
    task_topic,
)
from stream_processors.engine import routing, schema_history  # noqa: E402
from stream_processors.kafka.topics import SagaTopics  # noqa: E402

DOCUMENT = ROOT / "docs" / "wire-contract.md"
#: The marker line before each example's fenced block in the document.
MARKER = re.compile(
    r"^<!-- wire-example: ([a-z0-9-]+) -->\n```text\n(.*?)^```$", re.MULTILINE | re.DOTALL
)

INSTANCE = "o-1001"
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PARTITIONS = 8
SECRET = bytes(range(32))  # 00 01 02 ... 1f: an example, never a key to use
KEYRING = Keyring.parse(f"k1:{base64.b64encode(SECRET).decode()}")
SCHEMA_ID = 42  # what an example schema registry answers

PLACED = OrderPlaced(
    order_id=INSTANCE,
    customer_id="c-7",
    amount_cents=2599,
    card_token="tok_visa",
    postcode="75001",
)
DEFINITION = OrderFulfillment.definition
TOPICS = SagaTopics.for_saga(DEFINITION)

Headers = Sequence[tuple[str, str | bytes | None]]


# -- presentation ------------------------------------------------------------------------------


def hexdump(data: bytes) -> str:
    """16 bytes a line: offset, hex, printable ASCII."""
    lines = []
    for start in range(0, len(data), 16):
        chunk = data[start : start + 16]
        cells = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:04x}  {cells:<47}  |{text}|")
    return "\n".join(lines)


def spaced(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def text(headers: Headers, name: str) -> str:
    """The last value of header ``name``, as text (as Sagalog reads a header)."""
    value = last_header(headers, name)
    assert value is not None, name
    return value.decode()


def show_headers(headers: Headers) -> str:
    """One line per header, in order: name, then its value as the UTF-8 text it is."""
    width = max((len(name) for name, _ in headers), default=0)
    lines = []
    for name, value in headers:
        raw = value.encode() if isinstance(value, str) else value
        lines.append(f"  {name:<{width}}  {'(null)' if raw is None else raw.decode()}")
    return "\n".join(lines)


def show_record(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    partition: int | None = None,
    value_note: str | None = None,
) -> str:
    if partition is None and key is not None:
        partition = partition_for(key, PARTITIONS)
    where = "" if partition is None else f"   partition {partition} of {PARTITIONS}"
    lines = [
        f"topic    {topic}{where}",
        f"key      {'(null)' if key is None else key.decode()!r}"
        + (f"   ({spaced(key)})" if key is not None and len(key) <= 16 else ""),
        "headers",
        show_headers(headers) if headers else "  (none)",
        f"value    {value_note}" if value_note else f"value    {len(value or b'')} bytes:",
    ]
    if value and not value_note:
        lines.append(hexdump(value))
    return "\n".join(lines)


class _Message:
    """A consumed record, as far as the code that reads one looks (``confluent_kafka.Message``)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> None:
        self._fields = (topic, partition, offset, key, value, list(headers))

    def topic(self) -> str:
        return self._fields[0]

    def partition(self) -> int:
        return self._fields[1]

    def offset(self) -> int:
        return self._fields[2]

    def key(self) -> bytes | None:
        return self._fields[3]

    def value(self) -> bytes | None:
        return self._fields[4]

    def headers(self) -> list[tuple[str, str | bytes | None]]:
        return self._fields[5]

    def received(self) -> Message:
        """This record, typed as what the client returns."""
        return cast(Message, self)


# -- Avro ------------------------------------------------------------------------------------


def _field_bytes(schema: Any, value: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, value)
    return out.getvalue()


def _what(avro_type: Any, value: Any, encoded: bytes) -> str:
    """What the bytes of one field say: a string, an int or long, or a ``["null", x]`` union."""
    if isinstance(avro_type, list):  # the branch's index as a zigzag varint, then the branch
        branch = 0 if value is None else 1
        said = "null" if value is None else _what(avro_type[branch], value, encoded[1:])
        return f"union branch {branch} (zigzag varint {encoded[0]:02x}), then {said}"
    if avro_type == "string":
        size = len(value.encode())
        prefix = encoded[: len(encoded) - size]
        return f"length {size} (zigzag varint {spaced(prefix)}), then {value!r}"
    return f"{value} as a zigzag varint"


def annotated_body(schema: AvroSchema, datum: Mapping[str, Any]) -> tuple[str, bytes]:
    """Each field of a flat record of primitives (and unions with null): its bytes (the first
    9 of a longer field) and what they say."""
    lines, body = [], b""
    fields = schema.definition["fields"]
    kinds = ["|".join(f["type"]) if isinstance(f["type"], list) else f["type"] for f in fields]
    width = max(13, *(len(field["name"]) + 1 for field in fields))
    kind_width = max(7, *(len(kind) for kind in kinds))
    for field, kind in zip(fields, kinds, strict=True):
        value, avro_type = datum[field["name"]], field["type"]
        encoded = _field_bytes(avro_type, value)
        body += encoded
        shown = spaced(encoded) if len(encoded) <= 10 else f"{spaced(encoded[:9])} ..."
        what = _what(avro_type, value, encoded)
        lines.append(f"  {field['name']:<{width}} {kind:<{kind_width}} {shown:<30} {what}")
    return "\n".join(lines), body


def example_partition() -> str:
    lines = ["key          bytes                   murmur2 (signed)  & 0x7fffffff  % 8"]
    for key in (INSTANCE, "o-1002", "order-42"):
        data = key.encode()
        h = murmur2(data)
        lines.append(
            f"{key!r:<12} {spaced(data):<23} {h:>16}  {h & 0x7FFFFFFF:>12}  "
            f"{partition_for(data, PARTITIONS):>3}"
        )
    return "\n".join(lines)


def example_canonical_form() -> str:
    return str(to_parsing_canonical_form(OrderPlaced.__avro__.parsed))


def example_fingerprint() -> str:
    schema = OrderPlaced.__avro__
    canonical = to_parsing_canonical_form(schema.parsed).encode()
    wire = schema.fingerprint
    value = int.from_bytes(wire, "little")
    return "\n".join(
        [
            f"canonical form      {len(canonical)} bytes of UTF-8 (above)",
            f"CRC-64-AVRO         0x{value:016x}   (as an unsigned 64-bit number)",
            f"fingerprint bytes   {spaced(wire)}   (that number little-endian: the wire order)",
            f"as hex text         {wire.hex()}   (how logs, DLQ details and _sagalog.schemas keys"
            " write it)",
        ]
    )


def example_single_object() -> str:
    schema = OrderPlaced.__avro__
    value = PLACED.encode()
    lines, body = annotated_body(schema, PLACED.to_avro())
    assert value == schema.header + body
    return "\n".join(
        [
            f"OrderPlaced{PLACED.to_avro()}",
            "",
            hexdump(value),
            "",
            "  marker        c3 01",
            f"  fingerprint   {spaced(schema.fingerprint)}",
            "  body, the fields in schema order:",
            lines,
            f"  {len(value)} bytes = 2 + 8 + {len(body)}",
        ]
    )


class _Registry:
    """A schema registry that gives every schema the same id (the encoding is the point)."""

    def register(self, schema: AvroSchema) -> int:
        return SCHEMA_ID

    def definition(self, schema_id: int) -> Mapping[str, Any]:
        return OrderPlaced.__avro__.definition


def example_confluent() -> str:
    catalog = SchemaCatalog(registry=_Registry())
    schema = OrderPlaced.__avro__
    catalog.add(schema)
    value = catalog.encode(schema, PLACED.to_avro())
    written, start = catalog.writer_of(value)
    assert (written.fingerprint, start) == (schema.fingerprint, 5)
    return "\n".join(
        [
            f"the same OrderPlaced, its schema registered as id {SCHEMA_ID}:",
            "",
            hexdump(value),
            "",
            "  magic         00",
            f"  schema id     {spaced(value[1:5])}   ({SCHEMA_ID}, 4 bytes big-endian)",
            "  body          the same bytes as in single-object encoding",
        ]
    )


# -- commands, replies, signatures -------------------------------------------------------------


def _started() -> Any:
    return decide(DEFINITION, None, Input(PLACED, PLACED.encode()), NOW_MS)


def _command() -> tuple[str, bytes, bytes, Headers]:
    """The first command of the saga, with its headers, signed: as ``SagaProcessor.emit``."""
    command = _started().commands[0]
    key = command.key.encode()
    headers = routing.command_headers(command.command_id, TOPICS.inbox, command.key, TOPICS.saga)
    headers = signed(KEYRING, Purpose.COMMAND, command.topic, key, command.value, headers)
    return command.topic, key, command.value, headers


def example_command_ids() -> str:
    saga, lines = TOPICS.saga, []
    for step, attempt in (("payment", 1), ("payment", 2), ("payment.compensation", 1)):
        cid = command_id(saga, INSTANCE, step, attempt)
        key, number = idempotency_key(cid)
        lines.append(f"{cid:<48} key {key:<46} attempt {number}")
    return "\n".join(lines)


def example_command() -> str:
    topic, key, value, headers = _command()
    return show_record(topic, key, value, headers)


def _worker() -> Worker:
    worker = Worker("payments", signing=KEYRING)

    @worker.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        return PaymentCompleted(order_id=command.order_id, payment_id="pay-9")

    return worker


def _reply() -> tuple[str, bytes | None, bytes | None, Headers]:
    topic, key, value, headers = _command()
    answer = _worker().handle(_Message(topic, 3, 17, key, value, headers).received())
    assert not answer.dead, answer
    return answer.outgoing


def example_reply() -> str:
    topic, key, value, headers = _reply()
    return show_record(topic, key, value, headers)


def example_command_failed() -> str:
    failed = CommandFailed(error="TimeoutError", message="bank did not answer in 5 s")
    return f"CommandFailed{failed.to_avro()}\n\n{hexdump(failed.encode())}"


def _annotated_signed(data: bytes, purpose: Purpose) -> str:
    """The signed bytes cut into their parts: 4-byte big-endian lengths, presence bytes."""
    shape = ["field"] * 4 + ["optional"] * 2 + ["field", "optional"] * len(purpose.headers)
    lines, at = [], 0
    for kind in shape:
        if kind == "optional":
            present = data[at]
            lines.append(f"  {at:4}  {present:02x}{'':<24}{'present:' if present else 'absent'}")
            at += 1
            if not present:
                continue
        (size,) = struct.unpack(">I", data[at : at + 4])
        content = data[at + 4 : at + 4 + size]
        shown = repr(content.decode()) if content.isascii() else f"<{size} bytes of Avro>"
        lines.append(f"  {at:4}  {spaced(data[at : at + 4])}  {size:>5} bytes  {shown}")
        at += 4 + size
    assert at == len(data)
    return "\n".join(lines)


def example_signature() -> str:
    topic, key, value, headers = _reply()
    unsigned = [(n, v) for n, v in headers if n != "sagalog.signature"]
    data = signed_bytes(Purpose.INBOX, "k1", topic, key, value, unsigned)
    mac = hmac.new(SECRET, data, hashlib.sha256).digest()
    header = text(headers, "sagalog.signature")
    assert header == f"k1:{base64.b64encode(mac).decode()}"
    assert verify(KEYRING, Purpose.INBOX, topic, key, value, headers) is None
    return "\n".join(
        [
            f"key k1, secret {spaced(SECRET[:8])} ... {spaced(SECRET[-4:])} (32 bytes 00..1f)",
            f"signed bytes of the reply above (purpose inbox, topic {topic}), {len(data)} bytes:",
            "",
            hexdump(data),
            "",
            "  offset",
            _annotated_signed(data, Purpose.INBOX),
            "",
            f"HMAC-SHA256  {mac.hex()}",
            f"header       sagalog.signature: {header}",
        ]
    )


def example_command_signature() -> str:
    topic, key, value, headers = _command()
    unsigned = [(n, v) for n, v in headers if n != "sagalog.signature"]
    data = signed_bytes(Purpose.COMMAND, "k1", topic, key, value, unsigned)
    assert verify(KEYRING, Purpose.COMMAND, topic, key, value, headers) is None
    return "\n".join(
        [
            f"signed bytes of the command above (purpose command, topic {topic}):",
            "",
            "  offset",
            _annotated_signed(data, Purpose.COMMAND),
            "",
            f"header  sagalog.signature: {text(headers, 'sagalog.signature')}",
        ]
    )


def example_handled() -> str:
    topic, _, _, headers = _command()
    reply_to, reply_key, reply, _ = _reply()
    assert reply_key is not None and reply is not None
    handled = HandledCommand(
        text(headers, "sagalog.command_id"),
        reply_to,
        reply_key.decode(),
        reply,
        topic,
        partition=3,
    )
    record_key, record_value, headers = handled.encode()
    return "\n".join(
        [
            f"the command was read from {topic} partition 3; the group is sagalog.worker.payments",
            "",
            show_record(
                "sagalog.worker.payments.handled",
                record_key,
                record_value,
                headers,
                partition=3 % PARTITIONS,
            ),
        ]
    )


# -- tasks for any language ----------------------------------------------------------------------

#: The seed's onboarding: its first Task, CreateUser, runs AuthService's createUser.
TASK = TaskCommand(
    service="AuthService",
    action="createUser",
    input=json_text({"email": "ada@example.com", "name": "Ada"}),
    workflow="user_onboarding",
    execution="u-1001",
    state="CreateUser",
    attempt=1,
    timeout_seconds=30,
)


def _task_record(task: TaskCommand = TASK) -> tuple[str, bytes, bytes, Headers]:
    """The task as the engine sends it: to the service's task topic, with ``command_headers``."""
    cid = command_id(task.workflow, task.execution, task.state, task.attempt)
    inbox = f"{task.workflow}.inbox"
    headers = routing.command_headers(cid, inbox, task.execution, task.workflow)
    return task_topic(task.service), task.execution.encode(), task.encode(), headers


def _task_reply(task: TaskCommand) -> Outgoing:
    """What the worker answers ``task``, read from partition 0 at offset 5 of its topic."""
    topic, key, value, headers = _task_record(task)
    answer = _auth_worker().handle(_Message(topic, 0, 5, key, value, headers).received())
    assert not answer.dead, answer
    return answer.outgoing


def _auth_worker() -> Worker:
    auth = Worker("auth", service="AuthService", signing=None)

    @auth.action("createUser")
    def create_user(input: Any, context: CommandContext) -> Any:
        if input["email"].startswith("taken"):
            raise TaskError("AuthServiceError", f"{input['email']} is taken")
        return {"userId": "user_123"}

    return auth


def _annotated(record: TaskCommand | TaskFailed) -> str:
    lines, body = annotated_body(record.__avro__, record.to_avro())
    value = record.encode()
    assert value == record.__avro__.header + body
    return "\n".join(
        [
            f"  marker, fingerprint  c3 01, {spaced(record.__avro__.fingerprint)}",
            "  body, the fields in schema order:",
            lines,
        ]
    )


def example_task_command() -> str:
    topic, key, value, headers = _task_record()
    return "\n".join([show_record(topic, key, value, headers), "", _annotated(TASK)])


def example_task_succeeded() -> str:
    topic, key, value, headers = _task_reply(TASK)
    assert TaskSucceeded.decode(value or b"") == TaskSucceeded(output='{"userId":"user_123"}')
    return show_record(topic, key, value, headers)


def example_task_failed() -> str:
    taken = replace(TASK, input=json_text({"email": "taken@example.com", "name": "Bo"}))
    failed = TaskFailed.decode(_task_reply(taken)[2] or b"")
    return "\n".join(
        [f"TaskFailed{failed.to_avro()}", "", hexdump(failed.encode()), "", _annotated(failed)]
    )


# -- routed events, operator actions, dead letters -------------------------------------------


def example_routed() -> str:
    key, value = PLACED.key(), PLACED.encode()
    assert key is not None
    source = _Message(
        "orders.events",
        5,
        1234,
        b"any key: routing reads the order_id field",
        value,
        [
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("sagalog.command_id", b"dropped: sagalog.* headers never pass"),
        ],
    )
    headers = signed(
        KEYRING,
        Purpose.INBOX,
        TOPICS.inbox,
        key.encode(),
        value,
        routing.origin_headers(source.received()),
    )
    note = "the source record's value, byte for byte"
    return show_record(TOPICS.inbox, key.encode(), value, headers, value_note=note)


def example_operator_action() -> str:
    action = OperatorAction(action="retry", by="alice", reason="bank is back")
    value, key = action.encode(), INSTANCE.encode()
    headers = signed(
        KEYRING,
        Purpose.INBOX,
        TOPICS.inbox,
        key,
        value,
        [
            (routing.NOTE, b"retry by alice: bank is back"),
            (routing.OPERATOR_ID, b"5f0c6a52-8e2b-4d1a-9c3e-7b1f2a6d4e90"),
        ],
    )
    return show_record(TOPICS.inbox, key, value, headers)


def example_dead_letter() -> str:
    value = b"\xc3\x01" + bytes(8) + b"\x00"
    reply = _Message(
        TOPICS.inbox,
        partition_for(INSTANCE.encode(), PARTITIONS),
        981,
        INSTANCE.encode(),
        value,
        [("sagalog.command_id", command_id(TOPICS.saga, INSTANCE, "payment", 1).encode())],
    )
    detail = "no known schema has fingerprint 0000000000000000"
    headers = routing.dead_letter_headers(reply.received(), "unknown-schema", detail)
    return show_record(TOPICS.dlq, reply.key(), value, headers)


# -- journal, snapshots, schema history ---------------------------------------------------------


def _plain(datum: Mapping[str, Any]) -> str:
    def show(value: Any) -> Any:
        if isinstance(value, bytes):
            return f"<{len(value)} bytes: {spaced(value[:10])} ...>"
        return value

    return json.dumps({k: show(v) for k, v in datum.items()})


def example_journal() -> str:
    decision = _started()
    lines = [f"the {len(decision.entries)} entries OrderPlaced({INSTANCE}) makes, in order:"]
    lines += [f"  {_plain(entry.to_avro())}" for entry in decision.entries]
    first = decision.entries[0]
    lines += ["", f"the first ({first.kind}) as written to {TOPICS.journal}:", ""]
    lines.append(hexdump(first.encode()))
    return "\n".join(lines)


def example_snapshot() -> str:
    decision = _started()
    assert decision.instance is not None
    _, datum = decode(CATALOG, encode_snapshot(decision.instance))
    lines = [f"the snapshot after those entries, on {TOPICS.snapshots} (key {INSTANCE!r}):"]
    for name, value in datum.items():
        shown = f"<{len(value)} bytes>" if isinstance(value, bytes) else json.dumps(value)
        lines.append(f"  {name:<14} {shown}")
    return "\n".join(lines)


class _Captured:
    """A producer that keeps what it is given and acknowledges everything at once."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None]] = []

    def produce(
        self, topic: str, key: bytes, value: bytes | None, on_delivery: Callable[..., None]
    ) -> None:
        self.records.append((topic, key, value))

    def flush(self, timeout: float) -> int:
        return 0


def example_schema_history() -> str:
    history = schema_history.SchemaHistory("wire-examples:0")
    captured = _Captured()
    history._producer = captured  # type: ignore[assignment]
    history._topic_ready = True
    with mock.patch(
        "stream_processors.engine.schema_history.time.time", return_value=NOW_MS / 1000
    ):
        history.record("orders.events", OrderPlaced.__avro__)
    ((topic, key, value),) = captured.records
    assert value is not None
    return "\n".join(
        [
            f"topic    {topic}   (1 partition, compacted)",
            f"key      {key.decode()}",
            "value    UTF-8 JSON, keys sorted:",
            value.decode(),
        ]
    )


EXAMPLES: dict[str, Callable[[], str]] = {
    "partition": example_partition,
    "canonical-form": example_canonical_form,
    "fingerprint": example_fingerprint,
    "single-object": example_single_object,
    "confluent": example_confluent,
    "routed": example_routed,
    "command-ids": example_command_ids,
    "command": example_command,
    "reply": example_reply,
    "command-failed": example_command_failed,
    "task-command": example_task_command,
    "task-succeeded": example_task_succeeded,
    "task-failed": example_task_failed,
    "handled": example_handled,
    "signature": example_signature,
    "command-signature": example_command_signature,
    "operator-action": example_operator_action,
    "dead-letter": example_dead_letter,
    "journal": example_journal,
    "snapshot": example_snapshot,
    "schema-history": example_schema_history,
}


def examples() -> dict[str, str]:
    """Every example's text, by name."""
    return {name: make().rstrip("\n") + "\n" for name, make in EXAMPLES.items()}


def documented(text: str) -> dict[str, str]:
    """The examples a document shows, by name."""
    return {found.group(1): found.group(2) for found in MARKER.finditer(text)}


def rewritten(text: str, current: Mapping[str, str]) -> str:
    def replace(found: re.Match[str]) -> str:
        name = found.group(1)
        body = current.get(name, found.group(2))
        return f"<!-- wire-example: {name} -->\n```text\n{body}```"

    return MARKER.sub(replace, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"update {DOCUMENT.name}")
    parser.add_argument("--check", action="store_true", help=f"compare with {DOCUMENT.name}")
    args = parser.parse_args(argv)
    current = examples()
    if not (args.write or args.check):
        for name, body in current.items():
            print(f"<!-- wire-example: {name} -->\n```text\n{body}```\n")
        return 0
    text = DOCUMENT.read_text()
    if args.write:
        DOCUMENT.write_text(rewritten(text, current))
        text = DOCUMENT.read_text()
    shown = documented(text)
    stale = sorted(name for name in current if shown.get(name) != current[name])
    unknown = sorted(set(shown) - set(current))
    for name in stale:
        print(f"{DOCUMENT.name}: example {name!r} is {'stale' if name in shown else 'missing'}")
    for name in unknown:
        print(f"{DOCUMENT.name}: example {name!r} is not one tools/wire_examples.py makes")
    return 1 if stale or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
