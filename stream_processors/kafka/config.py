"""librdkafka configuration for every client Sagalog creates, in one place.

Every producer, consumer and admin client (processors, workers, publishers, the CLI, replay,
history, the operator tools, the schema history, the demo, chaos, the benchmarks, the broker's
readiness probe) starts from ``common()``, so one set of connection settings reaches them all.
Where those settings come from, weakest first:

1. a properties file: ``SAGALOG_KAFKA_CONFIG=FILE``, or ``sagas --kafka-config FILE`` (which
   wins over the variable); ``key=value`` lines in librdkafka's names, ``#`` or ``!`` comments;
2. environment variables ``SAGALOG_KAFKA_<NAME>``: the name lower-cased with underscores turned
   into dots (``SAGALOG_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` is ``security.protocol``); one set
   to the empty string removes the file's setting;
3. what the code sets: the client id, and each kind of client's own settings below, which the
   engine's guarantees depend on (a user's file cannot turn off ``read_committed``). Only the
   producer's batching and compression (``PRODUCER_TUNING``) sit under levels 1 and 2 instead.

The bootstrap servers, strongest first: an explicit argument (``--bootstrap``), then
``KAFKA_BOOTSTRAP_SERVERS``, then ``bootstrap.servers`` from the variables or the file, then
127.0.0.1:9092.

Every producer uses the same partitioner (``murmur2_random``, the Java client's), so a key lands
on the same partition whoever writes it: a worker's reply reaches the inbox partition of its
instance, and services written in Java agree. Every consumer reads ``read_committed``: records of
aborted or still-open transactions are never seen.

Configurations hold secrets (``sasl.password``...): show one only through ``redacted()``.

librdkafka's own log lines (a broker it cannot connect to, a connection closed) go to the
Python logger ``sagalog.kafka`` instead of straight to stderr, with a line repeated within 30 s
dropped: a long-running process shows each trouble once, and a command line can quiet them
(``sagas`` does, and reports a failure as one line of its own).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
CONFIG_FILE_VARIABLE = "SAGALOG_KAFKA_CONFIG"
SETTING_PREFIX = "SAGALOG_KAFKA_"
REDACTED = "[redacted]"

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Settings whose values are secrets: passwords, client secrets, private keys, JAAS configs.
_SECRET = re.compile(r"password|secret|\.key\.pem$|^ssl_key$|jaas|oauthbearer\.config", re.I)

_config_file: Path | None = None  # --kafka-config, set once by the CLI


class _Repeats(logging.Filter):
    """Drops a log line seen within ``seconds`` (ignoring its numbers: ``after 0ms``...)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        if len(self._last) > 1000:  # bounded: old lines are forgotten
            self._last.clear()
        self._last[key] = now
        return True


#: Where every client's librdkafka log lines go (see the module docstring).
CLIENT_LOG = logging.getLogger("sagalog.kafka")
CLIENT_LOG.addFilter(_Repeats(30.0))


class KafkaConfigError(ValueError):
    """A properties file that cannot be read or parsed; the message names the file and line."""


def read_properties(path: str | Path) -> dict[str, str]:
    """Parse a properties file: ``key=value`` per line (spaces around either are dropped),
    blank lines, and comment lines starting with ``#`` or ``!``. Anything else is an error
    naming the file and the line; a later line with the same key wins."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KafkaConfigError(f"cannot read Kafka client settings from {path}: {error}") from None
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, equals, value = stripped.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            raise KafkaConfigError(
                f"{path}, line {number}: expected key=value (a librdkafka setting such as "
                f"security.protocol=SASL_SSL), found {_shown_line(key, equals)!r}"
            )
        settings[key] = value.strip()
    return settings


def _shown_line(key: str, equals: str) -> str:
    """What an error may show of a malformed line: its first word, never what follows (it may
    be a secret, as in ``sasl.password hunter2``)."""
    words = key.split()
    first = words[0] if words else ""
    return first + ("=..." if equals else " ..." if len(words) > 1 else "")


def use_config_file(path: str | Path | None) -> None:
    """Make ``path`` the settings file of this process (over ``SAGALOG_KAFKA_CONFIG``); the file
    is read at once, so a bad one fails here rather than at the first client."""
    global _config_file
    if path is not None:
        read_properties(path)
    _config_file = None if path is None else Path(path)


def config_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The settings file in use: ``--kafka-config``, else ``SAGALOG_KAFKA_CONFIG``, else none."""
    if _config_file is not None:
        return _config_file
    named = (os.environ if environ is None else environ).get(CONFIG_FILE_VARIABLE)
    return Path(named) if named else None


