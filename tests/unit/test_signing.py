"""Unit tests of signed commands and replies, and of the topics a worker may reply to.

Covers: the keyring (parsing ``id:base64`` entries from text, the environment or a file; bad
entries, short secrets, repeated ids; the first key signs, all verify); the canonical bytes
(length-prefixed, presence of optional fields, the header names the engine uses); a signature's
round trip, and its failure when any signed field is changed (topic, key, value, each covered
header, the purpose), when it is missing, malformed, made with an unknown or another key; key
rotation; ``Worker.handle`` dead-lettering a command with a bad signature (``bad-signature``)
or a reply address it does not allow (``bad-reply-address``) before its handler runs and before
its handled commands are consulted, and signing its replies; the operator's signed actions;
the processor signing what it routes and the commands it sends, and dead-lettering an unsigned
reply before ``decide``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from confluent_kafka import Message

from examples.order_fulfillment.messages import MakePayment, PaymentCompleted
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import operator
from sagas.idempotency import HandledCommand, HandledCommands
from sagas.reply_addresses import BAD_REPLY_ADDRESS, ReplyAddresses
from sagas.worker import CommandContext, Worker
from stream_processors.codecs import signing
from stream_processors.codecs.signing import (
    SIGNATURE,
    Keyring,
    Purpose,
    SigningKey,
    SigningKeyError,
    from_environment,
    signed,
    signed_bytes,
    verify,
)
from stream_processors.engine import processor as processor_module
from stream_processors.engine import routing
from stream_processors.engine.routing import (
    ATTEMPT,
    COMMAND_ID,
    DLQ_REASON,
    IDEMPOTENCY_KEY,
    INSTANCE,
    NOTE,
    REPLY_TO,
    SAGA,
    Headers,
    command_headers,
    header,
    reply_headers,
)
from tests.unit.processor_rig import PAYMENTS, Rig

OLD = SigningKey("k1", b"o" * 32)
NEW = SigningKey("k2", b"n" * 32)
KEYS = Keyring((OLD,))
CID = "orders/o-1/payment/1"
TOPIC = "payments.commands"


def _entry(key: SigningKey) -> str:
    return f"{key.key_id}:{base64.b64encode(key.secret).decode()}"


# -- keys --------------------------------------------------------------------------------------


def test_keys_parse_from_text_commas_lines_and_comments() -> None:
    text = f"{_entry(NEW)}, {_entry(OLD)}\n# retired: k0\n"
    assert Keyring.parse(text).keys == (NEW, OLD)
    assert Keyring.parse(text).signing_key == NEW


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "at least one key"),
        ("k1", "not id:base64secret"),
        ("k1:not base64!", "not base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "at least 16"),
        (f"{_entry(OLD)},{_entry(OLD)}", "twice"),
        (f"bad id:{base64.b64encode(b'x' * 32).decode()}", "key id"),
    ],
)
def test_unusable_keys_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(SigningKeyError, match=complaint):
        Keyring.parse(text)


def test_keys_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert from_environment({}) is None
    assert from_environment({signing.KEYS_VARIABLE: _entry(OLD)}) == KEYS
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{_entry(NEW)}\n{_entry(OLD)}\n")
    assert from_environment({signing.KEYS_FILE_VARIABLE: str(keys_file)}) == Keyring((NEW, OLD))
    with pytest.raises(SigningKeyError, match="not both"):
        from_environment({signing.KEYS_VARIABLE: _entry(OLD), signing.KEYS_FILE_VARIABLE: "x"})
    with pytest.raises(SigningKeyError, match="SAGALOG_SIGNING_KEYS_FILE"):
        from_environment({signing.KEYS_FILE_VARIABLE: str(tmp_path / "missing")})
    with pytest.raises(SigningKeyError, match=r"^SAGALOG_SIGNING_KEYS: key 'k1': the secret is 5"):
        from_environment({signing.KEYS_VARIABLE: f"k1:{base64.b64encode(b'short').decode()}"})


def test_a_secret_is_never_printed() -> None:
    assert "ooo" not in repr(KEYS) and "ooo" not in repr(OLD)


# -- canonical bytes ---------------------------------------------------------------------------


def test_the_signed_header_names_are_the_engines() -> None:
    assert Purpose.COMMAND.headers == (
        COMMAND_ID,
        IDEMPOTENCY_KEY,
        ATTEMPT,
        REPLY_TO,
        INSTANCE,
        SAGA,
    )
    assert Purpose.INBOX.headers == (COMMAND_ID, NOTE)


def test_the_signed_bytes_are_length_prefixed_and_mark_what_is_absent() -> None:
    data = signed_bytes(Purpose.INBOX, "k1", "t", None, b"v", [(COMMAND_ID, b"c")])
    assert data == (
        b"\x00\x00\x00\x14sagalog-signature-v1"
        b"\x00\x00\x00\x05inbox"
        b"\x00\x00\x00\x02k1"
        b"\x00\x00\x00\x01t"
        b"\x00"  # no key
        b"\x01\x00\x00\x00\x01v"
        b"\x00\x00\x00\x12sagalog.command_id\x01\x00\x00\x00\x01c"
        b"\x00\x00\x00\x0csagalog.note\x00"
    )
    # An empty value is not a missing one, and fields cannot run into each other.
    assert signed_bytes(Purpose.INBOX, "k1", "t", b"", b"v", None) != signed_bytes(
        Purpose.INBOX, "k1", "t", None, b"v", None
    )
    assert signed_bytes(Purpose.INBOX, "k1", "ab", b"c", None, None) != signed_bytes(
        Purpose.INBOX, "k1", "a", b"bc", None, None
    )


# -- signatures --------------------------------------------------------------------------------


def _command() -> tuple[bytes, bytes, Headers]:
    headers = command_headers(CID, "orders.inbox", "o-1", "orders")
    return (
        b"o-1",
        b"\xc3\x01command",
        signed(KEYS, Purpose.COMMAND, TOPIC, b"o-1", b"\xc3\x01command", headers),
    )


def test_a_signed_command_verifies() -> None:
    key, value, headers = _command()
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value, headers) is None
    assert header(headers, SIGNATURE) is not None and header(headers, SIGNATURE).startswith("k1:")  # type: ignore[union-attr]


def test_signing_replaces_a_signature_the_headers_had() -> None:
    forged: Headers = [(SIGNATURE, b"k1:AAAA"), *reply_headers(CID)]
    headers = signed(KEYS, Purpose.INBOX, "orders.inbox", b"o-1", b"v", forged)
    assert [name for name, _ in headers].count(SIGNATURE) == 1
    assert verify(KEYS, Purpose.INBOX, "orders.inbox", b"o-1", b"v", headers) is None


@pytest.mark.parametrize("name", Purpose.COMMAND.headers)
def test_changing_any_signed_header_breaks_the_signature(name: str) -> None:
    key, value, headers = _command()
    changed: Headers = [*headers, (name, b"orders.snapshots")]  # the last value counts
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value, changed) == (
        "the MAC does not match (key 'k1')"
    )
    removed: Headers = [(n, v) for n, v in headers if n != name]
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value, removed) is not None


def test_changing_topic_key_value_or_purpose_breaks_the_signature() -> None:
    key, value, headers = _command()
    assert verify(KEYS, Purpose.COMMAND, "shipping.commands", key, value, headers) is not None
    assert verify(KEYS, Purpose.COMMAND, TOPIC, b"o-2", value, headers) is not None
    assert verify(KEYS, Purpose.COMMAND, TOPIC, None, value, headers) is not None
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value + b"x", headers) is not None
    assert verify(KEYS, Purpose.INBOX, TOPIC, key, value, headers) is not None


def test_unsigned_headers_may_change() -> None:
    key, value, headers = _command()
    extra: Headers = [*headers, ("traceparent", b"00-abc"), (routing.DLQ_REASON, b"x")]
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value, extra) is None


@pytest.mark.parametrize(
    ("signature", "complaint"),
    [
        (None, "no sagalog.signature header"),
        (b"no-colon", "not <key id>:<MAC>"),
        (b"k9:AAAA", "unknown key id 'k9'"),
        (b"k1:!!!", "not base64"),
        (b"k1:AAAA", "does not match"),
    ],
)
def test_a_missing_or_malformed_signature_is_refused(
    signature: bytes | None, complaint: str
) -> None:
    key, value, headers = _command()
    kept: Headers = [(n, v) for n, v in headers if n != SIGNATURE]
    if signature is not None:
        kept.append((SIGNATURE, signature))
    problem = verify(KEYS, Purpose.COMMAND, TOPIC, key, value, kept)
    assert problem is not None and complaint in problem


def test_a_signature_made_with_another_secret_under_the_same_id_is_refused() -> None:
    key, value, headers = _command()
    impostor = Keyring((SigningKey("k1", b"x" * 32),))
    assert verify(impostor, Purpose.COMMAND, TOPIC, key, value, headers) is not None


def test_rotation_accepts_old_and_new_while_signing_with_the_first() -> None:
    key, value, old_signed = _command()
    rotating = Keyring((NEW, OLD))
    assert verify(rotating, Purpose.COMMAND, TOPIC, key, value, old_signed) is None
    new_signed = signed(rotating, Purpose.COMMAND, TOPIC, key, value, old_signed)
    assert (header(new_signed, SIGNATURE) or "").startswith("k2:")
    assert verify(rotating, Purpose.COMMAND, TOPIC, key, value, new_signed) is None
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value, new_signed) is not None  # not yet
    retired = Keyring((NEW,))
    assert verify(retired, Purpose.COMMAND, TOPIC, key, value, old_signed) is not None


def test_headers_as_a_dict_verify_too() -> None:
    key, value, headers = _command()
    as_dict = {name: data for name, data in headers}
    assert verify(KEYS, Purpose.COMMAND, TOPIC, key, value, as_dict) is None


# -- reply addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("order_fulfillment.inbox", True),
        ("order_fulfillment.snapshots", False),
        ("order_fulfillment.journal", False),
        ("_sagalog.schemas", False),
        ("sagalog.worker.payments.handled", False),
        ("payments.commands.dlq", False),
        ("bad topic.inbox", False),
        ("x" * 250 + ".inbox", False),
    ],
)
def test_by_default_replies_go_to_saga_inboxes_only(topic: str, allowed: bool) -> None:
    assert (ReplyAddresses().refusal(topic) is None) is allowed


def test_reply_addresses_can_be_listed() -> None:
    exact = ReplyAddresses.of(["order_fulfillment.inbox"])
    assert exact.refusal("order_fulfillment.inbox") is None
    assert exact.refusal("other.inbox") is not None
    assert ReplyAddresses.of(["orders-*.inbox"]).refusal("orders-eu.inbox") is None
    with pytest.raises(ValueError, match="at least one"):
        ReplyAddresses.of([" "])


# -- the worker --------------------------------------------------------------------------------


def _payments(calls: list[str], **options: object) -> Worker:
    worker = Worker("payments-test", **options)  # type: ignore[arg-type]

    @worker.handles(MakePayment)
    def pay(command: MakePayment, context: CommandContext) -> PaymentCompleted:
        calls.append(context.command_id)
        return PaymentCompleted(order_id=command.order_id, payment_id="p-1")

    return worker


def _payment(reply_to: str = "orders.inbox", keys: Keyring | None = KEYS) -> Message:
    value = MakePayment(order_id="o-1", customer_id="c", amount_cents=1, card_token="t").encode()
    headers = command_headers(CID, reply_to, "o-1", "orders")
    if keys is not None:
        headers = signed(keys, Purpose.COMMAND, TOPIC, b"o-1", value, headers)
    return Message(topic=TOPIC, partition=5, offset=42, key=b"o-1", value=value, headers=headers)


def _reason(outgoing: tuple[str, bytes | None, bytes | None, Headers]) -> str | None:
    return header(outgoing[3], DLQ_REASON)


def test_a_signing_worker_answers_a_signed_command_with_a_signed_reply() -> None:
    calls: list[str] = []
    answer = _payments(calls, signing=KEYS).handle(_payment())
    topic, key, value, headers = answer.outgoing
    assert calls == [CID] and topic == "orders.inbox" and answer.handled is not None
    assert verify(KEYS, Purpose.INBOX, topic, key, value, headers) is None


@pytest.mark.parametrize("keys", [None, Keyring((SigningKey("k1", b"x" * 32),))])
def test_a_command_without_a_valid_signature_is_dead_lettered_before_anything(
    keys: Keyring | None,
) -> None:
    calls: list[str] = []
    worker = _payments(calls, signing=KEYS)
    looked_up: list[str] = []

    class Watching(HandledCommands):
        def reply(self, topic: str, partition: int, command_id: str) -> HandledCommand | None:
            looked_up.append(command_id)
            return None

    worker._handled = Watching("g", None, 4)
    answer = worker.handle(_payment(keys=keys))
    assert answer.outgoing[0] == f"{TOPIC}.dlq" and _reason(answer.outgoing) == "bad-signature"
    assert answer.handled is None and calls == [] and looked_up == []


def test_a_worker_without_keys_does_not_check_or_sign() -> None:
    calls: list[str] = []
    answer = _payments(calls, signing=None).handle(_payment(keys=None))
    assert calls == [CID] and header(answer.outgoing[3], SIGNATURE) is None


@pytest.mark.parametrize(
    "reply_to", ["order_fulfillment.snapshots", "_sagalog.schemas", "orders.journal"]
)
def test_a_command_with_a_reply_address_not_allowed_is_dead_lettered(reply_to: str) -> None:
    calls: list[str] = []
    answer = _payments(calls).handle(_payment(reply_to, keys=None))
    assert answer.outgoing[0] == f"{TOPIC}.dlq" and _reason(answer.outgoing) == BAD_REPLY_ADDRESS
    assert calls == [] and answer.handled is None


def test_a_worker_given_its_reply_topics_allows_only_those() -> None:
    calls: list[str] = []
    worker = _payments(calls, reply_to=["order_fulfillment.inbox"])
    assert _reason(worker.handle(_payment("orders.inbox", keys=None)).outgoing) == BAD_REPLY_ADDRESS
    assert worker.handle(_payment("order_fulfillment.inbox", keys=None)).handled is not None


def test_a_remembered_reply_is_signed_and_its_address_checked_again() -> None:
    calls: list[str] = []
    worker = _payments(calls, signing=KEYS)
    worker._handled = HandledCommands("g", None, 4)
    worker._handled._known[(TOPIC, 5)] = {
        CID: HandledCommand(CID, "orders.inbox", "o-1", b"reply", TOPIC, 5)
    }
    topic, key, value, headers = worker.handle(_payment()).outgoing
    assert (topic, key, value) == ("orders.inbox", b"o-1", b"reply") and calls == []
    assert verify(KEYS, Purpose.INBOX, topic, key, value, headers) is None
    worker._handled._known[(TOPIC, 5)][CID] = HandledCommand(
        CID, "orders.snapshots", "o-1", b"reply", TOPIC, 5
    )
    assert _reason(worker.handle(_payment()).outgoing) == BAD_REPLY_ADDRESS


# -- operator actions --------------------------------------------------------------------------


def test_operator_actions_are_signed_with_the_environments_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setenv(signing.KEYS_VARIABLE, _entry(OLD))
    monkeypatch.setattr(operator, "_producer", lambda *_: None)
    monkeypatch.setattr(operator, "_require_topics", lambda *_: {})

    def deliver(
        producer: object, records: list[tuple[str, dict[str, object]]]
    ) -> list[operator.Sent]:
        sent.extend(records)
        return [operator.Sent(records[0][0], 0, 0, "o-1")]

    monkeypatch.setattr(operator, "_deliver", deliver)
    operator.send_action(OrderFulfillment.definition, "o-1", "cancel", "ann", "test")
    topic, record = sent[0]
    headers = record["headers"]
    assert isinstance(headers, list)
    assert header(headers, NOTE) == "cancel by ann: test"
    key, value = record["key"], record["value"]
    assert isinstance(key, bytes) and isinstance(value, bytes)
    assert verify(KEYS, Purpose.INBOX, topic, key, value, headers) is None


# -- the processor (on in-memory Kafka: tests/unit/processor_rig.py) ---------------------------


def test_a_signing_processor_signs_what_it_routes_and_the_commands_it_sends(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, signing=KEYS)
    rig.start()
    try:
        rig.place("o-1")
        rig.steps(3)
        [routed] = rig.visible(rig.topics.inbox)
        inbox = rig.topics.inbox
        assert (
            verify(KEYS, Purpose.INBOX, inbox, routed.key(), routed.value(), routed.headers())
            is None
        )
        [command] = rig.visible(PAYMENTS)
        assert (
            verify(
                KEYS, Purpose.COMMAND, PAYMENTS, command.key(), command.value(), command.headers()
            )
            is None
        )
    finally:
        rig.processor.close()


def test_a_signing_processor_dead_letters_an_unsigned_reply_before_deciding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path, signing=KEYS)
    rig.start()
    decided: list[object] = []
    monkeypatch.setattr(processor_module, "decide", lambda *args: decided.append(args))
    try:
        reply = PaymentCompleted(order_id="o-1", payment_id="forged").encode()
        headers = reply_headers("order_fulfillment/o-1/payment/1")
        rig.broker.publish(rig.topics.inbox, b"o-1", reply, headers)
        rig.steps(2)
        assert decided == []
        [letter] = rig.visible(rig.topics.dlq)
        assert header(letter.headers(), DLQ_REASON) == "bad-signature"
    finally:
        rig.processor.close()
