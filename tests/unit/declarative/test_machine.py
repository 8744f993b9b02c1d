"""States Language definitions run on the pure core through the public test kit.

The seed 001 onboarding (``examples/user_onboarding/onboarding.json``, as printed in the seed),
and small machines per state type, with expected documents from the States Language
specification: Task data flow and Retry/Catch, Choice, Pass, Wait, Parallel, Map, Succeed, Fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sagas.testing import SagaTest
from stream_processors.core.documents import Documents
from stream_processors.core.tasks import TaskCommand, TaskFailed, TaskSucceeded
from stream_processors.declarative.machine import ExecutionStarted, compile_machine
from stream_processors.declarative.problems import DefinitionError

SEED_001 = Path(__file__).parents[3] / "examples" / "user_onboarding" / "onboarding.json"


def _run(machine: dict[str, Any], document: Any, name: str = "m") -> SagaTest:
    test = SagaTest(compile_machine(machine, name))
    test.start(ExecutionStarted(execution="x-1", input=json.dumps(document)))
    return test


def _task(test: SagaTest, state: str | None = None) -> tuple[Any, TaskCommand]:
    sent = test.expect_command(TaskCommand, step=state)
    return sent, sent.command


def _output(test: SagaTest) -> Any:
    data = test.state
    assert isinstance(data, Documents)
    return data.document("")


def _succeed(test: SagaTest, output: Any, state: str | None = None) -> TaskCommand:
    sent, command = _task(test, state)
    test.reply(sent, TaskSucceeded(output=json.dumps(output)))
    return command


def _fail(test: SagaTest, error: str, state: str | None = None) -> None:
    sent, _ = _task(test, state)
    test.reply(sent, TaskFailed(error=error, cause="because"))


def test_the_seed_onboarding_runs_its_happy_path() -> None:
    test = SagaTest(compile_machine(json.loads(SEED_001.read_text()), "onboarding"))
    test.start(ExecutionStarted(execution="u-1", input='{"email":"ada@example.com"}'))
    first = _succeed(test, {"userId": "u-1"}, "CreateUser")
    assert (first.service, first.action) == ("AuthService", "createUser")
    assert json.loads(first.input) == {"email": "ada@example.com"}
    provision = _succeed(test, {"bucket": "b"}, "ProvisionResources")
    assert json.loads(provision.input) == {"userId": "u-1"}  # ResultPath "$": the output
    _succeed(test, None, "SendWelcomeEmail")
    _succeed(test, {"notified": True}, "NotifyInternalTeams")
    assert test.status == "completed"
    assert _output(test) == {"notified": True}


def test_the_seed_retries_provisioning_three_times_then_rolls_back() -> None:
    test = SagaTest(compile_machine(json.loads(SEED_001.read_text()), "onboarding"))
    test.start(ExecutionStarted(execution="u-1", input="{}"))
    _succeed(test, {"userId": "u-1"}, "CreateUser")
    delays = []
    for _ in range(3):  # MaxAttempts 3: retries after the first attempt
        _fail(test, "ProvisioningError", "ProvisionResources")
        due = test.due("retry:ProvisionResources")
        delays.append(due - test.now_ms)
        test.advance(seconds=(due - test.now_ms) / 1000)
    assert delays == [5000, 10000, 20000]  # IntervalSeconds 5, BackoffRate 2.0
    _fail(test, "ProvisioningError", "ProvisionResources")
    rollback = _succeed(test, {}, "RollbackUserCreation")
    assert json.loads(rollback.input) == {"Error": "ProvisioningError", "Cause": "because"}
    alert = _succeed(test, {}, "SendErrorNotification")
    assert alert.action == "sendAdminAlert"
    assert test.status == "completed"


def test_the_seed_catches_an_auth_error_without_retrying() -> None:
    test = SagaTest(compile_machine(json.loads(SEED_001.read_text()), "onboarding"))
    test.start(ExecutionStarted(execution="u-2", input="{}"))
    _fail(test, "AuthServiceError", "CreateUser")
    assert not test.timers
    _succeed(test, {}, "SendErrorNotification")
    assert test.status == "completed"


def test_an_uncaught_error_fails_the_execution() -> None:
    test = SagaTest(compile_machine(json.loads(SEED_001.read_text()), "onboarding"))
    test.start(ExecutionStarted(execution="u-3", input="{}"))
    _fail(test, "SomethingElse", "CreateUser")
    assert test.status == "failed"


TASK = {"Type": "Task", "Service": "S", "Action": "a"}


def test_task_data_flow_input_parameters_selector_result_and_output_paths() -> None:
    machine = {
        "StartAt": "T",
        "States": {
            "T": {
                **TASK,
                "InputPath": "$.order",
                "Parameters": {"id.$": "$.id", "fixed": 1, "exec.$": "$$.Execution.Id"},
                "ResultSelector": {"total.$": "$.sum"},
                "ResultPath": "$.result",
                "OutputPath": "$.result",
                "End": True,
            }
        },
    }
    test = _run(machine, {"order": {"id": "o-1"}, "other": True})
    command = _succeed(test, {"sum": 42, "noise": 0})
    assert json.loads(command.input) == {"id": "o-1", "fixed": 1, "exec": "x-1"}
    assert _output(test) == {"total": 42}


def test_result_path_null_keeps_the_input() -> None:
    machine = {"StartAt": "T", "States": {"T": {**TASK, "ResultPath": None, "End": True}}}
    test = _run(machine, {"keep": 1})
    _succeed(test, {"dropped": 2})
    assert _output(test) == {"keep": 1}


def test_retriers_count_separately_and_catchers_match_in_order() -> None:
    machine = {
        "StartAt": "T",
        "States": {
            "T": {
                **TASK,
                "Retry": [
                    {"ErrorEquals": ["A"], "MaxAttempts": 1, "IntervalSeconds": 1},
                    {"ErrorEquals": ["States.ALL"], "MaxAttempts": 1, "IntervalSeconds": 2},
                ],
                "Catch": [
                    {"ErrorEquals": ["B"], "Next": "B", "ResultPath": "$.error"},
                    {"ErrorEquals": ["States.ALL"], "Next": "Other"},
                ],
                "End": True,
            },
            "B": {"Type": "Pass", "End": True},
            "Other": {"Type": "Fail", "Error": "X"},
        },
    }
    test = _run(machine, {"in": 1})
    _fail(test, "A")
    assert test.due("retry:T") - test.now_ms == 1000
    test.advance(seconds=1)
    _fail(test, "B")  # A's retrier is spent for A only: B takes the second retrier
    assert test.due("retry:T") - test.now_ms == 2000
    test.advance(seconds=2)
    _fail(test, "B")  # both spent: the first matching catcher
    assert test.status == "completed"
    assert _output(test) == {"in": 1, "error": {"Error": "B", "Cause": "because"}}


def test_task_failed_matches_everything_but_a_timeout() -> None:
    machine = {
        "StartAt": "T",
        "States": {
            "T": {
                **TASK,
                "TimeoutSeconds": 5,
                "Catch": [
                    {"ErrorEquals": ["States.TaskFailed"], "Next": "Failed"},
                    {"ErrorEquals": ["States.Timeout"], "Next": "TimedOut"},
                ],
                "End": True,
            },
            "Failed": {"Type": "Succeed"},
            "TimedOut": {"Type": "Pass", "Result": "late", "End": True},
        },
    }
    test = _run(machine, {})
    test.advance(seconds=5)
    assert test.status == "completed"
    assert _output(test) == "late"


def test_choice_rules_pass_and_default() -> None:
    machine = {
        "StartAt": "C",
        "States": {
            "C": {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.n", "NumericGreaterThan": 10},
                            {"Variable": "$.kind", "StringEquals": "big"},
                        ],
                        "Next": "Big",
                    },
                    {"Variable": "$.n", "IsNumeric": True, "Next": "Some"},
                ],
                "Default": "None",
            },
            "Big": {"Type": "Pass", "Result": {"size": "big"}, "ResultPath": "$.out", "End": True},
            "Some": {"Type": "Pass", "Parameters": {"n.$": "$.n"}, "End": True},
            "None": {"Type": "Succeed", "OutputPath": "$.why"},
        },
    }
    assert _output(_run(machine, {"n": 11, "kind": "big"})) == {
        "n": 11,
        "kind": "big",
        "out": {"size": "big"},
    }
    assert _output(_run(machine, {"n": 3, "kind": "big"})) == {"n": 3}
    assert _output(_run(machine, {"n": "x", "kind": "small", "why": "none"})) == "none"
    missing = _run(machine, {"why": "none"})  # a rule's Variable that is not there
    assert missing.status == "failed"
    assert "States.Runtime" in (missing.instance.reason or "")


def test_no_choice_matched_fails_the_execution() -> None:
    machine = {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.a", "IsNull": True, "Next": "E"}]},
            "E": {"Type": "Succeed"},
        },
    }
    test = _run(machine, {"a": 1})
    assert test.status == "failed"
    assert "no rule matched" in (test.instance.reason or "")


def test_wait_seconds_path_and_timestamp() -> None:
    machine = {
        "StartAt": "W",
        "States": {
            "W": {"Type": "Wait", "SecondsPath": "$.delay", "Next": "W2"},
            "W2": {"Type": "Wait", "Timestamp": "2023-11-14T22:20:00Z", "End": True},
        },
    }
    test = _run(machine, {"delay": 30})
    assert test.due("sleep:W") - test.now_ms == 30_000
    test.advance(seconds=30)
    assert test.due("sleep:W2") == 1_700_000_400_000
    test.advance(seconds=400)
    assert test.status == "completed"
    assert _output(test) == {"delay": 30}


def test_parallel_outputs_are_an_array_in_branch_order() -> None:
    machine = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "A", "States": {"A": {**TASK, "Action": "a", "End": True}}},
                    {"StartAt": "B", "States": {"B": {"Type": "Pass", "End": True}}},
                ],
                "ResultPath": "$.both",
                "End": True,
            }
        },
    }
    test = _run(machine, {"x": 1})
    _succeed(test, {"a": True}, None)
    assert test.status == "completed"
    assert _output(test) == {"x": 1, "both": [{"a": True}, {"x": 1}]}


def test_a_failed_branch_fails_the_parallel_into_its_catch() -> None:
    machine = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "A", "States": {"A": {**TASK, "End": True}}},
                    {"StartAt": "B", "States": {"B": {"Type": "Fail", "Error": "Nope"}}},
                ],
                "Catch": [{"ErrorEquals": ["Nope"], "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "End": True},
        },
    }
    test = _run(machine, {})
    # The other branch's task is stopped at once (nothing would undo it): no reply awaited.
    assert test.status == "completed"
    assert _output(test)["Error"] == "Nope"
    sent = test.sent[0]
    assert test.feed(TaskSucceeded(output="1"), sent.command_id).ignored


def test_map_items_selector_concurrency_and_results() -> None:
    machine = {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "MaxConcurrency": 2,
                "ItemSelector": {"value.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index"},
                "ItemProcessor": {"StartAt": "Double", "States": {"Double": {**TASK, "End": True}}},
                "ResultPath": "$.results",
                "End": True,
            }
        },
    }
    test = _run(machine, {"items": [1, 2, 3]})
    assert len(test.outstanding) == 2  # MaxConcurrency
    for _ in range(3):
        sent = test.outstanding[0]
        item = json.loads(sent.command.input)
        test.reply(sent, TaskSucceeded(output=json.dumps(item["value"] * 2)))
    assert test.status == "completed"
    assert _output(test) == {"items": [1, 2, 3], "results": [2, 4, 6]}


def test_fail_state_error_and_cause() -> None:
    machine = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "E", "Cause": "why"}}}
    test = _run(machine, {})
    assert test.status == "failed"
    assert test.instance.reason == "F: E: why"  # the error too, as a failed Task's reason


@pytest.mark.parametrize("failing", ["task", "fail"])
def test_a_branch_failure_reaches_the_parallel_catch_with_its_own_error_and_cause(
    failing: str,
) -> None:
    """The Parallel's error output is its failed branch's Error and Cause as they were given
    (a worker's TaskFailed, a Fail state's Cause), not the engine's description of them."""
    branch = {**TASK, "End": True} if failing == "task" else {"Type": "Fail", "Error": "Boom"}
    if failing == "fail":
        branch["Cause"] = "the cause"
    machine = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [{"StartAt": "A", "States": {"A": branch}}],
                "Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.error", "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "End": True},
        },
    }
    test = _run(machine, {"x": 1})
    if failing == "task":
        sent, _ = _task(test)
        test.reply(sent, TaskFailed(error="Boom", cause="the cause"))
    assert test.status == "completed"
    assert _output(test) == {"x": 1, "error": {"Error": "Boom", "Cause": "the cause"}}


