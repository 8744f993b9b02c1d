"""Why a client cannot talk to the cluster, said in one line that names the fix.

librdkafka answers a failed metadata request with "Broker transport failure", whatever the cause;
the cause reaches the client's ``error_cb`` (an authentication failure, a certificate that does
not verify, a refused connection) or can be told from the settings in use (a client without
security settings whose connection the listener closes needs a secured protocol). ``explain``
turns the error, what the client reported and its settings into one line naming the listener and
the setting to change; ``connect_admin`` is the first contact of the topic tools and raises
``KafkaUnavailable`` with it. The long-running processes (``sagas run``, ``sagas worker``) start
with ``wait_until_reachable`` instead: a service started while the broker is down waits for it,
saying every few seconds what it waits for and why, rather than exiting. Settings are only ever
shown through ``redacted``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stream_processors.kafka.config import CONFIG_FILE_VARIABLE, common

log = logging.getLogger(__name__)

#: Seconds a first contact (and a metadata request of the tools) waits for the cluster: a
#: person at a terminal learns within 10 s that it cannot be reached, and why.
FIRST_CONTACT_TIMEOUT = 6.0

#: Seconds between two lines of a process waiting for the cluster to answer.
WAIT_LOG_EVERY = 5.0

_SECURED_HINT = (
    "set SAGALOG_KAFKA_SECURITY_PROTOCOL (e.g. SASL_SSL), SAGALOG_KAFKA_SASL_MECHANISM, "
    "SAGALOG_KAFKA_SASL_USERNAME, SAGALOG_KAFKA_SASL_PASSWORD and SAGALOG_KAFKA_SSL_CA_LOCATION, "
    f"or give the settings in a file: --kafka-config FILE or {CONFIG_FILE_VARIABLE}=FILE"
)
# Errors that waiting will not cure: the settings are wrong.
_DEFINITIVE = {KafkaError._AUTHENTICATION, KafkaError._SSL}


class KafkaUnavailable(Exception):
    """The cluster cannot be reached or refuses this client; the message is one line."""


class MissingTopic(LookupError):
    """A topic a command reads does not exist; the message names it and the cluster."""


class ReportedErrors:
    """An ``error_cb`` that keeps what librdkafka reported (the latest of each kind)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_code: dict[int, KafkaError] = {}

    def __call__(self, error: KafkaError) -> None:
        with self._lock:
            self._by_code[error.code()] = error

    def all(self) -> list[KafkaError]:
        with self._lock:
            return list(self._by_code.values())

    def definitive(self) -> bool:
        return any(e.code() in _DEFINITIVE or _plaintext_listener(e) for e in self.all())


def _plaintext_listener(error: KafkaError) -> bool:
    return "PLAINTEXT broker listener" in error.str()


def _protocol(config: Mapping[str, Any]) -> str:
    return str(config.get("security.protocol", "PLAINTEXT")).upper()


def explain(
    error: KafkaError | KafkaException | str,
    config: Mapping[str, Any],
    reported: Iterable[KafkaError] = (),
) -> str:
    """One line: which listener, what went wrong, which setting to change."""
    listener = config.get("bootstrap.servers", "?")
    protocol = _protocol(config)
    seen = {e.code(): e for e in reported}
    texts = [e.str() for e in seen.values()]
    if KafkaError._AUTHENTICATION in seen:
        user = config.get("sasl.username", "(no sasl.username)")
        mechanism = config.get("sasl.mechanism", "(no sasl.mechanism)")
        return (
            f"{listener} rejected the credentials of user {user} ({mechanism}): check "
            "sasl.username and sasl.password (SAGALOG_KAFKA_SASL_USERNAME, "
            "SAGALOG_KAFKA_SASL_PASSWORD) and sasl.mechanism"
        )
    if KafkaError._SSL in seen or any("certificate verify failed" in t for t in texts):
        return (
            f"{listener}: the TLS handshake failed ({_first_clause(seen, KafkaError._SSL)}); "
            "set ssl.ca.location (SAGALOG_KAFKA_SSL_CA_LOCATION) to the CA file that signed "
            "the broker's certificate"
        )
    if any(_plaintext_listener(e) for e in seen.values()):
        return (
            f"{listener} is a PLAINTEXT listener but this client speaks {protocol}: point "
            "the bootstrap servers at the cluster's secured listener, or unset "
            "security.protocol (SAGALOG_KAFKA_SECURITY_PROTOCOL)"
        )
    if any("Connection refused" in t for t in texts):
        return f"nothing listens at {listener} (connection refused): is the broker running there?"
    if any(e.code() == KafkaError._RESOLVE for e in seen.values()):
        return f"cannot resolve {listener}: check the bootstrap servers"
    if protocol in ("PLAINTEXT", "SSL") and KafkaError._ALL_BROKERS_DOWN in seen:
        needs = "SASL_SSL or SASL_PLAINTEXT" if protocol == "SSL" else "SASL_SSL or SSL"
        return (
            f"{listener} refused the connection of a {protocol} client: it needs {needs} "
            f"(it closed the connection before answering); {_SECURED_HINT}"
        )
    if protocol == "PLAINTEXT":
        return (
            f"no Kafka broker answered at {listener} ({error}); if its listener is secured, "
            f"{_SECURED_HINT}"
        )
    return f"no Kafka broker answered at {listener} with security.protocol={protocol} ({error})"


