"""The seed 000 state machine's tasks and actions (``user_signup.json``), failing on demand.

A state-machine dict names its tasks and actions but no service: they all go to one service
named after the definition, here ``user_signup`` (the file's name), whose tasks are read from
``user_signup.tasks``. One worker serves the six names::

    sagas worker examples.user_signup.workers:signup

Each task's result is kept in the document under ``results.<task>`` and a failure under
``error``, so the input stays whole from state to state: a task fails on demand when the
execution's input lists it under ``simulate.fail``::

    {"email": "ada@example.com", "simulate": {"fail": ["provision_cloud_resources"]}}

and then the machine goes to the task's ``on_failure`` state. The execution's output names the
final state it reached under ``final_state`` (``COMPLETED``, ``COMPLETED_WITH_WARNING`` or
``FAILED``).
"""

from __future__ import annotations

from typing import Any

from sagas import CommandContext, TaskError, Worker

#: The service a state-machine dict's tasks go to: the definition's name.
SERVICE = "user_signup"

signup = Worker("user-signup", service=SERVICE)

#: The error each task fails with when asked to.
ERRORS = {
    "create_user_in_db": "UserCreationError",
    "provision_cloud_resources": "ProvisioningError",
    "send_email": "EmailError",
}


def _fails(input: Any, task: str) -> None:
    """Raise the task's error if the execution's input asks for it (``simulate.fail``)."""
    simulate = input.get("simulate") if isinstance(input, dict) else None
    failing = simulate.get("fail", []) if isinstance(simulate, dict) else []
    if task in failing:
        raise TaskError(ERRORS[task], f"{task} failing on purpose")


def _execution(context: CommandContext) -> str:
    return context.task.execution if context.task is not None else context.instance_id


@signup.action("create_user_in_db")
def create_user_in_db(input: Any, context: CommandContext) -> Any:
    _fails(input, "create_user_in_db")
    return {"user_id": f"user-{_execution(context)}"}


@signup.action("provision_cloud_resources")
def provision_cloud_resources(input: Any, context: CommandContext) -> Any:
    _fails(input, "provision_cloud_resources")
    return {"bucket": f"tenant-{_execution(context)}"}


@signup.action("send_email")
def send_email(input: Any, context: CommandContext) -> Any:
    _fails(input, "send_email")
    return {"sent_to": input.get("email")}


@signup.action("log_error")
def log_error(input: Any, context: CommandContext) -> Any:
    return {"logged": input.get("error", {}).get("Error")}


@signup.action("rollback_user_creation")
def rollback_user_creation(input: Any, context: CommandContext) -> Any:
    return {"deleted": f"user-{_execution(context)}"}


@signup.action("notify_admin")
def notify_admin(input: Any, context: CommandContext) -> Any:
    return {"alerted": input.get("error", {}).get("Error")}
