"""Declarative definitions on the real broker: the seeds' workflows, and every state type.

Every definition runs as ``sagas run FILE`` with its workers as ``sagas worker`` subprocesses,
and is judged by what they committed, read back ``read_committed`` (the journal, the task
topics). Each test's execution ids start with a prefix of its own, so no test sees another's
records; the definitions' topics (``UserOnboardingWorkflow.*``, ``user_signup.*``,
``all_states.*`` and their services' ``.tasks``) are used by no other test.

- the seed 001 onboarding (``examples/user_onboarding``), 200 executions at once with injected
  ``AuthServiceError`` and ``ProvisioningError``: each calls the actions its Catch and Retry
  rules imply, ends as they imply with the document they imply, and each retry waits as the
  policy says (5, 10, 20 s from the failed attempt's AttemptFailed to the retry's CommandSent,
  in the journal's at_ms): the timer set for exactly that, the retry sent within ``LATE_MS``;
- the seed 000 state machine (``examples/user_signup``): success, a failing task to each
  ``on_failure`` path, and its ``final_state``; ``sagas start`` twice with one ``--id`` starts
  one execution, and so does ``Publisher.start`` twice at once; ``sagas history --json`` saves
  an execution's journal, documents included, that loads back and replays clean;
- ``definitions/all_states.yaml`` (Pass, Task with Retry and Catch, Choice, Wait, Parallel,
  Map, Succeed, Fail): 120 executions with a kill -9 of the processor mid-run; each ends as its
  input implies, and each command id of the run is committed once on the task topics;
- ``definitions/limited.yaml`` (a ``Limits`` Rate of 8 per second on its Task's service): 16
  executions at once complete, and their task commands leave at most 8 in any second.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from sagas.local import LocalProcess
from sagas.publisher import Publisher
from sagas.testing import load_histories, verify_histories
from stream_processors.core.documents import ROOT_SCOPE, Documents
from stream_processors.core.fold import fold
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import SagaDefinition
from stream_processors.core.tasks import TaskCommand
from stream_processors.declarative.definition import load_definition
from stream_processors.engine.routing import COMMAND_ID, INSTANCE
from stream_processors.kafka.topics import (
    DLQ_POLICY,
    SagaTopics,
    ensure_plain_topics,
    ensure_topics,
)
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import (
    REPO_ROOT,
    CommittedReader,
    JournalFollower,
    SagaProcesses,
    header_of,
    header_prefix,
    key_prefix,
    restored_partitions,
    sagas_cli,
    wait_for_log,
)

pytestmark = pytest.mark.kafka

ONBOARDING = REPO_ROOT / "examples" / "user_onboarding" / "onboarding.json"
SIGNUP = REPO_ROOT / "examples" / "user_signup" / "user_signup.json"
ALL_STATES = Path(__file__).parent / "definitions" / "all_states.yaml"
LIMITED = Path(__file__).parent / "definitions" / "limited.yaml"
SENT = (Kind.COMMAND_SENT.value, Kind.COMPENSATION_SENT.value)
ENDED = ("completed", "compensated", "failed")


# -- one run of a definition: its processes, its journal and task topics, its ids -----------------


@dataclass
class DefinitionRun:
    """A definition's processor and workers for one test, and readers of what they commit."""

    kafka: KafkaCluster
    path: Path
    workers: dict[str, str]
    tmp: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        bootstrap = self.kafka.bootstrap
        self.definition: SagaDefinition = load_definition(self.path)
        self.topics = SagaTopics.for_saga(self.definition)
        # Before the readers: a reader made before its topic exists sees no partitions.
        ensure_topics(self.topics, bootstrap)
        self.processes = SagaProcesses(
            bootstrap, self.tmp / "logs", saga_target=str(self.path), worker_targets=self.workers
        )
        self.journal = JournalFollower(bootstrap, self.prefix, journal=self.topics.journal)
        self.tasks = [
            CommittedReader(bootstrap, t, from_end=True, keep=header_prefix(INSTANCE, self.prefix))
            for t in self.topics.commands
        ]
        # What nobody could process: the saga's dead letters, and each task topic's (made here
        # as the workers make them, so that the readers see their partitions).
        dead = [f"{t}.dlq" for t in self.topics.commands]
        ensure_plain_topics(dead, bootstrap, config=DLQ_POLICY)
        self.dead_letters = [
            CommittedReader(bootstrap, t, from_end=True, keep=key_prefix(self.prefix))
            for t in (self.topics.dlq, *dead)
        ]

    @property
    def prefix(self) -> str:
        return f"{self.run_id}-"

    def processor(self) -> LocalProcess:
        return self.processes.processor(self.tmp / "state")

    def start(self) -> LocalProcess:
        """The processor and every worker, ready to serve; returns the processor."""
        workers = self.processes.workers()
        processor = self.processor()
        wait_for_log(processor, _all_restored, 90, "the restore of every inbox partition")
        for worker in workers:
            wait_for_log(worker, lambda text: " serving " in text, 90, "a serving worker")
        return processor

    def execute(self, inputs: dict[str, Any]) -> None:
        """Start an execution per id (``prefix`` + name) with its input, all at once."""
        with Publisher(self.kafka.bootstrap, client_id="definitions-test") as publisher:
            for name, document in inputs.items():
                publisher.start(self.definition, document, self.prefix + name)

    def outcomes(self, names: Iterator[str] | list[str], timeout: float) -> dict[str, str]:
        """{name: how it ended} once every execution named has ended. Every entry of theirs has
        been followed then: an execution's entries share a partition, its end last."""
        ids = [self.prefix + n for n in names]
        ended = self.journal.wait_for_outcomes(ids, timeout, self.processes.log_tails)
        return {i.removeprefix(self.prefix): state for i, state in ended.items()}

    def entries(self, name: str) -> list[JournalEntry]:
        return self.journal.entries.get(self.prefix + name, [])

    def output(self, name: str) -> Any:
        """The execution's document as its journal folds (its output once it ended)."""
        instance = fold(self.definition, None, self.entries(name))
        assert instance is not None and isinstance(instance.data, Documents)
        return instance.data.document(ROOT_SCOPE)

    def reason(self, name: str) -> str:
        instance = fold(self.definition, None, self.entries(name))
        assert instance is not None
        return instance.reason or ""

    def steps(self, name: str) -> list[str]:
        """The Task states the execution sent a command for, in order (retries repeated)."""
        return [e.step or "" for e in self.entries(name) if e.kind == Kind.COMMAND_SENT.value]

    def committed_tasks(self) -> tuple[Counter[str], dict[str, Counter[str]]]:
        """The run's command ids on the task topics, with counts, and each execution's actions
        (by name, with counts) as the workers received them."""
        ids: Counter[str] = Counter()
        actions: dict[str, Counter[str]] = {}
        for messages in _read_all(self.tasks):
            for message in messages:
                ids[header_of(message, COMMAND_ID) or "<none>"] += 1
                task = TaskCommand.decode(message.value() or b"")
                name = (header_of(message, INSTANCE) or "").removeprefix(self.prefix)
                actions.setdefault(name, Counter())[task.action] += 1
        return ids, actions

    def dead(self) -> list[str]:
        """The run's dead letters (topic: key), on the saga's DLQ and the task topics' DLQs."""
        read = _read_all(self.dead_letters)
        return [
            f"{reader.topic}: {message.key()!r}"
            for reader, messages in zip(self.dead_letters, read, strict=True)
            for message in messages
        ]

    def journaled_sends(self) -> set[str]:
        """The command ids the journal followed so far records as sent."""
        return {
            e.command_id or ""
            for history in self.journal.entries.values()
            for e in history
            if e.kind in SENT
        }

    def longest(self) -> int:
        """The longest execution of the run, from its start to its end, in ms (journal time)."""
        return max(h[-1].at_ms - h[0].at_ms for h in self.journal.entries.values())

    def ended_by_processor(self, processor: LocalProcess) -> float:
        return sum(processor.metric("sagalog_sagas_total", event=e) for e in ENDED)

    def close(self) -> None:
        try:
            self.processes.stop_all()
        finally:
            for reader in (self.journal.reader, *self.tasks, *self.dead_letters):
                reader.close()


