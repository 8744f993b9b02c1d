"""The worker of tests/integration/test_task_heartbeats.py: an action that works for 6 s, calling
``context.heartbeat()`` every second when its input asks it to. Its service is named by the
test (``HEARTBEAT_SERVICE``): each run has its own task topic, so no run answers another's."""

from __future__ import annotations

import os
import time
from typing import Any

from sagas import CommandContext, Worker

SERVICE = os.environ.get("HEARTBEAT_SERVICE", "Heartbeats")
worker = Worker(f"{SERVICE}-worker", service=SERVICE)


@worker.action("slow")
def slow(task: Any, context: CommandContext) -> Any:
    for _ in range(6):
        time.sleep(1)
        if task.get("beat"):
            context.heartbeat()
    return {**task, "outcome": "done"}
