"""Signed commands and replies: a keyed MAC (HMAC-SHA256) that the receiving side checks.

Kafka ACLs decide who may write a topic; signing decides what a processor or a worker acts on
when producers it does not control share the topics (docs/security.md says what each covers).
It is off unless keys are configured, and then the engine signs what it writes and checks what
it reads:

- the processor signs each **command** it sends; a worker checks the signature before it
  looks the command up among those it handled and before its handler runs;
- a worker signs each **reply**; the processor signs each source event it routes into the
  inbox, and ``sagas signal`` / ``retry`` / ``cancel`` / ``resolve`` sign what they send: with
  signing on, every **inbox** record must carry a valid signature before ``decide`` sees it.

A record without a valid signature is dead-lettered as ``bad-signature``.

What is signed (``signed_bytes``), each field as a 4-byte big-endian length and its bytes, an
optional one behind a presence byte (0: absent; 1: present, then the field), so that no two
different records give the same bytes::

    field("sagalog-signature-v1") field(purpose) field(key id) field(topic)
    optional(record key) optional(record value)
    for each header name of the purpose, in this order: field(name) optional(last value)

The purpose is ``command`` (headers: command id, idempotency key, attempt, reply_to, instance,
saga) or ``inbox`` (headers: command id, note). The topic makes a record signed for one topic
worthless on another; the purpose keeps a reply from passing as a command. Header values are
the bytes as written, and the last one of a name counts, as ``routing.header`` reads them.

The signature travels in the ``sagalog.signature`` header as ``<key id>:<base64 MAC>``. A
``Keyring`` holds one or more keys: the first signs, every one verifies, which is how keys are
rotated (docs/security.md). Keys come from ``SAGALOG_SIGNING_KEYS`` (``id:base64secret,...``)
or from the file named by ``SAGALOG_SIGNING_KEYS_FILE`` (the same entries, one per line or
comma-separated, ``#`` comments); ``from_environment`` reads them. Everything else here is pure:
no Kafka, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

#: The header carrying ``<key id>:<base64 MAC>``.
SIGNATURE = "sagalog.signature"
#: The dead-letter reason of a record whose signature is missing or wrong.
BAD_SIGNATURE = "bad-signature"
#: Environment variables the keys are read from (one of them, not both).
KEYS_VARIABLE = "SAGALOG_SIGNING_KEYS"
KEYS_FILE_VARIABLE = "SAGALOG_SIGNING_KEYS_FILE"
#: The shortest secret accepted (HMAC-SHA256 keys of 32 random bytes are recommended).
MIN_SECRET_BYTES = 16

_VERSION = b"sagalog-signature-v1"
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Header names, spelled here so that this module needs no Kafka client (routing.py has the
# same constants for everything else; a test checks that they agree).
_COMMAND_ID = "sagalog.command_id"
_IDEMPOTENCY_KEY = "sagalog.idempotency_key"
_ATTEMPT = "sagalog.attempt"
_REPLY_TO = "sagalog.reply_to"
_INSTANCE = "sagalog.instance"
_SAGA = "sagalog.saga"
_NOTE = "sagalog.note"

#: Headers as a Kafka client gives or takes them.
HeaderPairs = Sequence[tuple[str, str | bytes | None]]
AnyHeaders = Mapping[str, str | bytes | None] | HeaderPairs | None


class Purpose(Enum):
    """What a signature is for, and the headers it covers, in order."""

    COMMAND = "command"
    INBOX = "inbox"

    @property
    def headers(self) -> tuple[str, ...]:
        if self is Purpose.COMMAND:
            return (_COMMAND_ID, _IDEMPOTENCY_KEY, _ATTEMPT, _REPLY_TO, _INSTANCE, _SAGA)
        return (_COMMAND_ID, _NOTE)


class SigningKeyError(ValueError):
    """Signing keys that cannot be used: malformed, too short, or a key id given twice."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    secret: bytes = b""

    def __repr__(self) -> str:  # never print a secret
        return f"SigningKey({self.key_id!r}, <{len(self.secret)} bytes>)"


