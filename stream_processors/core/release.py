"""What releasing a queued command does to its instance: its timeout restarts (pure).

A step's timeout bounds the service's answer, so it runs from when the command is *sent*: a
command its limit held back (``stream_processors.core.throttle``) had its timeout timer set when
it was decided, and ``released`` moves it to ``now + timeout`` when the command is finally sent,
with one ``TimerScheduled`` entry (its reason names the limit and the wait), so the journal says
when the command left and replay rebuilds the same timer. The saga's deadline is not moved: it
runs from the start, queued or not. A command whose timeout fired while it was queued is not
sent at all (its attempt no longer waits: see ``stream_processors.engine.flow``).
"""

from __future__ import annotations

from stream_processors.codecs.records import CATALOG
from stream_processors.core.decider import Decider
from stream_processors.core.decision import Decision, timeout_timer
from stream_processors.core.instance import Instance
from stream_processors.core.journal import Kind
from stream_processors.core.model import SagaDefinition


def released(
    definition: SagaDefinition,
    instance: Instance,
    command_id: str,
    limit: str,
    queued_ms: int,
    now_ms: int,
) -> Decision | None:
    """The decision restarting the timeout of the step that sends ``command_id`` now; None
    when there is nothing to restart (no timeout, or not this attempt's)."""
    key = next((k for k, s in instance.steps.items() if s.command_id == command_id), None)
    if key is None:
        return None
    step = instance.steps[key]
    timer = instance.timers.get(timeout_timer(key))
    task = definition.tasks.get(step.node)
    if timer is None or timer.attempt != step.attempt or task is None:
        return None
    spec = task.compensation if step.status.compensation else task.action
    if spec is None or spec.timeout_ms is None:
        return None
    with CATALOG.offline():
        decider = Decider(definition, instance, now_ms)
        decider.note(
            Kind.TIMER_SCHEDULED,
            timer=timeout_timer(key),
            due_ms=now_ms + spec.timeout_ms,
            step=key,
            attempt=step.attempt,
            reason=f"sent after {now_ms - queued_ms} ms queued for limit {limit}",
        )
    return decider.decision