def _read_all(readers: list[CommittedReader]) -> list[list[Message]]:
    """Each reader's committed records up to its topic's current end, read side by side (a
    read takes seconds, mostly waiting)."""
    with ThreadPoolExecutor(len(readers)) as pool:
        return list(pool.map(CommittedReader.read_to_end, readers))


def _all_restored(log: str) -> bool:
    return restored_partitions(log) == set(range(8))


@contextmanager
def _running(
    kafka: KafkaCluster, path: Path, workers: dict[str, str], tmp: Path
) -> Iterator[DefinitionRun]:
    """A run of the definition in ``path``, its processes stopped and readers closed after."""
    run = DefinitionRun(kafka, path, workers, tmp)
    try:
        yield run
    finally:
        run.close()


# -- (a) the seed 001 onboarding: 200 executions, Catch and Retry as written ---------------------

ONBOARDING_WORKERS = {
    name: f"examples.user_onboarding.workers:{name}"
    for name in ("auth", "provisioning", "notifications")
}
#: How many executions of each kind: the input's ``simulate`` and what the definition implies.
MIX = {"happy": 60, "auth": 30, "retried1": 20, "retried2": 20, "retried3": 20}
MIX |= {"exhausted4": 20, "exhausted6": 10, "email": 20}
#: The retry policy as written: IntervalSeconds 5, BackoffRate 2.0, MaxAttempts 3.
RETRY_DELAYS_MS = (5_000, 10_000, 20_000)
#: How late a retry may be sent after its timer is due, with the whole run on two shared cores.
LATE_MS = 3_000

