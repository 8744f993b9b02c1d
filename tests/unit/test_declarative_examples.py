"""The seeds' example definitions with their own workers, in memory (``sagas.testing``).

``examples/user_onboarding`` (seed 001) and ``examples/user_signup`` (seed 000) run each of
their paths through ``SagaTest``, every task answered by the example's worker for its service:
the states called, the retries' delays and the outputs are what the definitions and the workers'
``simulate`` instructions imply. tests/integration/test_definitions.py runs them on the broker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from examples.user_onboarding import workers as onboarding
from examples.user_signup import workers as signup
from sagas import Worker
from sagas.testing import SagaTest
from stream_processors.core.documents import ROOT_SCOPE, Documents
from stream_processors.core.tasks import TaskCommand
from stream_processors.declarative.definition import load_definition
from stream_processors.declarative.machine import ExecutionStarted

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ONBOARDING_WORKERS = {
    "AuthService": onboarding.auth,
    "ProvisioningService": onboarding.provisioning,
    "NotificationService": onboarding.notifications,
}


def _execute(path: Path, document: Any, workers: dict[str, Worker]) -> tuple[SagaTest, list[str]]:
    """Run one execution to its end; returns it and the states it called, with each retry's
    delay in seconds as ``+N``."""
    test = SagaTest(load_definition(path))
    test.start(ExecutionStarted(execution="x-1", input=json.dumps(document)))
    called: list[str] = []
    while not test.status.finished:
        if test.outstanding:
            sent = test.outstanding[0]
            assert isinstance(sent.command, TaskCommand)
            called.append(sent.step or "")
            test.handle(sent, workers[sent.command.service])
        else:
            due = min(timer.due_ms for timer in test.timers.values())
            called.append(f"+{(due - test.now_ms) / 1000:g}")
            test.advance((due - test.now_ms) / 1000)
    return test, called


def _output(test: SagaTest) -> Any:
    assert isinstance(test.state, Documents)
    return test.state.document(ROOT_SCOPE)


HAPPY = ["CreateUser", "ProvisionResources", "SendWelcomeEmail", "NotifyInternalTeams"]
SIGNUP_OK = ["CREATE_USER_RECORD", "PROVISION_RESOURCES", "SEND_WELCOME_EMAIL"]


@pytest.mark.parametrize(
    ("simulate", "called", "status"),
    [
        ({}, HAPPY, "completed"),
        ({"auth_error": True}, ["CreateUser", "SendErrorNotification"], "completed"),
        (
            {"provisioning_failures": 2},
            ["CreateUser", "ProvisionResources", "+5", "ProvisionResources", "+10", *HAPPY[1:]],
            "completed",
        ),
        (
            {"provisioning_failures": 4},
            [
                *["CreateUser", "ProvisionResources", "+5", "ProvisionResources", "+10"],
                *["ProvisionResources", "+20", "ProvisionResources"],
                *["RollbackUserCreation", "SendErrorNotification"],
            ],
            "completed",
        ),
        ({"email_error": True}, HAPPY[:3], "failed"),
    ],
)
def test_the_onboarding_workers_fail_as_asked_and_the_seed_001_rules_follow(
    simulate: dict[str, Any], called: list[str], status: str
) -> None:
    given = {"email": "ada@example.com", "simulate": simulate}
    test, states = _execute(
        EXAMPLES / "user_onboarding" / "onboarding.json", given, ONBOARDING_WORKERS
    )
    assert (states, test.status.value) == (called, status)
    if called == HAPPY:
        assert _output(test) == {
            **given,
            "userId": "user-x-1",
            "resources": {"bucket": "tenant-user-x-1"},
            "welcomed": "ada@example.com",
            "teamsNotified": True,
        }
    elif called[-1] == "SendErrorNotification":  # the caught error, passed on to the alert
        output = _output(test)
        assert output["Error"] in ("AuthServiceError", "ProvisioningError")
        assert output["adminAlerted"] is True
        assert ("deletedUserId" in output) == ("RollbackUserCreation" in called)
    elif status == "failed":
        assert "EmailError" in (test.instance.reason or "")


@pytest.mark.parametrize(
    ("fail", "called", "final"),
    [
        ([], SIGNUP_OK, "COMPLETED"),
        (["create_user_in_db"], ["CREATE_USER_RECORD", "HANDLE_USER_CREATION_FAILURE"], "FAILED"),
        (
            ["provision_cloud_resources"],
            [*SIGNUP_OK[:2], "HANDLE_RESOURCE_PROVISION_FAILURE"],
            "FAILED",
        ),
        (
            ["send_email"],
            [*SIGNUP_OK, "HANDLE_EMAIL_FAILURE"],
            "COMPLETED_WITH_WARNING",
        ),
    ],
)
def test_the_signup_worker_fails_as_asked_and_the_seed_000_machine_ends_where_it_says(
    fail: list[str], called: list[str], final: str
) -> None:
    given = {"email": "ada@example.com", "simulate": {"fail": fail}}
    test, states = _execute(
        EXAMPLES / "user_signup" / "user_signup.json", given, {signup.SERVICE: signup.signup}
    )
    assert (states, test.status.value) == (called, "completed")
    output = _output(test)
    assert output["final_state"] == final
    assert output["email"] == "ada@example.com"
    assert output.get("error", {}).get("Error") == (signup.ERRORS[fail[0]] if fail else None)