def setting_name(variable: str) -> str | None:
    """``SAGALOG_KAFKA_SASL_MECHANISM`` -> ``sasl.mechanism``; None for other variables (and
    for ``SAGALOG_KAFKA_CONFIG``, the file's name)."""
    if not variable.startswith(SETTING_PREFIX) or variable == CONFIG_FILE_VARIABLE:
        return None
    name = variable[len(SETTING_PREFIX) :]
    return name.lower().replace("_", ".") if name else None


def user_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's librdkafka settings: the file's, overridden by ``SAGALOG_KAFKA_*`` variables."""
    environ = os.environ if environ is None else environ
    path = config_file(environ)
    settings = read_properties(path) if path is not None else {}
    for variable, value in sorted(environ.items()):
        name = setting_name(variable)
        if name is not None and value:
            settings[name] = value
        elif name is not None:  # set but empty: drop the file's setting
            settings.pop(name, None)
    return settings


def bootstrap_servers(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``explicit``, else ``KAFKA_BOOTSTRAP_SERVERS``, else the user's ``bootstrap.servers``,
    else 127.0.0.1:9092."""
    if explicit:
        return explicit
    environ = os.environ if environ is None else environ
    return (
        environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or user_settings(environ).get("bootstrap.servers")
        or DEFAULT_BOOTSTRAP
    )


def common(bootstrap: str | None, client_id: str) -> dict[str, Any]:
    """What every client gets: the user's settings, the bootstrap servers and ``client_id``."""
    # librdkafka backs off up to 10 s between reconnects by default: after a broker outage a
    # client would notice the broker is back up to 10 s late. The user's settings still win.
    settings: dict[str, Any] = {"reconnect.backoff.max.ms": 1000} | user_settings()
    return settings | {
        "bootstrap.servers": bootstrap_servers(bootstrap),
        "client.id": client_id,
        "logger": CLIENT_LOG,
    }


def is_secret(name: str) -> bool:
    """Whether setting ``name`` holds a secret (a password, a client secret, a private key)."""
    return _SECRET.search(name) is not None


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` fit to print or log: every secret's value replaced by ``[redacted]``."""
    return {name: REDACTED if is_secret(name) else value for name, value in config.items()}


#: Producer settings that tune, not guarantee: defaults under the user's settings (level 1 and
#: 2 above). On this project's records (150-600 bytes) lz4 made no difference to the CPU of the
#: broker or of the processor at end-to-end saturation (docs/benchmarks.md, 2026-12-03 16:05).
PRODUCER_TUNING: dict[str, Any] = {"linger.ms": 5, "compression.type": "lz4"}


def producer_config(
    bootstrap: str | None, client_id: str, transactional_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """An idempotent producer (acks=all); transactional when ``transactional_id`` is given.
    Batching and compression (``PRODUCER_TUNING``) are the user's to change; the rest is not."""
    guarantees = {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}
    config = PRODUCER_TUNING | common(bootstrap, client_id) | guarantees
    if transactional_id is not None:
        # Short enough that a crashed process's open transaction cannot stall read_committed
        # readers for long, should a restart not take the same transactional id.
        config |= {"transactional.id": transactional_id, "transaction.timeout.ms": 10_000}
    return config | extra


def consumer_config(
    bootstrap: str | None, client_id: str, group_id: str | None, **extra: Any
) -> dict[str, Any]:
    """A read_committed consumer that never commits on its own."""
    config = common(bootstrap, client_id) | {
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
    }
    if group_id is not None:
        config["group.id"] = group_id
    return config | extra