@pytest.mark.parametrize(
    ("machine", "state", "field"),
    [
        ({"StartAt": "T", "States": {"T": {**TASK, "End": True, "Bogus": 1}}}, "T", "Bogus"),
        ({"StartAt": "T", "States": {"T": {**TASK, "Next": "Nowhere"}}}, "T", "Next"),
        ({"StartAt": "T", "States": {"T": {"Type": "Wait", "End": True}}}, "T", "Seconds"),
        (
            {"StartAt": "T", "States": {"T": {**TASK, "End": True, "InputPath": "x"}}},
            "T",
            "InputPath",
        ),
        ({"StartAt": "T", "States": {"T": {"Type": "Nope", "End": True}}}, "T", "Type"),
        ({"StartAt": "T", "States": {"T": {**TASK}}}, "T", "Next"),
    ],
)
def test_an_unsupported_or_wrong_field_is_refused_naming_state_and_field(
    machine: dict[str, Any], state: str, field: str
) -> None:
    with pytest.raises(DefinitionError) as refused:
        compile_machine(machine, "m")
    assert refused.value.state == state
    assert refused.value.field == field


def test_the_test_kit_runs_a_definition_file_by_state_names() -> None:
    from sagas.testing import DefinitionTest

    test = DefinitionTest(SEED_001)
    test.start_execution({"email": "ada@example.com"}, execution="u-9")
    assert test.task_input("CreateUser") == {"email": "ada@example.com"}
    test.succeed_task("CreateUser", {"userId": "u-9"})
    test.fail_task("ProvisionResources", "ProvisioningError", "full")
    test.advance(seconds=5)
    test.succeed_task("ProvisionResources", {"bucket": "b"})
    test.succeed_task("SendWelcomeEmail")
    test.succeed_task("NotifyInternalTeams", {"done": True})
    assert test.status == "completed"
    assert test.output == {"done": True}


