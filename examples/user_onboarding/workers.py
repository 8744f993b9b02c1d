"""The seed 001 onboarding's services (``onboarding.json``), failing on demand.

Three workers serve the definition's six actions, one per ``Service``:

- ``auth`` (``AuthService``): ``createUser``, ``deleteUser``;
- ``provisioning`` (``ProvisioningService``): ``provisionUserResources``;
- ``notifications`` (``NotificationService``): ``sendWelcomeEmail``, ``notifyInternalTeams``,
  ``sendAdminAlert``.

Run each with ``sagas worker examples.user_onboarding.workers:auth`` (and so on). Nothing is
really created: each action says what it did in its output.

An execution's input asks for failures under ``simulate``::

    {"email": "ada@example.com",
     "simulate": {"auth_error": true, "provisioning_failures": 2, "email_error": true}}

- ``auth_error``: ``createUser`` fails with ``AuthServiceError`` (the definition catches it and
  goes to ``SendErrorNotification``);
- ``provisioning_failures``: ``provisionUserResources`` fails with ``ProvisioningError`` on its
  first N attempts (the attempt number comes with the task); the definition retries it 3 times
  (after 5, 10 and 20 s), so 1 to 3 failures end well and 4 or more are caught, rolling the user
  back (``RollbackUserCreation``) before ``SendErrorNotification``;
- ``email_error``: ``sendWelcomeEmail`` fails with ``EmailError``, which nothing catches: the
  execution fails.

The definition keeps the States Language's default ``ResultPath`` (``$``): each task's output
replaces the document. So each action passes its input on in its output, ``simulate`` included,
adding what it did. A caught error replaces the document too (with ``{"Error", "Cause"}``), so
``deleteUser`` finds the user by the execution's id, which ``createUser`` named it after: an
identifier every task of the execution is given (``context.task.execution``).
"""

from __future__ import annotations

from typing import Any

from sagas import CommandContext, TaskError, Worker

auth = Worker("onboarding-auth", service="AuthService")
provisioning = Worker("onboarding-provisioning", service="ProvisioningService")
notifications = Worker("onboarding-notifications", service="NotificationService")


def _simulated(input: Any, flag: str) -> Any:
    """What the execution's input asks of the failure ``flag`` (None when not asked)."""
    simulate = input.get("simulate") if isinstance(input, dict) else None
    return simulate.get(flag) if isinstance(simulate, dict) else None


def _execution(context: CommandContext) -> str:
    """The execution's id, as every task of it carries it."""
    return context.task.execution if context.task is not None else context.instance_id


def _passed_on(input: Any, **added: Any) -> dict[str, Any]:
    """The input (an object) with what the action adds: the next state's input."""
    return {**(input if isinstance(input, dict) else {}), **added}


@auth.action("createUser")
def create_user(input: Any, context: CommandContext) -> Any:
    if _simulated(input, "auth_error"):
        raise TaskError("AuthServiceError", f"cannot create a user for {input.get('email')}")
    return _passed_on(input, userId=f"user-{_execution(context)}")


@auth.action("deleteUser")
def delete_user(input: Any, context: CommandContext) -> Any:
    # The input is the caught error ({"Error", "Cause"}): the user is named by the execution.
    return _passed_on(input, deletedUserId=f"user-{_execution(context)}")


@provisioning.action("provisionUserResources")
def provision_user_resources(input: Any, context: CommandContext) -> Any:
    failures = _simulated(input, "provisioning_failures") or 0
    if context.attempt <= failures:
        raise TaskError(
            "ProvisioningError", f"attempt {context.attempt} of {failures} failing on purpose"
        )
    return _passed_on(input, resources={"bucket": f"tenant-{input.get('userId')}"})


@notifications.action("sendWelcomeEmail")
def send_welcome_email(input: Any, context: CommandContext) -> Any:
    if _simulated(input, "email_error"):
        raise TaskError("EmailError", f"the mail server refused {input.get('email')}")
    return _passed_on(input, welcomed=input.get("email"))


@notifications.action("notifyInternalTeams")
def notify_internal_teams(input: Any, context: CommandContext) -> Any:
    return _passed_on(input, teamsNotified=True)


@notifications.action("sendAdminAlert")
def send_admin_alert(input: Any, context: CommandContext) -> Any:
    return _passed_on(input, adminAlerted=True)
