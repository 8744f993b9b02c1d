"""Task heartbeats on the real broker: a Task with ``HeartbeatSeconds: 3`` whose action runs 6 s.

The definition (``DEFINITION``, written per run with its own saga and service names) runs in
``sagas run``, its action in ``sagas worker`` (tests/integration/heartbeat_worker.py). An
execution whose action calls ``context.heartbeat()`` every second completes with the action's
output; one whose action never calls it fails its attempt with ``States.HeartbeatTimeout`` 3 s
after the action started, which its Catch takes (the late reply, when it comes, is ignored).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from sagas.publisher import Publisher
from stream_processors.core.documents import Documents
from stream_processors.core.instance import Instance
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

DEFINITION = """
WorkflowName: heartbeat_{run}
StartAt: Long
States:
  Long:
    Type: Task
    Service: Heartbeats-{run}
    Action: slow
    TimeoutSeconds: 60
    HeartbeatSeconds: 3
    Catch:
      - ErrorEquals: [States.HeartbeatTimeout]
        ResultPath: $.error
        Next: Lost
    End: true
  Lost:
    Type: Pass
    Result: lost
    ResultPath: $.outcome
    End: true
"""


def _output(instance: Instance) -> Any:
    assert isinstance(instance.data, Documents)
    return instance.data.document("")


def test_heartbeats_keep_a_long_task_alive_and_their_absence_fails_it(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    path = tmp_path / "heartbeats.yaml"
    path.write_text(DEFINITION.format(run=run))
    definition = load_definition(path)
    ensure_topics(SagaTopics.for_saga(definition), kafka.bootstrap)
    processes = SagaProcesses(
        kafka.bootstrap,
        tmp_path / "logs",
        saga_target=str(path),
        worker_targets={"heartbeats": "tests.integration.heartbeat_worker:worker"},
        env={"HEARTBEAT_SERVICE": f"Heartbeats-{run}"},
    )
    try:
        processor = processes.processor(tmp_path / "state")
        (worker,) = processes.workers()
        wait_for_log(processor, lambda t: len(restored_partitions(t)) == 8, 90, "restore")
        wait_for_log(worker, lambda t: " serving " in t, 90, "a serving worker")
        alive, silent = f"hb-{run}-alive", f"hb-{run}-silent"
        with Publisher(kafka.bootstrap, client_id="heartbeat-test") as publisher:
            publisher.start(definition, {"beat": True}, alive)
            publisher.start(definition, {"beat": False}, silent)
        kept = finished_instance(definition, kafka.bootstrap, alive)
        lost = finished_instance(definition, kafka.bootstrap, silent)
    except BaseException:
        print(processes.log_tails())
        raise
    finally:
        processes.stop_all()
    assert kept.status.value == "completed"
    assert _output(kept) == {"beat": True, "outcome": "done"}
    assert lost.status.value == "completed"
    assert _output(lost)["outcome"] == "lost"
    assert _output(lost)["error"]["Error"] == "States.HeartbeatTimeout"
    # The silent attempt failed about 3 s after its action started (its first, automatic
    # heartbeat), before its 6 s of work ended. (3 s leaves the beating one, every second,
    # room for a processor slowed down by a loaded machine.)
    journal = SagaTopics.for_saga(definition).journal
    entries = [x.entry for x in read_history(journal, silent, kafka.bootstrap)]
    started = next(e.at_ms for e in entries if e.timer == "heartbeat:Long")
    failed = next(e.at_ms for e in entries if e.kind == "StepFailed")
    assert 2900 <= failed - started <= 5500, failed - started
    beats = [x.entry for x in read_history(journal, alive, kafka.bootstrap)]
    assert sum(1 for e in beats if e.timer == "heartbeat:Long") >= 6  # one as it starts, 1/s
