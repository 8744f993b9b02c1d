"""A definition's flow control (``stream_processors.declarative.flow_control``): ``Limits``, a
Task's ``Limit`` and ``Priority`` compile to the ``Throttle`` a Python saga's declaration gives;
bad ones fail at load naming the state, the field and the line; ``LimitQueue`` runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sagas.testing import LimitQueue
from stream_processors.core.tasks import json_text
from stream_processors.core.throttle import Limit, compile_throttle
from stream_processors.declarative.definition import load_definition, problems
from stream_processors.declarative.machine import ExecutionStarted, compile_machine
from stream_processors.declarative.problems import DefinitionError

LIMITED = """\
Limits:
  payments: {Rate: 20, InFlight: 5}
  ledger-export: {Rate: 2, Per: 60, Guard: 1.5}
Priority: {Path: $.customer.priority, AgingSeconds: 30}
StartAt: Charge
States:
  Charge: {Type: Task, Resource: "payments:charge", Next: Refund}
  Refund: {Type: Task, Service: payments, Action: refund, Next: Export}
  Export: {Type: Task, Resource: "ledger:export", Limit: ledger-export, Next: Mail}
  Mail: {Type: Task, Resource: "mail:send", End: true}
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limited.yaml"
    path.write_text(text)
    return path


def _started(input: Any) -> ExecutionStarted:
    return ExecutionStarted(execution="e-1", input=json_text(input))


def test_limits_limit_and_priority_compile_to_the_throttle(tmp_path: Path) -> None:
    throttle = load_definition(_file(tmp_path, LIMITED)).throttle
    assert throttle is not None
    assert throttle.limits == {
        "payments": Limit(rate=20, in_flight=5),
        "ledger-export": Limit(rate=2, per=60, guard=1.5),
    }
    assert throttle.steps == {"Export": "ledger-export"}
    assert throttle.aging_ms == 30_000
    # Each Task's limit, as the processor asks for it (node, command topic).
    assert throttle.limit_of("Charge", "payments.tasks") == "payments"
    assert throttle.limit_of("Refund", "payments.tasks") == "payments"
    assert throttle.limit_of("Export", "ledger.tasks") == "ledger-export"
    assert throttle.limit_of("Mail", "mail.tasks") is None
    # The priority is read from the execution's input; missing or not a number: 0.
    assert throttle.priority_of(_started({"customer": {"priority": 7}})) == 7
    assert throttle.priority_of(_started({"customer": {}})) == 0
    assert throttle.priority_of(_started({"customer": {"priority": "high"}})) == 0


def test_the_definition_compiles_as_the_python_declaration_does() -> None:
    limits = {"payments": {"Rate": 3}, "bank": {"InFlight": 1}}
    states = {
        "A": {"Type": "Task", "Resource": "payments:a", "Next": "B"},
        "B": {"Type": "Task", "Resource": "bank:b", "Limit": "bank", "End": True},
    }
    definition = compile_machine({"Limits": limits, "StartAt": "A", "States": states}, "d")
    python = compile_throttle(
        {"payments": Limit(rate=3), "bank": Limit(in_flight=1)}, {"B": "bank"}, None, None
    )
    assert definition.throttle == python


def test_no_limits_no_throttle() -> None:
    states = {"A": {"Type": "Pass", "End": True}}
    assert compile_machine({"StartAt": "A", "States": states}, "d").throttle is None


@pytest.mark.parametrize(
    ("change", "state", "field", "message"),
    [
        (
            ("Limit: ledger-export", "Limit: ledger"),
            "Export",
            "Limit",
            "names limit 'ledger', which is not one of the saga's limits",
        ),
        (("Rate: 20,", "Rate: 0,"), None, "Limits.payments.Rate", "less than the minimum of 1"),
        (("{Rate: 20, InFlight: 5}", "{Per: 2}"), None, "Limits.payments", "Rate or InFlight"),
        (("InFlight: 5", "Burst: 5"), None, "Limits.payments.Burst", "a field of a limit"),
        (("payments: {", "paymnets: {"), None, "Limits.paymnets", "no Task counts against"),
        (("$.customer.priority", "'$.customer[*]'"), None, "Priority.Path", "Reference Path"),
        (("AgingSeconds: 30", "AgingSeconds: 0"), None, "Priority.AgingSeconds", "0"),
    ],
)
def test_a_bad_flow_control_fails_at_load_naming_state_field_and_line(
    tmp_path: Path, change: tuple[str, str], state: str | None, field: str, message: str
) -> None:
    text = LIMITED.replace(*change)
    assert text != LIMITED
    path = _file(tmp_path, text)
    found = problems(path)
    assert [(p.state, p.field) for p in found] == [(state, field)]
    assert message in found[0].message
    line = next(n for n, line in enumerate(text.splitlines(), 1) if change[1] in line)
    assert found[0].line == line
    with pytest.raises(DefinitionError, match="field '" + field.replace(".", r"\.")):
        load_definition(path)


def test_the_compiler_refuses_what_the_schema_would_without_it() -> None:
    """``compile_machine`` on a document that skipped the schema: the ``Limit``'s own check."""
    states = {"A": {"Type": "Task", "Resource": "payments:a", "End": True}}
    document = {"Limits": {"payments": {"Rate": 0}}, "StartAt": "A", "States": states}
    with pytest.raises(DefinitionError, match=r"field 'Limits\.payments'.*rate must be"):
        compile_machine(document, "d")


def test_a_limited_task_queues_and_is_released_in_virtual_time(tmp_path: Path) -> None:
    queue = LimitQueue(_file(tmp_path, LIMITED), "ledger-export")  # Rate 2 per 60 s
    for n in range(3):
        assert queue.offer(f"e-{n}", input={"customer": {"priority": 0}}) == (n == 0)
    queue.offer("vip", input={"customer": {"priority": 9}})  # queued behind e-1 and e-2
    assert queue.queued == ["e-1", "e-2", "vip"]
    queue.advance(seconds=30)
    assert queue.sent_order == ["e-0", "vip"]  # the priority one took the next slot
    queue.advance(seconds=60)
    assert queue.sent_order == ["e-0", "vip", "e-1", "e-2"]
    times = [at for at, _ in queue.sent]
    # Never more than the Rate in any Per: a third send waits for the first to be 60 s old.
    assert all(sum(t - 60_000 < u <= t for u in times) <= 2 for t in times)
    assert times[2] - times[0] >= 60_000


def test_the_compiler_refuses_a_non_positive_aging_naming_its_field() -> None:
    states = {"A": {"Type": "Pass", "End": True}}
    priority = {"Path": "$.p", "AgingSeconds": -1}
    document = {"Priority": priority, "StartAt": "A", "States": states}
    with pytest.raises(DefinitionError, match=r"field 'Priority\.AgingSeconds'.*positive"):
        compile_machine(document, "d")
