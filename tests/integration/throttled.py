"""Sagas whose one step calls a limited service, and the services, for the flow-control tests.

Each saga has its own start topic and service so that the tests do not meet:

- ``RateLimited``: its service ``ratelimited`` takes at most 20 commands per second: the saga
  sends at most 20 in any second (as 16 per second, ``core.throttle``: the default guard of
  0.25 s absorbs commands delivered late and then together), and the service's worker does
  not pace itself, so what it sees is the saga's limit alone;
- ``InFlightLimited``: its service ``slowsvc`` has at most 5 commands in flight;
- ``Prioritized``: its service ``busysvc`` takes at most 40 commands per second, and an
  instance's priority is its start event's ``priority`` field.

Each service's worker writes one line per command it handles to ``$THROTTLED_LOG`` (when the
handler got the command and when it ended, then its id) and sleeps ``$THROTTLED_SLEEP``
seconds in the handler; ``slowsvc``'s worker runs up to 8 handlers at once.

    sagas run tests.integration.throttled:RateLimited
    sagas worker tests.integration.throttled:ratelimited
"""

from __future__ import annotations

import os
import time
from typing import Any

from sagas import Command, CommandContext, Event, Limit, Saga, State, Step, Worker

NS = "tests.throttled"


def _log(context: CommandContext) -> None:
    """One line per command: when the handler got it, when it ended, and the command's id."""
    began = time.time()
    time.sleep(float(os.environ.get("THROTTLED_SLEEP", "0")))
    path = os.environ.get("THROTTLED_LOG")
    if path:
        with open(path, "a") as log:  # one write per line: whole lines, whatever the threads
            log.write(f"{began:.4f} {time.time():.4f} {context.command_id}\n")


def _saga(
    name: str,
    service: str,
    limit: Limit,
    priority: str | None = None,
    concurrency: int = 1,
    rate: float | None = None,
) -> tuple[type[Saga], Worker]:
    """A one-step saga calling ``service`` under ``limit``, and the service's worker."""
    prefix = name.title().replace("_", "")

    class Started(
        Event, schema=f"{NS}.{prefix}Started", topic=f"{name}.events", key="job_id", derive=True
    ):
        job_id: str
        priority: int = 0

    class Do(Command, schema=f"{NS}.{prefix}Do", topic=f"{service}.commands", derive=True):
        job_id: str

    class Done(Event, schema=f"{NS}.{prefix}Done", derive=True):
        job_id: str

    class JobState(State, schema=f"{NS}.{prefix}State", derive=True):
        job_id: str

    def begin(event: Any) -> JobState:
        return JobState(job_id=event.job_id)

    options: dict[str, Any] = {"limits": {service: limit}}
    if priority is not None:
        options["priority"] = priority
    saga = type(
        prefix,
        (Saga,),
        {
            "start": Started,
            "state": JobState,
            "begin": staticmethod(begin),
            "call": Step(Do, success=Done),
        },
        name=name,
        **options,
    )
    worker = Worker(service, concurrency=concurrency, rate=rate)

    @worker.handles(Do)
    def handle(command: Any, context: CommandContext) -> Done:
        _log(context)
        return Done(job_id=command.job_id)

    return saga, worker


RateLimited, ratelimited = _saga("rate_limited", "ratelimited", Limit(rate=20))
InFlightLimited, slowsvc = _saga("in_flight_limited", "slowsvc", Limit(in_flight=5), concurrency=8)
Prioritized, busysvc = _saga("prioritized", "busysvc", Limit(rate=40), priority="priority")
