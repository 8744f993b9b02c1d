"""Sagalog on a secured listener (SASL_SSL, SCRAM-SHA-512, a locally made CA), end to end.

tools/kafka/broker.sh gives the Java broker it starts a SASL_SSL listener and writes what a client
needs to .kafka/<port>/client-sasl.properties (``broker.sh with`` exports its path as
SAGALOG_TEST_SECURE_CONFIG). With those settings:

- a client without credentials is refused within seconds, in one line naming the listener and
  the settings to add; a wrong password is an authentication error naming the user, not the
  password;
- the order saga runs end to end: ``sagas run`` and ``sagas worker`` subprocesses that take the
  settings from SAGALOG_KAFKA_CONFIG only, a publisher and journal readers in this process.

Without the listener the tests skip on a developer's machine and fail under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_processors.kafka.config import read_properties
from stream_processors.kafka.errors import KafkaUnavailable, connect_admin
from stream_processors.kafka.topics import ensure_topics
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import REPO_ROOT, SAGA_TARGET, TOPICS, SagaRun

pytestmark = pytest.mark.kafka


def _settings_file(kafka: KafkaCluster) -> Path:
    named = os.environ.get("SAGALOG_TEST_SECURE_CONFIG")
    port = kafka.bootstrap.rsplit(":", 1)[-1]
    path = Path(named) if named else REPO_ROOT / ".kafka" / port / "client-sasl.properties"
    if not path.is_file():
        why = (
            f"no secured listener's settings at {path}: start the broker with "
            "tools/kafka/broker.sh (one whose storage predates the SASL_SSL listener has no "
            "user for it: make kafka-reset)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return path


@pytest.fixture
def secured(kafka: KafkaCluster, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """(the settings file, the secured listener's address); this process has no settings yet."""
    for variable in list(os.environ):
        if variable.startswith("SAGALOG_KAFKA_"):
            monkeypatch.delenv(variable)
    path = _settings_file(kafka)
    return path, read_properties(path)["bootstrap.servers"]


def test_a_client_without_credentials_is_told_what_to_set(secured: tuple[Path, str]) -> None:
    _, listener = secured
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SAGALOG_KAFKA_")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sagas", "topics", "create", SAGA_TARGET, "--bootstrap", listener],
        env=environment | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert f"{listener} refused the connection of a PLAINTEXT client" in errors[0]
    assert "SAGALOG_KAFKA_SECURITY_PROTOCOL" in errors[0] and "--kafka-config" in errors[0]
    assert "Traceback" not in result.stderr
    assert took < 20, f"the refusal took {took:.1f} s"


def test_a_wrong_password_is_an_authentication_error(
    secured: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, listener = secured
    monkeypatch.setenv("SAGALOG_KAFKA_CONFIG", str(path))
    monkeypatch.setenv("SAGALOG_KAFKA_SASL_PASSWORD", "not-the-password")
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as caught:
        connect_admin(listener, "secured-test")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"{listener} rejected the credentials of user sagalog (SCRAM-SHA-512)" in message
    assert "not-the-password" not in message
    # ...and the right one is accepted.
    monkeypatch.delenv("SAGALOG_KAFKA_SASL_PASSWORD")
    assert connect_admin(listener, "secured-test").list_topics(timeout=10).brokers


def test_the_order_saga_runs_end_to_end_over_sasl_ssl(
    secured: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, listener = secured
    # Subprocesses inherit it; this process's publisher and readers read it on each client.
    monkeypatch.setenv("SAGALOG_KAFKA_CONFIG", str(path))
    ensure_topics(TOPICS, listener)  # before the run's readers look for them (a fresh broker)
    run = SagaRun(KafkaCluster(listener, connect_admin(listener, "secured-test")), tmp_path)
    try:
        orders = run.plan(20, seed=7, failures=0.2)
        run.start()
        run.publish(orders)
        assert run.outcomes(orders) == {o.event.order_id: o.expected for o in orders}
        logs = "\n".join(p.log_path.read_text() for p in run.processes.started)
        assert read_properties(path)["sasl.password"] not in logs
        assert TOPICS.inbox in run.kafka.admin.list_topics(timeout=10).topics
    finally:
        run.close()