HEARTBEATS = {
    "StartAt": "Long",
    "States": {
        "Long": {
            **TASK,
            "TimeoutSeconds": 60,
            "HeartbeatSeconds": 10,
            "Catch": [{"ErrorEquals": ["States.HeartbeatTimeout"], "Next": "Lost"}],
            "End": True,
        },
        "Lost": {"Type": "Pass", "Result": "lost", "End": True},
    },
}


def test_heartbeats_keep_a_task_alive_until_its_timeout() -> None:
    from sagas.testing import DefinitionTest

    test = DefinitionTest(HEARTBEATS)
    test.start_execution()
    assert test.task_input("Long") == {}
    assert "heartbeat:Long" not in test.timers  # the interval runs from the action's start
    test.advance(seconds=30)  # queued at its worker: only TimeoutSeconds bounds it
    test.heartbeat("Long")  # the worker's first, as the action starts
    for _ in range(3):  # every 8 s: the heartbeat timer starts again each time
        test.advance(seconds=8)
        test.heartbeat("Long")
    assert test.due("heartbeat:Long") - test.now_ms == 10_000
    test.succeed_task("Long", "done")
    assert test.status == "completed"
    assert not test.timers
    assert test.output == "done"


def test_a_missing_heartbeat_fails_the_attempt_with_heartbeat_timeout() -> None:
    from sagas.testing import DefinitionTest

    test = DefinitionTest(HEARTBEATS)
    test.start_execution()
    test.heartbeat("Long")
    test.advance(seconds=10)
    assert test.status == "completed"
    assert test.output == "lost"
    # As the spec says, States.TaskFailed covers a heartbeat timeout (not a timeout).
    by_task_failed = json.loads(json.dumps(HEARTBEATS))
    by_task_failed["States"]["Long"]["Catch"][0]["ErrorEquals"] = ["States.TaskFailed"]
    caught = DefinitionTest(by_task_failed)
    caught.start_execution()
    caught.heartbeat("Long")
    caught.advance(seconds=10)
    assert caught.output == "lost"


