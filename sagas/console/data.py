"""What the console shows and does, without the web: the library calls behind each page.

Nothing here is the console's own logic of sagas: instances are found in the SQLite index
(``stream_processors.tools.index``), kept fed from each saga's snapshots changelog by one
``IndexFeed`` thread per saga (what ``sagas index --follow`` does); an instance's history is read
from the journal (``stream_processors.tools.history``) and drawn by
``stream_processors.tools.diagram``; operator actions, signals, dead letters and redrive are
``sagas.operator``'s. The console adds who is acting: the logged-in user's name.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sagas import operator
from sagas.console.timeline import Item, timeline
from sagas.operator import DeadLetter, OperatorError
from sagas.verdicts import Verdict
from stream_processors.core.instance import Instance
from stream_processors.core.model import ENGINE_INPUTS, SagaDefinition
from stream_processors.engine.schema_history import SchemaHistory
from stream_processors.kafka.topics import SagaTopics
from stream_processors.tools.diagram import mermaid
from stream_processors.tools.history import fold_until, instance_history, read_history
from stream_processors.tools.index import Filters, Index, Listed, Page, index_path
from stream_processors.tools.index_feed import IndexFeed

#: How long an action from the console waits for the processor's verdict (seconds): the page
#: says what became of it, or that none came yet (the timeline shows it when it does).
VERDICT_WAIT = 10.0

LOG = logging.getLogger(__name__)
#: Seconds between attempts to start following a changelog that is not there yet.
RETRY_FEED = 5.0


@dataclass
class SagaView:
    """One saga the console shows: its definition, topics, and the folder of its index."""

    definition: SagaDefinition
    state_dir: Path
    bootstrap: str | None
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def topics(self) -> SagaTopics:
        return SagaTopics.for_saga(self.definition)

    @property
    def index_file(self) -> Path:
        return index_path(self.state_dir)

    def dlq_topics(self) -> list[str]:
        """The saga's own dead-letter topic, then its workers' (``<command topic>.dlq``)."""
        workers = sorted(f"{topic}.dlq" for topic in self.definition.command_topics())
        return [self.topics.dlq, *workers]

    def nodes(self) -> list[str]:
        """The definition's node names (what the step filter offers)."""
        return sorted({*self.definition.tasks, *self.definition.flow})

    @contextmanager
    def index(self) -> Iterator[Index]:
        """The index, opened once per thread (a SQLite connection stays in its thread; the
        web server's pool reuses its threads, and opening writes the schema's check)."""
        opened: Index | None = getattr(self._local, "index", None)
        if opened is None:
            opened = self._local.index = Index(self.index_file)
        yield opened

    # -- instances ---------------------------------------------------------------------------

    def counts(self, filters: Filters | None = None) -> dict[str, int]:
        with self.index() as index:
            return index.counts(filters or Filters())

    def rows(self, filters: Filters, page: Page) -> list[Listed]:
        """One page of the instances matching ``filters``."""
        with self.index() as index:
            return index.page(filters, page)

    def find(self, instance: str) -> Listed | None:
        with self.index() as index:
            return index.find(instance)

    def detail(self, instance: str) -> Detail | None:
        """An instance's history, state and diagram, from its journal; None when it has none."""
        listed = self.find(instance)
        if listed is not None:  # the index says where its history starts: Kafka's time index
            located = read_history(
                self.topics.journal, instance, self.bootstrap, since_ms=listed.started_at_ms
            )
        else:
            located, _ = instance_history(
                self.topics.journal, instance, self.state_dir, self.bootstrap
            )
        folded = fold_until(self.definition, located)
        if folded is None:
            return None
        return Detail(
            instance=folded,
            state=json.dumps(folded.data.to_avro(), indent=2, default=str),
            timeline=timeline(located),
            diagram=mermaid(self.definition, folded),
        )

    def dead_letters_of(self, instance: str) -> list[DeadLetter]:
        """The dead letters of one instance: keyed by its id, in any of the saga's DLQs."""
        return [
            letter
            for topic in self.dlq_topics()
            for letter in self.dead_letters(topic)
            if letter.key_text == instance
        ]

    def dead_letters(self, topic: str) -> list[DeadLetter]:
        """A dead-letter topic's records; none when the topic does not exist (yet)."""
        try:
            return operator.dead_letters(topic, self.bootstrap, timeout=15)
        except OperatorError as error:
            LOG.info("%s", error)
            return []

    # -- acting ------------------------------------------------------------------------------

    def act(self, instance: str, action: str, by: str, reason: str) -> Verdict:
        """An operator action, and the processor's verdict on it (waited for, briefly)."""
        return operator.send_and_wait(
            self.definition, instance, action, by, reason, self.bootstrap, timeout=VERDICT_WAIT
        )

    def signal(self, instance: str, event_type: str, data: str, by: str, reason: str) -> Verdict:
        """Send the saga's input ``event_type`` built from JSON ``data`` to one instance."""
        cls = operator.input_named(self.definition, event_type)
        try:
            fields = json.loads(data or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"the fields are not JSON: {error}") from None
        event = operator.event_of(cls, fields)
        return operator.signal_and_wait(
            self.definition, instance, event, by, reason, self.bootstrap, timeout=VERDICT_WAIT
        )

    def redrive(self, topic: str, positions: set[tuple[int, int]]) -> int:
        """Send the dead letters at ``(partition, offset)`` of ``topic`` back where they came
        from; ``ValueError`` when one is not there."""
        if topic not in self.dlq_topics():
            raise ValueError(f"{topic} is not a dead-letter topic of {self.name}")
        letters = [d for d in self.dead_letters(topic) if (d.partition, d.offset) in positions]
        absent = positions - {(d.partition, d.offset) for d in letters}
        if absent:
            missing = ", ".join(f"{p}:{o}" for p, o in sorted(absent))
            raise ValueError(f"no dead letter in {topic} at {missing}")
        return operator.redrive(topic, letters, self.bootstrap)

    def signals(self) -> list[str]:
        """The names of the inputs an operator may send: the saga's own, not the engine's
        (actions have buttons of their own; a ``CommandFailed`` needs its attempt's id)."""
        own = self.definition.inputs - set(ENGINE_INPUTS)
        return sorted(t.__name__ for t in own)


@dataclass(frozen=True)
class Detail:
    """What an instance page shows of the instance."""

    instance: Instance
    state: str
    timeline: list[Item]
    diagram: str


class Feeds:
    """One thread per saga keeping its index up to date with its snapshots changelog."""

    def __init__(self, views: list[SagaView], bootstrap: str | None) -> None:
        self.views = views
        self.bootstrap = bootstrap
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        SchemaHistory(self.bootstrap).serve_unknown()  # snapshots of older schema versions
        for view in self.views:
            thread = threading.Thread(
                target=self._feed, args=(view,), name=f"index-{view.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _feed(self, view: SagaView) -> None:
        while not self._stop.is_set():
            try:
                self._follow(view)
            except Exception as error:  # a missing changelog (the saga never ran), a broker away
                LOG.warning("index of %s: %s; trying again in %.0f s", view.name, error, RETRY_FEED)
                self._stop.wait(RETRY_FEED)

    def _follow(self, view: SagaView) -> None:
        index = Index(view.index_file)
        try:
            feed = IndexFeed(index, view.topics.snapshots, self.bootstrap)
            try:
                feed.follow(lambda: not self._stop.is_set(), lambda _: None)
            finally:
                feed.close()
        finally:
            index.close()