HAPPY = ["CreateUser", "ProvisionResources", "SendWelcomeEmail", "NotifyInternalTeams"]


def _simulate(kind: str) -> dict[str, Any]:
    if kind == "auth":
        return {"auth_error": True}
    if kind == "email":
        return {"email_error": True}
    digits = "".join(c for c in kind if c.isdigit())
    return {"provisioning_failures": int(digits)} if digits else {}


def _expected_steps(kind: str) -> list[str]:
    """The Task states an execution of ``kind`` sends commands for, in order."""
    if kind == "auth":  # Catch AuthServiceError -> SendErrorNotification
        return ["CreateUser", "SendErrorNotification"]
    if kind == "email":  # nothing catches EmailError: the execution fails there
        return HAPPY[:3]
    failures = int("".join(c for c in kind if c.isdigit()) or 0)
    if failures <= 3:  # retried until it succeeds (at most 3 retries)
        return ["CreateUser", *["ProvisionResources"] * (failures + 1), *HAPPY[2:]]
    # 1 attempt + 3 retries fail; Catch ProvisioningError -> roll back, then alert
    tail = ["RollbackUserCreation", "SendErrorNotification"]
    return ["CreateUser", *["ProvisionResources"] * 4, *tail]


def _expected_output(kind: str, name: str, run: DefinitionRun) -> dict[str, Any]:
    """What an ended execution's document holds (ResultPath "$": each output replaces it)."""
    user, email = f"user-{run.prefix}{name}", f"{name}@example.com"
    given = {"email": email, "simulate": _simulate(kind)}
    if kind == "auth":
        cause = f"cannot create a user for {email}"
        return {"Error": "AuthServiceError", "Cause": cause, "adminAlerted": True}
    if kind.startswith("exhausted"):
        failures = _simulate(kind)["provisioning_failures"]
        cause = f"attempt 4 of {failures} failing on purpose"
        caught = {"Error": "ProvisioningError", "Cause": cause}
        return {**caught, "deletedUserId": user, "adminAlerted": True}
    resources = {"bucket": f"tenant-{user}"}
    done = {"welcomed": email, "teamsNotified": True}
    return {**given, "userId": user, "resources": resources, **done}


@dataclass(frozen=True)
class RetryDelay:
    """One retry of ProvisionResources, from its journal (ms): the failed attempt's number, the
    delay its timer was set for (due - AttemptFailed.at_ms), and the delay it was sent after
    (the retry's CommandSent.at_ms - AttemptFailed.at_ms)."""

    after_attempt: int
    scheduled: int
    measured: int


def _retry_delays(entries: list[JournalEntry]) -> list[RetryDelay]:
    delays = []
    failed_at: dict[int, int] = {}
    due: dict[int, int] = {}
    for entry in entries:
        if entry.step != "ProvisionResources":
            continue
        if entry.kind == Kind.ATTEMPT_FAILED.value:
            failed_at[entry.attempt] = entry.at_ms
        elif entry.kind == Kind.TIMER_SCHEDULED.value and entry.due_ms is not None:
            due[entry.attempt] = entry.due_ms
        elif entry.kind == Kind.COMMAND_SENT.value and entry.attempt > 1:
            failed = failed_at[entry.attempt - 1]
            delays.append(
                RetryDelay(entry.attempt - 1, due[entry.attempt] - failed, entry.at_ms - failed)
            )
    return delays


