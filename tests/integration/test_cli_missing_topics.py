"""A ``sagas`` command about a saga whose topics do not exist ends with one line naming them.

Against the real broker, for a saga declared in a scratch module and never run: reading its
history or state, replaying it, acting on one of its instances, listing or selecting them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import KafkaCluster
from tests.integration.saga_harness import sagas_cli

pytestmark = pytest.mark.kafka

NEVER_RUN = """
from examples.order_fulfillment.messages import MakePayment, OrderPlaced, OrderState
from examples.order_fulfillment.messages import PaymentCompleted
from sagas import Saga, Step


class NeverRun(Saga, name="{name}"):
    start = OrderPlaced
    state = OrderState
    begin = staticmethod(lambda event: None)
    pay = Step(MakePayment, success=PaymentCompleted)
"""


@pytest.mark.parametrize(
    "command",
    [
        ["history", "never_run:NeverRun", "o-1"],
        ["state", "never_run:NeverRun", "o-1", "--at", "2"],
        ["replay", "never_run:NeverRun", "--verify"],
        ["retry", "never_run:NeverRun", "o-1", "--reason", "checking"],
        ["list", "never_run:NeverRun", "--status", "failed"],
        ["cancel", "never_run:NeverRun", "--where", "status=running", "--reason", "x", "--dry-run"],
    ],
)
def test_a_saga_never_run_has_no_topics_and_says_so(
    command: list[str], kafka: KafkaCluster, tmp_path: Path
) -> None:
    name = f"never_run_{uuid.uuid4().hex[:8]}"
    (tmp_path / "never_run.py").write_text(NEVER_RUN.format(name=name))
    done = sagas_cli(kafka.bootstrap, *command, cwd=tmp_path, path=(tmp_path,), timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and name in lines[0], lines[0]