@dataclass(frozen=True)
class Keyring:
    """Signing keys: the first signs, all verify. Build with ``parse`` or ``from_environment``."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise SigningKeyError("a keyring needs at least one key")
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise SigningKeyError(f"a key id is given twice: {', '.join(ids)}")
        for key in self.keys:
            if not _KEY_ID.fullmatch(key.key_id):
                raise SigningKeyError(
                    f"key id {key.key_id!r}: 1 to 64 letters, digits, '.', '_' or '-'"
                )
            if len(key.secret) < MIN_SECRET_BYTES:
                raise SigningKeyError(
                    f"key {key.key_id!r}: the secret is {len(key.secret)} bytes, "
                    f"at least {MIN_SECRET_BYTES} are needed (32 random bytes recommended)"
                )

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def find(self, key_id: str) -> SigningKey | None:
        return next((key for key in self.keys if key.key_id == key_id), None)

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Keys from ``id:base64secret`` entries, separated by commas or lines (``#`` comments)."""
        entries = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            entries += [entry.strip() for entry in line.split(",") if entry.strip()]
        keys = []
        for entry in entries:
            key_id, colon, encoded = entry.partition(":")
            if not colon:
                raise SigningKeyError(f"a key entry is not id:base64secret (id {key_id.strip()!r})")
            try:
                secret = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise SigningKeyError(f"key {key_id.strip()!r}: the secret is not base64") from None
            keys.append(SigningKey(key_id.strip(), secret))
        return cls(tuple(keys))

    def __repr__(self) -> str:
        return f"Keyring({', '.join(key.key_id for key in self.keys)})"


def from_environment(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The keyring configured in the environment, or None (signing off).

    Reads ``SAGALOG_SIGNING_KEYS``, or the file ``SAGALOG_SIGNING_KEYS_FILE`` names; setting
    both is an error, as is a set variable with no key in it.
    """
    env = os.environ if environ is None else environ
    inline, path = env.get(KEYS_VARIABLE, "").strip(), env.get(KEYS_FILE_VARIABLE, "").strip()
    if inline and path:
        raise SigningKeyError(f"set {KEYS_VARIABLE} or {KEYS_FILE_VARIABLE}, not both")
    if not (inline or path):
        return None
    variable = KEYS_FILE_VARIABLE if path else KEYS_VARIABLE
    try:
        return Keyring.parse(Path(path).read_text() if path else inline)
    except (OSError, SigningKeyError) as error:  # name where the keys came from, not a secret
        raise SigningKeyError(f"{variable}: {error}") from None


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _optional(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + _field(value)


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _pairs(headers: AnyHeaders) -> HeaderPairs:
    if not headers:
        return ()
    return list(headers.items()) if isinstance(headers, Mapping) else headers


def last_header(headers: AnyHeaders, name: str) -> bytes | None:
    """The last non-null value of header ``name``, as bytes."""
    for key, value in reversed(_pairs(headers)):
        if key == name and value is not None:
            return _bytes(value)
    return None


def signed_bytes(
    purpose: Purpose,
    key_id: str,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: AnyHeaders,
) -> bytes:
    """The canonical bytes a signature is the MAC of (see the module docstring)."""
    parts = [
        _field(_VERSION),
        _field(purpose.value.encode()),
        _field(key_id.encode()),
        _field(topic.encode()),
        _optional(key),
        _optional(value),
    ]
    for name in purpose.headers:
        parts.append(_field(name.encode()))
        parts.append(_optional(last_header(headers, name)))
    return b"".join(parts)


def _mac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def signature(
    keyring: Keyring,
    purpose: Purpose,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: AnyHeaders,
) -> bytes:
    """The ``sagalog.signature`` header value for a record, made with the keyring's first key."""
    signer = keyring.signing_key
    message = signed_bytes(purpose, signer.key_id, topic, key, value, headers)
    return f"{signer.key_id}:".encode() + base64.b64encode(_mac(signer.secret, message))


def signed(
    keyring: Keyring,
    purpose: Purpose,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: HeaderPairs,
) -> list[tuple[str, str | bytes | None]]:
    """``headers`` without any ``sagalog.signature`` they had, plus the record's signature."""
    kept = [(name, data) for name, data in headers if name != SIGNATURE]
    return [*kept, (SIGNATURE, signature(keyring, purpose, topic, key, value, kept))]


def verify(
    keyring: Keyring,
    purpose: Purpose,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: AnyHeaders,
) -> str | None:
    """Why the record's signature does not hold (a short detail for the dead letter), or None."""
    found = last_header(headers, SIGNATURE)
    if found is None:
        return "no sagalog.signature header"
    key_id, colon, encoded = found.partition(b":")
    if not colon:
        return "the signature is not <key id>:<MAC>"
    signer = keyring.find(key_id.decode(errors="replace"))
    if signer is None:
        return f"unknown key id {key_id[:64].decode(errors='replace')!r}"
    try:
        mac = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "the MAC is not base64"
    expected = _mac(signer.secret, signed_bytes(purpose, signer.key_id, topic, key, value, headers))
    if not hmac.compare_digest(mac, expected):
        return f"the MAC does not match (key {signer.key_id!r})"
    return None


__all__ = [
    "BAD_SIGNATURE",
    "KEYS_FILE_VARIABLE",
    "KEYS_VARIABLE",
    "SIGNATURE",
    "Keyring",
    "Purpose",
    "SigningKey",
    "SigningKeyError",
    "from_environment",
    "last_header",
    "signature",
    "signed",
    "signed_bytes",
    "verify",
]
