"""The publisher's producer settings: sent at once by default, lingering only when asked."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

import sagas.publisher as publisher_module
from sagas.publisher import Publisher


class RecordingProducer:
    """Stands in for confluent-kafka's producer: keeps the configuration it was given."""

    configs: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.configs.append(config)


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    RecordingProducer.configs = []
    monkeypatch.setattr(publisher_module, "Producer", RecordingProducer)
    return RecordingProducer.configs


def test_events_are_sent_as_soon_as_they_are_queued(configs: list[dict[str, Any]]) -> None:
    Publisher("127.0.0.1:1", record_schemas=False)
    (config,) = configs
    assert config["linger.ms"] == 0
    assert config["enable.idempotence"] is True and config["acks"] == "all"


def test_linger_is_the_callers_choice(configs: list[dict[str, Any]]) -> None:
    Publisher("127.0.0.1:1", record_schemas=False, linger_ms=20)
    assert configs[0]["linger.ms"] == 20


def test_a_negative_linger_is_refused(configs: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="linger_ms must be 0 or more, not -1"):
        Publisher("127.0.0.1:1", record_schemas=False, linger_ms=-1)
    assert configs == []