def test_seed_001_onboarding_200_executions_end_as_catch_and_retry_imply(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    with _running(kafka, ONBOARDING, ONBOARDING_WORKERS, tmp_path) as onboarding:
        _onboard(onboarding)


def _onboard(onboarding: DefinitionRun) -> None:
    began = time.monotonic()
    kinds = [kind for kind, count in MIX.items() for _ in range(count)]
    random.Random(20261201).shuffle(kinds)
    by_name = {f"{kind}-{n}": kind for n, kind in enumerate(kinds)}
    onboarding.start()
    ready = time.monotonic() - began
    onboarding.execute(
        {
            name: {"email": f"{name}@example.com", "simulate": _simulate(kind)}
            for name, kind in by_name.items()
        }
    )
    outcomes = onboarding.outcomes(list(by_name), 150)
    ended = time.monotonic() - began
    assert outcomes == {n: "failed" if k == "email" else "completed" for n, k in by_name.items()}

    ids, actions = onboarding.committed_tasks()
    assert {i: n for i, n in ids.items() if n != 1} == {}
    assert set(ids) == onboarding.journaled_sends()
    assert onboarding.dead() == []
    state_actions = {name: state["Action"] for name, state in _states(ONBOARDING).items()}
    lates: list[int] = []
    for name, kind in by_name.items():
        expected = _expected_steps(kind)
        assert onboarding.steps(name) == expected, name
        assert actions[name] == Counter(state_actions[s] for s in expected), name
        if kind != "email":
            assert onboarding.output(name) == _expected_output(kind, name, onboarding), name
        else:
            assert "EmailError" in onboarding.reason(name), onboarding.reason(name)
        retries = len([s for s in expected if s == "ProvisionResources"]) - 1
        delays = _retry_delays(onboarding.entries(name))
        policy = list(zip(range(1, retries + 1), RETRY_DELAYS_MS, strict=False))
        assert [(d.after_attempt, d.scheduled) for d in delays] == policy, name
        lates += [d.measured - d.scheduled for d in delays]
    # Sent no sooner than the policy says, and at most LATE_MS after.
    assert lates and min(lates) >= 0 and max(lates) <= LATE_MS, sorted(lates)[-5:]
    print(
        f"\n{len(by_name)} onboardings {dict(Counter(outcomes.values()))}; "
        f"{sum(ids.values())} task commands, each once; {len(lates)} retries sent "
        f"{statistics.median(lates):.0f} ms (median), {max(lates)} ms (max) later than the "
        "policy's 5/10/20 s; "
        f"longest execution {onboarding.longest() / 1000:.1f} s; processes ready in {ready:.1f} s, "
        f"all ended at {ended:.1f} s, {time.monotonic() - began:.1f} s in all"
    )


def _states(path: Path) -> dict[str, Any]:
    states: dict[str, Any] = json.loads(path.read_text())["States"]
    return states


# -- (b) the seed 000 state machine, and starting it from the command line ---------------------

SIGNUP_WORKERS = {"signup": "examples.user_signup.workers:signup"}
#: The states of the seed 000 machine's successful path that call a task.
SIGNUP_TASKS = ["CREATE_USER_RECORD", "PROVISION_RESOURCES", "SEND_WELCOME_EMAIL"]


@pytest.fixture(scope="module")
def signup(
    kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DefinitionRun]:
    with _running(kafka, SIGNUP, SIGNUP_WORKERS, tmp_path_factory.mktemp("signup")) as run:
        run.start()
        yield run


def test_seed_000_state_machine_runs_each_path_to_its_final_state(signup: DefinitionRun) -> None:
    failing = {
        "ok": [],
        "user": ["create_user_in_db"],
        "resources": ["provision_cloud_resources"],
        "email": ["send_email"],
    }
    signup.execute(
        {n: {"email": f"{n}@x.org", "simulate": {"fail": f}} for n, f in failing.items()}
    )
    assert signup.outcomes(list(failing), 60) == dict.fromkeys(failing, "completed")
    tasks = {
        "ok": SIGNUP_TASKS,
        "user": [SIGNUP_TASKS[0], "HANDLE_USER_CREATION_FAILURE"],
        "resources": [*SIGNUP_TASKS[:2], "HANDLE_RESOURCE_PROVISION_FAILURE"],
        "email": [*SIGNUP_TASKS, "HANDLE_EMAIL_FAILURE"],
    }
    finals = {"ok": "COMPLETED", "user": "FAILED", "resources": "FAILED"}
    finals["email"] = "COMPLETED_WITH_WARNING"
    errors = {"user": "UserCreationError", "resources": "ProvisioningError", "email": "EmailError"}
    for name in failing:
        assert signup.steps(name) == tasks[name], name
        output = signup.output(name)
        assert output["final_state"] == finals[name], output
        assert output["email"] == f"{name}@x.org"  # results and errors go under their own keys
        assert output.get("error", {}).get("Error") == errors.get(name), output
    user = f"user-{signup.prefix}"
    assert signup.output("ok")["results"] == {
        "create_user_in_db": {"user_id": f"{user}ok"},
        "provision_cloud_resources": {"bucket": f"tenant-{signup.prefix}ok"},
        "send_email": {"sent_to": "ok@x.org"},
    }
    assert signup.output("user")["results"] == {"log_error": {"logged": "UserCreationError"}}
    assert signup.output("resources")["results"]["rollback_user_creation"] == {
        "deleted": f"{user}resources"
    }
    assert signup.output("email")["results"]["notify_admin"] == {"alerted": "EmailError"}


def _started(run: DefinitionRun, name: str) -> int:
    return sum(e.kind == Kind.SAGA_STARTED.value for e in run.entries(name))


def test_starting_twice_with_one_id_starts_one_execution(signup: DefinitionRun) -> None:
    bootstrap, execution = signup.kafka.bootstrap, f"{signup.prefix}cli"
    first = sagas_cli(
        bootstrap, "start", str(SIGNUP), "--input", '{"email": "first@x.org"}', "--id", execution,
        "--wait", "60",
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"started execution {execution}" in first.stdout
    assert f"execution {execution}: completed" in first.stdout
    assert '"final_state": "COMPLETED"' in first.stdout

    again = sagas_cli(
        bootstrap, "start", str(SIGNUP), "--input", '{"email": "second@x.org"}', "--id", execution
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"execution {execution} exists already: completed" in again.stdout
    assert "started execution" not in again.stdout
    assert '"email": "first@x.org"' in again.stdout

    # Twice at once, before either is journaled: the engine keeps the first, ignores the second.
    with Publisher(bootstrap, client_id="definitions-test") as publisher:
        for email in ("one@x.org", "two@x.org"):
            publisher.start(signup.definition, {"email": email}, f"{signup.prefix}twice")
    assert signup.outcomes(["cli", "twice"], 60) == {"cli": "completed", "twice": "completed"}
    time.sleep(2)  # a second execution, if one were started, would have journaled by now
    signup.journal.catch_up()
    assert _started(signup, "cli") == 1 and _started(signup, "twice") == 1
    assert signup.output("twice")["email"] == "one@x.org"
    assert signup.steps("twice") == SIGNUP_TASKS


# -- (c) every state type, with a kill -9 of the processor in the middle --------------------------

ALL_STATES_WORKERS = {"all": "tests.integration.all_states_workers:worker"}
EXECUTIONS = 120
KILL_AFTER = 40
#: Charge attempts per mode: Retry Payments.Busy twice; Payments.Declined is caught at once.
CHARGES = {"ok": 1, "busy_once": 2, "busy_always": 3, "declined": 1}


@dataclass(frozen=True)
class Planned:
    mode: str
    express: bool
    items: list[str]

    @property
    def input(self) -> dict[str, Any]:
        order = {"total": 10 * len(self.items), "express": self.express, "items": self.items}
        return {"mode": self.mode, "order": order}

    @property
    def outcome(self) -> str:
        return "completed" if self.mode in ("ok", "busy_once") else "failed"

    @property
    def commands(self) -> int:
        """Task commands the execution sends: its charges, then a label and a reservation per
        item if it gets past the charge."""
        shipped = 1 + len(self.items) if self.outcome == "completed" else 0
        return CHARGES[self.mode] + shipped


def _plan(count: int, seed: int) -> dict[str, Planned]:
    rng = random.Random(seed)
    modes = rng.choices(list(CHARGES), weights=[6, 2, 1, 1], k=count)
    return {
        f"e{n}": Planned(mode, rng.random() < 0.5, [f"sku-{k}" for k in range(rng.randint(1, 3))])
        for n, mode in enumerate(modes)
    }


def test_every_state_type_survives_a_kill_9_and_sends_each_command_once(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    with _running(kafka, ALL_STATES, ALL_STATES_WORKERS, tmp_path) as all_states:
        _kill_mid_run(all_states)


def _kill_mid_run(all_states: DefinitionRun) -> None:
    began = time.monotonic()
    plan = _plan(EXECUTIONS, seed=20261201)
    processor = all_states.start()
    all_states.execute({name: planned.input for name, planned in plan.items()})

    deadline = time.monotonic() + 120
    while all_states.ended_by_processor(processor) < KILL_AFTER:
        assert time.monotonic() < deadline, "the processor never ended enough executions"
        time.sleep(0.05)
    processor.kill()
    all_states.journal.catch_up()
    ended_before = len(all_states.journal.outcomes)
    restarted = all_states.processor()
    wait_for_log(restarted, _all_restored, 90, "the restore of every inbox partition")

    outcomes = all_states.outcomes(list(plan), 150)
    assert ended_before < EXECUTIONS, "the kill came after the run"
    assert outcomes == {name: planned.outcome for name, planned in plan.items()}

    ids, actions = all_states.committed_tasks()
    assert {i: n for i, n in ids.items() if n != 1} == {}
    assert set(ids) == all_states.journaled_sends()
    assert all_states.dead() == []
    assert {n: sum(a.values()) for n, a in actions.items()} == {
        n: p.commands for n, p in plan.items()
    }
    for name, planned in plan.items():
        _check_all_states_output(all_states, name, planned)
    print(
        f"\n{EXECUTIONS} executions {dict(Counter(outcomes.values()))}, killed after "
        f"{ended_before} had ended (committed); {sum(ids.values())} task commands, each once; "
        f"{time.monotonic() - began:.1f} s"
    )


def _check_all_states_output(run: DefinitionRun, name: str, planned: Planned) -> None:
    if planned.outcome == "failed":
        error = "PaymentDeclined" if planned.mode == "declined" else "Payments.Busy"
        assert error in run.reason(name), (name, run.reason(name))
        return
    output = run.output(name)
    execution = run.prefix + name
    assert output["mode"] == planned.mode and output["order"] == planned.input["order"]
    assert output["execution"] == execution
    assert output["payment"] == {"charge": f"ch-all_states/{execution}/Charge"}
    assert output["shipped"] == [{"label": f"lb-{execution}"}, planned.input["order"]["total"]]
    assert output["reserved"] == [
        {"reserved": sku, "index": index} for index, sku in enumerate(planned.items)
    ]
    timers = [e.timer for e in run.entries(name) if e.kind == Kind.TIMER_SCHEDULED.value]
    waits = ["sleep:Pause"] if planned.express else ["sleep:Cool", "sleep:Pause"]
    retries = ["retry:Charge"] if planned.mode == "busy_once" else []
    assert sorted(t for t in timers if t and t.startswith(("sleep:", "retry:"))) == sorted(
        waits + retries
    ), (name, timers)


def test_sagas_history_of_an_execution_saves_a_journal_that_replays_clean(
    signup: DefinitionRun, tmp_path: Path
) -> None:
    signup.execute({"history": {"email": "h@x.org", "simulate": {"fail": ["send_email"]}}})
    assert signup.outcomes(["history"], 60) == {"history": "completed"}
    execution = f"{signup.prefix}history"
    saved = sagas_cli(signup.kafka.bootstrap, "history", str(SIGNUP), execution, "--json")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    path = tmp_path / "history.json"
    path.write_text(saved.stdout)
    entries = json.loads(saved.stdout)
    documents = [e["document"] for e in entries if e["event"] == Kind.DOCUMENT_SET.value]
    assert documents[-1]["final_state"] == "COMPLETED_WITH_WARNING"
    loaded = load_histories(path)
    assert loaded == {execution: signup.entries("history")}
    assert verify_histories(signup.definition, loaded).ok


# -- flow control declared in a definition ----------------------------------------------------


def test_a_definitions_rate_limit_holds_for_its_task_commands(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    with _running(kafka, LIMITED, ALL_STATES_WORKERS, tmp_path) as limited:
        processor = limited.start()
        began = time.monotonic()
        names = [f"e{n}" for n in range(16)]
        limited.execute({name: {"sku": name, "priority": n % 2} for n, name in enumerate(names)})
        assert set(limited.outcomes(names, 60).values()) == {"completed"}
        took = time.monotonic() - began
        sent = processor.metric("sagalog_limit_sent_total", saga="flow_limited")
        sent_ms = sorted(
            message.timestamp()[1] for messages in _read_all(limited.tasks) for message in messages
        )
    assert sent == 16 and len(sent_ms) == 16
    busiest = max(sum(t <= u < t + 1000 for u in sent_ms) for t in sent_ms)
    assert busiest <= 8, f"{busiest} task commands in one second, the limit is 8"
    print(f"\n16 executions under Rate 8: {took:.1f} s, at most {busiest} sent in a second")
