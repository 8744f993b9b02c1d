"""Running a saga's processes on this machine: for demos, tests and benchmarks.

``LocalProcess`` starts ``sagas run`` or ``sagas worker`` as a separate OS process (so that it can
be killed with SIGKILL like a real crash), with its own metrics port and log file, and reads its
Prometheus metrics back. ``JournalWatcher`` follows a saga's journal topic and reports each
instance's terminal state: the external view of what the engine did, read from Kafka rather
than from the engine's own counters. ``journal_outcomes_from`` does the same from offsets taken
with ``journal_end`` before a run, skipping the journal's history.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_processors.codecs.avro import DecodeError
from stream_processors.core.journal import JournalEntry, Kind, entry_kind
from stream_processors.kafka.config import bootstrap_servers, consumer_config
from stream_processors.kafka.reading import watermarks

log = logging.getLogger(__name__)

TERMINAL = {
    Kind.SAGA_COMPLETED.value: "completed",
    Kind.SAGA_COMPENSATED.value: "compensated",
    Kind.SAGA_FAILED.value: "failed",
    Kind.SAGA_PARKED.value: "needs_attention",
}


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be killed when the process that started us dies, however it dies.

    A demo or test driver killed with SIGKILL cannot stop its children; without this they would
    live on, still consuming from the broker, and disturb the next run.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the driver's own cleanup has to do
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalProcess:
    """One ``sagas`` subprocess. ``args`` follow ``sagas``, e.g. ["run", "pkg.mod:Saga"].

    ``program``, when given, is the whole command line of a process that is not ``sagas`` (a
    service in another language, say): ``args``, ``python_args`` and the metrics port are then
    unused, and the process gets the same log, environment and lifetime handling.
    """

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    #: Interpreter options before ``-m sagas``: e.g. ["-m", "pyinstrument", "-o", "out.txt"].
    python_args: list[str] = field(default_factory=list)
    program: list[str] | None = None
    #: The working directory (default: the caller's); ``sagas run`` imports the saga from it.
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        environment = os.environ | {"PYTHONUNBUFFERED": "1"} | self.env
        command = self.program or [
            sys.executable,
            *self.python_args,
            "-m",
            "sagas",
            *self.args,
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.popen = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=self.cwd or os.getcwd(),
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or clean up."""
        if self.popen is not None and self.running:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (the process commits its open transaction); SIGKILL if it hangs."""
        self.terminate()
        return self.wait_or_kill(timeout)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the process begins its orderly stop."""
        if self.popen is not None and self.running:
            self.popen.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; SIGKILL it if it has not."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill()
        return self.popen.returncode

    def _samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample the process exports now: (metric name, labels, value)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples = []
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$", line)
            if match:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
                samples.append((match[1], labels, float(match[3])))
        return samples

    def metrics(self) -> dict[str, float]:
        """The process's Prometheus samples, summed over labels: {metric name: value}."""
        totals: dict[str, float] = {}
        for name, _, value in self._samples():
            totals[name] = totals.get(name, 0.0) + value
        return totals

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0.0 when none)."""
        return sum(
            value
            for found, have, value in self._samples()
            if found == name and all(have.get(k) == v for k, v in labels.items())
        )

    def metrics_by_label(self, name: str, label: str) -> dict[str, float]:
        """``name``'s samples summed by the value of one of their labels."""
        totals: dict[str, float] = {}
        for found, labels, value in self._samples():
            if found == name and label in labels:
                totals[labels[label]] = totals.get(labels[label], 0.0) + value
        return totals

    def wait_for_metric(
        self, name: str, predicate: Callable[[float], bool], timeout: float = 60
    ) -> float:
        """Wait until ``predicate(value)`` holds; a metric with no sample yet counts as 0."""
        samples = self.wait_for_metrics(
            lambda totals: predicate(totals.get(name, 0.0)),
            timeout,
            f"{name} did not reach the expected value",
        )
        return samples.get(name, 0.0)

    def wait_for_metrics(
        self,
        ready: Callable[[dict[str, float]], bool],
        timeout: float = 60,
        what: str = "the metrics did not reach the expected state",
    ) -> dict[str, float]:
        """Wait until ``ready(metrics())`` holds and return those samples.

        Unlike ``wait_for_metric`` this sees which metrics exist: a labelled metric has no
        sample until the process first sets it, so "the sample is there" can be the signal.
        Raises ``TimeoutError`` (naming ``what`` and the log) on timeout or if the process exits.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                samples = self.metrics()
                if ready(samples):
                    return samples
            except OSError:
                pass  # not serving yet
            if time.monotonic() > deadline or not self.running:
                code = None if self.popen is None else self.popen.returncode
                state = "timed out" if self.running else f"exited with status {code}"
                raise TimeoutError(f"{what} ({state}; see {self.log_path})")
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the process's log ("" if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(processes: Iterable[LocalProcess], timeout: float = 30) -> None:
    """Stop ``processes`` together: SIGTERM to each at once, then wait for them all, SIGKILL
    for any still running after ``timeout`` seconds. Stopping one after the other would take
    the sum of their stops (a Faust worker takes seconds to leave its group); this takes the
    longest one."""
    started = list(processes)
    for process in started:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in started:
        process.wait_or_kill(deadline - time.monotonic())


@dataclass(frozen=True)
class Outcome:
    instance: str
    state: str
    at_ms: int


def _reader(bootstrap: str | None) -> Consumer:
    """A read_committed consumer for ``assign``: the client wants a group id; it never joins it."""
    group = f"outcomes-{time.time_ns()}"
    return Consumer(consumer_config(bootstrap_servers(bootstrap), "sagalog-outcomes", group))


def journal_end(journal_topic: str, bootstrap: str | None = None) -> dict[int, int]:
    """Each partition's current end offset (high watermark) of ``journal_topic``.

    Taken before publishing a run's inputs and given to ``journal_outcomes_from``, it lets the
    reader skip the journal's history (which is kept forever): new instances have no entries
    before it.
    """
    consumer = _reader(bootstrap)
    try:
        partitions = consumer.list_topics(journal_topic, timeout=15).topics[journal_topic]
        return {
            partition: watermarks(consumer, TopicPartition(journal_topic, partition))[1]
            for partition in partitions.partitions
        }
    finally:
        consumer.close()


class JournalWatcher:
    """Follows a saga's journal from given offsets and keeps what one run needs of it.

    Reads ``read_committed`` by assigning partitions (no consumer group), so it sees exactly
    what the engine committed. ``keep`` selects the instances whose entries are kept in
    ``entries``; every kept instance's first terminal entry is in ``outcomes``. With
    ``outcomes_only`` nothing is kept in ``entries``, and an entry whose kind (``entry_kind``)
    is not terminal is not decoded: a run's outcomes for the price of reading its journal
    (7 µs less per entry skipped; the bench's reader shares two cores with what it measures).
    """

    #: Seconds without a record, while the journal has more, after which the consumer is made
    #: again at the watcher's own positions (seen once: a consumer across a broker restart).
    STALL_SECONDS = 5.0

    def __init__(
        self,
        journal_topic: str,
        start: dict[int, int],
        bootstrap: str | None = None,
        keep: Callable[[str], bool] = lambda instance: True,
        outcomes_only: bool = False,
    ) -> None:
        self.topic = journal_topic
        self.bootstrap = bootstrap
        self.keep = keep
        self.outcomes_only = outcomes_only
        self.entries: dict[str, list[JournalEntry]] = {}
        self.outcomes: dict[str, Outcome] = {}
        #: Records on the journal that are not journal entries (only a foreign writer puts any).
        self.foreign = 0
        probe = _reader(bootstrap)
        try:
            partitions = probe.list_topics(journal_topic, timeout=15).topics[journal_topic]
            self._next = {p: start.get(p, 0) for p in partitions.partitions}
        finally:
            probe.close()
        self._consumer = self._assigned()
        self._last_record = time.monotonic()

    def _assigned(self) -> Consumer:
        consumer = _reader(self.bootstrap)
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._next.items()])
        return consumer

    def _behind(self) -> bool:
        """Whether the journal has records this reader has not had; False while the cluster
        cannot say (a broker restarting): the next stall asks again."""
        probe = _reader(self.bootstrap)
        try:
            # +1: the last offset of a partition is often a transaction marker, never delivered.
            return any(
                watermarks(probe, TopicPartition(self.topic, p))[1] > offset + 1
                for p, offset in self._next.items()
            )
        except KafkaException as error:
            log.warning("journal reader: cannot read the end offsets now: %s", error)
            return False
        finally:
            probe.close()

    def poll(self, seconds: float = 0.2) -> int:
        """Take what arrives within ``seconds``; returns how many entries were kept."""
        kept = 0
        messages = self._consumer.consume(2000, timeout=seconds)
        for message in messages:
            if message.error() or message.value() is None:
                continue
            self._next[message.partition() or 0] = (message.offset() or 0) + 1
            value = message.value() or b""
            if self.outcomes_only:
                kind = entry_kind(value)
                if kind is not None and kind not in TERMINAL:
                    continue  # known from its first bytes to be an entry that is not an outcome
            try:
                entry = JournalEntry.decode(value)
            except DecodeError:  # written by something else: counted, never a reason to stop
                self.foreign += 1
                continue
            if not self.keep(entry.instance):
                continue
            kept += 1
            if not self.outcomes_only:
                self.entries.setdefault(entry.instance, []).append(entry)
            state = TERMINAL.get(entry.kind)
            if state and entry.instance not in self.outcomes:
                self.outcomes[entry.instance] = Outcome(entry.instance, state, entry.at_ms)
        now = time.monotonic()
        if messages:
            self._last_record = now
        elif now - self._last_record > self.STALL_SECONDS:
            self._last_record = now
            if self._behind():
                self._consumer.close()
                self._consumer = self._assigned()
        return kept

    def close(self) -> None:
        self._consumer.close()


def journal_outcomes_from(
    journal_topic: str,
    start: dict[int, int],
    instances: Iterable[str],
    timeout: float,
    bootstrap: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Outcome]:
    """Read the journal from ``start`` (see ``journal_end``) until every one of ``instances``
    has a terminal entry, or ``timeout``; returns the first terminal entry of each."""
    wanted = set(instances)
    watcher = JournalWatcher(
        journal_topic, start, bootstrap, keep=wanted.__contains__, outcomes_only=True
    )
    deadline = time.monotonic() + timeout
    try:
        while wanted - watcher.outcomes.keys() and time.monotonic() < deadline:
            if watcher.poll() and progress is not None:
                progress(len(watcher.outcomes))
    finally:
        watcher.close()
    return watcher.outcomes


def percentile(sorted_values: Sequence[int] | Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
