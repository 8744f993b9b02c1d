"""A declarative definition started by an event on a service's topic (``StartOn``), on the real
broker.

The definition names the event by its Avro schema alone (``acme.signups.UserSignedUp``, an
``.avsc`` beside the definition, no Python class), the topic it comes on and the field that
names the execution. A publisher sends three such events to the topic (``Publisher.start``
builds them from JSON, as ``sagas start`` does); the processor routes them to its inbox and
starts one execution each, whose input is the event's fields; a second event with the same id
starts nothing new.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sagas.publisher import Publisher
from stream_processors.core.documents import Documents
from stream_processors.declarative.definition import load_definition
from stream_processors.kafka.topics import SagaTopics, ensure_topics
from stream_processors.tools.history import read_history
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    SagaProcesses,
    finished_instance,
    restored_partitions,
    wait_for_log,
)

pytestmark = pytest.mark.kafka

SCHEMA = {
    "type": "record",
    "name": "UserSignedUp",
    "namespace": "acme.signups",
    "fields": [
        {"name": "userId", "type": "string"},
        {"name": "email", "type": "string"},
        {"name": "plan", "type": ["null", "string"], "default": None},
    ],
}
DEFINITION = """
WorkflowName: signup_{run}
StartOn: {{Topic: signups-{run}, Event: acme.signups.UserSignedUp, Id: $.userId}}
StartAt: Plan
States:
  Plan:
    Type: Choice
    Choices:
      - {{Variable: $.plan, IsNull: true, Next: Free}}
    Default: Paid
  Free: {{Type: Pass, Result: free, ResultPath: $.tier, End: true}}
  Paid: {{Type: Pass, Result: paid, ResultPath: $.tier, End: true}}
"""


def test_an_event_on_the_source_topic_starts_an_execution(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "UserSignedUp.avsc").write_text(json.dumps(SCHEMA))
    path = tmp_path / "signup.yaml"
    path.write_text(DEFINITION.format(run=run))
    definition = load_definition(path)
    assert definition.source_topics() == {f"signups-{run}"}
    ensure_topics(SagaTopics.for_saga(definition), kafka.bootstrap)
    processes = SagaProcesses(
        kafka.bootstrap, tmp_path / "logs", saga_target=str(path), worker_targets={}
    )
    try:
        processor = processes.processor(tmp_path / "state")
        wait_for_log(processor, lambda t: len(restored_partitions(t)) == 8, 90, "restore")
        with Publisher(kafka.bootstrap, client_id="start-on-test") as publisher:
            free = publisher.start(definition, {"email": "a@x"}, f"u-{run}-1")
            paid = publisher.start(definition, {"email": "b@x", "plan": "pro"}, f"u-{run}-2")
            again = publisher.start(definition, {"email": "c@x", "plan": "pro"}, f"u-{run}-1")
        assert (free, again) == (f"u-{run}-1", f"u-{run}-1")
        outputs = {}
        for execution in (free, paid):
            instance = finished_instance(definition, kafka.bootstrap, execution)
            assert instance.status.value == "completed"
            assert isinstance(instance.data, Documents)
            outputs[execution] = instance.data.document("")
    except BaseException:
        print(processes.log_tails())
        raise
    finally:
        processes.stop_all()
    assert outputs[free] == {"userId": free, "email": "a@x", "plan": None, "tier": "free"}
    assert outputs[paid] == {"userId": paid, "email": "b@x", "plan": "pro", "tier": "paid"}
    # The second event for u-...-1 started nothing: one SagaStarted in its history.
    journal = SagaTopics.for_saga(definition).journal
    kinds = [x.entry.kind for x in read_history(journal, free, kafka.bootstrap)]
    assert kinds.count("SagaStarted") == 1
