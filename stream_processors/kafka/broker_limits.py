"""The limits of the topics a process writes to, read from the broker and cached per topic.

The shell around ``stream_processors.core.limits``: a processor or worker asks ``limits(topic)``
before producing, and gets the producer's ``message.max.bytes`` (from its own configuration) with
the topic's ``max.message.bytes`` (``describe_configs``). The same request says whether the topic
exists and whether its name is valid: a worker checks a reply address with ``problem(topic)``
before producing to it, instead of letting librdkafka wait for a topic that never comes.

A topic's answer is cached for ``ttl`` seconds (a missing topic's for ``missing_ttl``, so a
topic created later is seen soon). When the broker cannot answer, the producer's limit alone is
used and nothing is cached: a passing broker problem never dead-letters anything by itself. Nor
is the broker asked again, for any topic, for ``unanswered_pause`` seconds: during an outage each
record would otherwise wait ``timeout`` seconds for its limits, and a batch for many minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from stream_processors.core.limits import DEFAULT_PRODUCER_MAX_BYTES, Limits
from stream_processors.kafka.config import common

log = logging.getLogger(__name__)

#: Errors meaning the topic cannot be written to as named, with the problem they stand for.
_PROBLEMS = {
    KafkaError.UNKNOWN_TOPIC_OR_PART: "does not exist",
    KafkaError.TOPIC_EXCEPTION: "is not a valid topic name",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "is not authorised",
}


@dataclass(frozen=True)
class _Known:
    limits: Limits
    problem: str | None
    until: float


def producer_max_bytes(config: Mapping[str, Any]) -> int:
    """The ``message.max.bytes`` a producer made from ``config`` uses."""
    return int(config.get("message.max.bytes", DEFAULT_PRODUCER_MAX_BYTES))


class BrokerLimits:
    """``limits(topic)`` and ``problem(topic)`` of the topics one producer writes to."""

    def __init__(
        self,
        bootstrap: str | None,
        producer: Mapping[str, Any],
        ttl: float = 300.0,
        missing_ttl: float = 10.0,
        timeout: float = 10.0,
        unanswered_pause: float = 10.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._producer_max = producer_max_bytes(producer)
        self._ttl, self._missing_ttl, self._timeout = ttl, missing_ttl, timeout
        self._unanswered_pause = unanswered_pause
        self._ask_after = 0.0  # the broker did not answer: not asked again before this
        self._admin: AdminClient | None = None
        self._known: dict[str, _Known] = {}

    def limits(self, topic: str) -> Limits:
        return self._lookup(topic).limits

    def problem(self, topic: str) -> str | None:
        """Why ``topic`` cannot be written to (missing, invalid name...), or None."""
        return self._lookup(topic).problem

    def forget(self, topic: str) -> None:
        """Ask the broker again next time (after a send to ``topic`` failed)."""
        self._known.pop(topic, None)

    def _lookup(self, topic: str) -> _Known:
        now = time.monotonic()
        known = self._known.get(topic)
        if known is not None and now < known.until:
            return known
        if now < self._ask_after:
            return _Known(Limits(self._producer_max), None, now)
        if self._admin is None:
            self._admin = AdminClient(common(self._bootstrap, "sagalog-limits"))
        resource = ConfigResource(ResourceType.TOPIC, topic)
        try:
            future = self._admin.describe_configs([resource], request_timeout=self._timeout)
            config = future[resource].result(timeout=self._timeout)
            entry = config.get("max.message.bytes")
            topic_max = int(entry.value) if entry is not None and entry.value else None
            known = _Known(Limits(self._producer_max, topic_max), None, now + self._ttl)
        except KafkaException as error:
            kafka_error = error.args[0]
            problem = _PROBLEMS.get(kafka_error.code())
            if problem is None:  # the broker could not answer: the producer's limit for now
                log.warning("cannot read the limits of topic %s: %s", topic, kafka_error)
                return self._unanswered()
            known = _Known(Limits(self._producer_max), problem, now + self._missing_ttl)
        except FutureTimeout:  # no answer in time: the producer's limit for now, asked again
            log.warning(
                "cannot read the limits of topic %s: no answer in %s s", topic, self._timeout
            )
            return self._unanswered()
        except ValueError as error:  # a name the client refuses to ask about
            known = _Known(Limits(self._producer_max), f"is not a valid topic name ({error})", now)
        self._known[topic] = known
        return known

    def _unanswered(self) -> _Known:
        now = time.monotonic()
        self._ask_after = now + self._unanswered_pause
        return _Known(Limits(self._producer_max), None, now)


__all__ = ["BrokerLimits", "producer_max_bytes"]