def _first_clause(seen: Mapping[int, KafkaError], code: int) -> str:
    """librdkafka's own reason, without the address prefix and its long advice."""
    error = seen.get(code)
    if error is None:
        return "certificate verify failed"
    text = error.str().split(": ", 1)[-1]
    return text.split(",", 1)[0]


def connect_admin(
    bootstrap: str | None, client_id: str, timeout: float = FIRST_CONTACT_TIMEOUT, **extra: Any
) -> AdminClient:
    """An admin client that has answered one metadata request, for the first contact with the
    cluster; raises ``KafkaUnavailable`` explaining why not within ``timeout`` seconds (at once
    when the settings are plainly wrong: credentials refused, a certificate not trusted)."""
    config = common(bootstrap, client_id) | extra
    reported = ReportedErrors()
    admin = AdminClient(config | {"error_cb": reported})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return admin
        except KafkaException as error:
            admin.poll(0)  # serves error_cb with what the client saw
            if reported.definitive() or time.monotonic() >= deadline:
                raise KafkaUnavailable(explain(error, config, reported.all())) from None
            time.sleep(0.1)


def wait_until_reachable(bootstrap: str | None, what: str, stopping: threading.Event) -> bool:
    """Wait until the cluster answers a metadata request; False if ``stopping`` was set first.

    Logs every ``WAIT_LOG_EVERY`` seconds that ``what`` waits, and why (``explain``), not a line
    per attempt. Settings that waiting will not cure (credentials refused, a certificate not
    trusted, a PLAINTEXT listener for a secured client) raise ``KafkaUnavailable`` at once.
    """
    config = common(bootstrap, "sagalog-wait")
    reported = ReportedErrors()
    admin = AdminClient(config | {"error_cb": reported})
    began = time.monotonic()
    next_line = began
    while not stopping.is_set():
        try:
            admin.list_topics(timeout=1.0)
        except KafkaException as error:
            admin.poll(0)  # serves error_cb with what the client saw
            why = explain(error, config, reported.all())
            if reported.definitive():
                raise KafkaUnavailable(why) from None
            if time.monotonic() >= next_line:
                waited = time.monotonic() - began
                log.warning("%s waits for the Kafka cluster (%.0f s so far): %s", what, waited, why)
                next_line += WAIT_LOG_EVERY
            stopping.wait(0.5)
            continue
        if time.monotonic() - began > 1.5:
            log.info("%s: the cluster answers, after %.0f s", what, time.monotonic() - began)
        return True
    return False


def metadata(
    client: Any,
    bootstrap: str | None,
    topic: str | None = None,
    timeout: float = FIRST_CONTACT_TIMEOUT,
) -> Any:
    """``client.list_topics`` (a producer's, consumer's or admin client's), raising
    ``KafkaUnavailable`` with the explanation when the cluster does not answer, and
    ``MissingTopic`` when ``topic`` is given and does not exist."""
    try:
        answer = client.list_topics(topic, timeout=timeout)
    except KafkaException as error:
        raise KafkaUnavailable(explain(error, common(bootstrap, "?"))) from None
    found = None if topic is None else answer.topics.get(topic)
    if topic is not None and (found is None or found.error is not None or not found.partitions):
        where = common(bootstrap, "?")["bootstrap.servers"]
        raise MissingTopic(
            f"no topic {topic} at {where}: check the saga or topic name, and that its processor "
            "has run once (it creates its topics)"
        )
    return answer