def test_heartbeat_seconds_must_be_below_timeout_seconds() -> None:
    machine = {
        "StartAt": "T",
        "States": {"T": {**TASK, "TimeoutSeconds": 5, "HeartbeatSeconds": 5, "End": True}},
    }
    with pytest.raises(DefinitionError) as refused:
        compile_machine(machine, "m")
    assert refused.value.field == "HeartbeatSeconds"


def test_a_parallel_whose_result_cannot_be_placed_is_caught_with_the_path_failure_as_cause() -> (
    None
):
    machine = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [{"StartAt": "B", "States": {"B": {"Type": "Pass", "End": True}}}],
                "ResultPath": "$.a.b",
                "Catch": [
                    {
                        "ErrorEquals": ["States.ResultPathMatchFailure"],
                        "ResultPath": "$.err",
                        "Next": "C",
                    }
                ],
                "End": True,
            },
            "C": {"Type": "Pass", "End": True},
        },
    }
    test = _run(machine, {"a": "text"})
    assert test.status == "completed"
    error = _output(test)["err"]
    assert error["Error"] == "States.ResultPathMatchFailure"
    assert error["Cause"].startswith("cannot apply ResultPath '$.a.b'")  # the name not repeated


def test_an_execution_past_its_timeout_fails_at_once_with_a_task_in_flight() -> None:
    from sagas.testing import DefinitionTest

    machine = {"TimeoutSeconds": 30, "StartAt": "T", "States": {"T": {**TASK, "End": True}}}
    test = DefinitionTest(machine)
    test.start_execution()
    sent = test.expect_task("T")
    test.advance(seconds=30)
    assert test.status == "failed"  # not compensating until the worker answers
    assert "deadline" in (test.instance.reason or "")
    late = test.feed(TaskSucceeded(output="1"), sent.command_id)
    assert late.ignored  # the late answer changes nothing
