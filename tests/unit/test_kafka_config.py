"""Where every client's Kafka settings come from, and how they are shown (no broker needed).

Settings: a properties file (``--kafka-config`` over ``SAGALOG_KAFKA_CONFIG``) < the
``SAGALOG_KAFKA_*`` variables < what the code sets; bootstrap: explicit > KAFKA_BOOTSTRAP_SERVERS
> the user's bootstrap.servers > the default. Secrets never appear in what is shown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from stream_processors.kafka import config as kafka_config
from stream_processors.kafka.config import (
    KafkaConfigError,
    bootstrap_servers,
    common,
    consumer_config,
    producer_config,
    read_properties,
    redacted,
    setting_name,
    use_config_file,
    user_settings,
)
from stream_processors.kafka.errors import explain

SECURED = """\
# a comment
! another comment

bootstrap.servers = broker.example:9094
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=sagalog
sasl.password=pa=ss word
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No settings from the machine running the tests, and no --kafka-config left behind."""
    for variable in list(os.environ):
        if variable.startswith("SAGALOG_KAFKA_") or variable == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(variable)
    yield
    use_config_file(None)


@pytest.fixture
def secured_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(SECURED)
    return path


def test_properties_are_key_value_lines_with_comments(secured_file: Path) -> None:
    assert read_properties(secured_file) == {
        "bootstrap.servers": "broker.example:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "sagalog",
        "sasl.password": "pa=ss word",  # the first = splits; the value keeps the rest
    }


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("sasl.password hunter2", "'sasl.password ...'"),
        ("=value", "'=...'"),
        ("bad key=x", "'bad=...'"),
    ],
)
def test_a_malformed_line_names_file_and_line_but_not_its_value(
    tmp_path: Path, line: str, shown: str
) -> None:
    path = tmp_path / "bad.properties"
    path.write_text(f"# fine\nsecurity.protocol=SASL_SSL\n{line}\n")
    with pytest.raises(KafkaConfigError) as caught:
        read_properties(path)
    message = str(caught.value)
    assert f"{path}, line 3:" in message and shown in message
    assert "hunter2" not in message and "value" not in message.split("found")[-1]


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match="cannot read Kafka client settings from"):
        read_properties(tmp_path / "absent.properties")


def test_variables_map_to_librdkafka_names() -> None:
    assert setting_name("SAGALOG_KAFKA_SECURITY_PROTOCOL") == "security.protocol"
    assert setting_name("SAGALOG_KAFKA_SSL_CA_LOCATION") == "ssl.ca.location"
    assert setting_name("SAGALOG_KAFKA_CONFIG") is None  # the file's name, not a setting
    assert setting_name("KAFKA_BOOTSTRAP_SERVERS") is None
    assert setting_name("SAGALOG_KAFKA_") is None


def test_variables_override_the_file_and_an_empty_one_removes_its_setting(
    secured_file: Path,
) -> None:
    environ = {
        "SAGALOG_KAFKA_CONFIG": str(secured_file),
        "SAGALOG_KAFKA_SASL_USERNAME": "other",
        "SAGALOG_KAFKA_SASL_MECHANISM": "",
        "SAGALOG_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
    }
    settings = user_settings(environ)
    assert settings["sasl.username"] == "other"
    assert "sasl.mechanism" not in settings
    assert settings["ssl.ca.location"] == "/etc/ca.pem"
    assert settings["security.protocol"] == "SASL_SSL"


def test_the_cli_file_wins_over_the_variable(
    secured_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.properties"
    other.write_text("security.protocol=SSL\n")
    monkeypatch.setenv("SAGALOG_KAFKA_CONFIG", str(other))
    assert user_settings()["security.protocol"] == "SSL"
    use_config_file(secured_file)
    assert user_settings()["security.protocol"] == "SASL_SSL"


def test_a_bad_cli_file_fails_when_given(tmp_path: Path) -> None:
    bad = tmp_path / "bad.properties"
    bad.write_text("no separator\n")
    with pytest.raises(KafkaConfigError):
        use_config_file(bad)
    assert kafka_config.config_file({}) is None


def test_bootstrap_precedence(secured_file: Path) -> None:
    environ = {"SAGALOG_KAFKA_CONFIG": str(secured_file)}
    assert bootstrap_servers(None, {}) == "127.0.0.1:9092"
    assert bootstrap_servers(None, environ) == "broker.example:9094"
    environ["SAGALOG_KAFKA_BOOTSTRAP_SERVERS"] = "variable:9094"
    assert bootstrap_servers(None, environ) == "variable:9094"
    environ["KAFKA_BOOTSTRAP_SERVERS"] = "kafka:9092"
    assert bootstrap_servers(None, environ) == "kafka:9092"
    assert bootstrap_servers("explicit:9092", environ) == "explicit:9092"


def test_every_client_gets_the_user_settings_under_the_engines_own(
    secured_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGALOG_KAFKA_CONFIG", str(secured_file))
    monkeypatch.setenv("SAGALOG_KAFKA_ISOLATION_LEVEL", "read_uncommitted")
    monkeypatch.setenv("SAGALOG_KAFKA_CLIENT_ID", "theirs")
    consumer = consumer_config(None, "ours", "group")
    producer = producer_config("explicit:1", "ours", "tx")
    for config in (consumer, producer, common(None, "ours")):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.password"] == "pa=ss word"
        assert config["client.id"] == "ours"
    assert consumer["isolation.level"] == "read_committed"  # the engine's guarantee holds
    assert consumer["bootstrap.servers"] == "broker.example:9094"
    assert producer["bootstrap.servers"] == "explicit:1"
    assert producer["transactional.id"] == "tx"


def test_batching_and_compression_are_the_users_to_tune_but_not_idempotence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert producer_config(None, "ours")["compression.type"] == "lz4"  # the default
    monkeypatch.setenv("SAGALOG_KAFKA_COMPRESSION_TYPE", "zstd")
    monkeypatch.setenv("SAGALOG_KAFKA_LINGER_MS", "20")
    monkeypatch.setenv("SAGALOG_KAFKA_ENABLE_IDEMPOTENCE", "false")
    monkeypatch.setenv("SAGALOG_KAFKA_ACKS", "1")
    producer = producer_config(None, "ours", "tx")
    assert (producer["compression.type"], producer["linger.ms"]) == ("zstd", "20")
    assert (producer["enable.idempotence"], producer["acks"]) == (True, "all")


def test_secrets_are_redacted() -> None:
    config = {
        "bootstrap.servers": "b:1",
        "sasl.username": "sagalog",
        "sasl.password": "p",
        "ssl.key.password": "p",
        "ssl.keystore.password": "p",
        "sasl.oauthbearer.client.secret": "p",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
        "some.future.secret.thing": "p",
    }
    shown = redacted(config)
    assert shown["bootstrap.servers"] == "b:1" and shown["sasl.username"] == "sagalog"
    assert [k for k, v in shown.items() if v == "[redacted]"] == list(config)[2:]
    assert config["sasl.password"] == "p"  # the original is untouched


def _error(code: int, text: str) -> KafkaError:
    return KafkaError(code, text)


PLAIN = {"bootstrap.servers": "127.0.0.1:9694"}
SASL = {
    "bootstrap.servers": "127.0.0.1:9694",
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "sagalog",
    "sasl.password": "hunter2",
}
FAILED = _error(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")


def test_a_plaintext_client_the_listener_drops_is_told_to_set_security() -> None:
    line = explain(FAILED, PLAIN, [_error(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")])
    assert line.startswith("127.0.0.1:9694 refused the connection of a PLAINTEXT client")
    assert "SAGALOG_KAFKA_SECURITY_PROTOCOL" in line and "--kafka-config FILE" in line
    assert "\n" not in line


def test_refused_credentials_name_the_user_but_not_the_password() -> None:
    reported = [_error(KafkaError._AUTHENTICATION, "SASL authentication error: invalid")]
    line = explain(FAILED, SASL, reported)
    assert "127.0.0.1:9694 rejected the credentials of user sagalog (SCRAM-SHA-512)" in line
    assert "hunter2" not in line


def test_other_causes_get_their_own_line() -> None:
    refused = _error(
        KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9694 failed: Connection refused"
    )
    assert explain(FAILED, PLAIN, [refused]).startswith("nothing listens at 127.0.0.1:9694")
    untrusted = _error(KafkaError._SSL, "x: SSL handshake failed: certificate verify failed, hint")
    assert "ssl.ca.location" in explain(FAILED, SASL, [untrusted])
    plaintext = _error(KafkaError._TRANSPORT, "connecting to a PLAINTEXT broker listener?")
    assert "is a PLAINTEXT listener" in explain(FAILED, SASL, [plaintext])
    assert "hunter2" not in explain(FAILED, SASL, [])


def test_the_restorer_fetches_again_soon_after_its_bounded_queue_fills() -> None:
    """librdkafka postpones a partition's next fetch by ``fetch.queue.backoff.ms`` (1 s by
    default) once the fetch queue is full; with the restorer's small queue a large partition
    was read at a sixteenth of the rate (docs/benchmarks.md, 2026-12-03 07:10). The settings
    must also be ones librdkafka accepts: building a consumer checks their names and values."""
    from confluent_kafka import Consumer

    from stream_processors.kafka.clients import RESTORE_QUEUE_KBYTES, restorer_settings

    settings = restorer_settings("orders")
    assert settings["queued.max.messages.kbytes"] == RESTORE_QUEUE_KBYTES
    assert settings["fetch.queue.backoff.ms"] <= 10
    Consumer(consumer_config("127.0.0.1:1", "test", None, **settings)).close()
