"""Declaring a saga as a Python class.

A saga names the event that starts it, the field of that event that names an instance, its
typed state, and its steps in order. Each step sends a command and waits for the replies that
finish it; a step that fails fails the saga, and the compensations of the steps that completed
run in reverse order::

    class OrderFulfillment(Saga, name="order_fulfillment"):
        start = OrderPlaced                 # key: OrderPlaced's key field, or key = "order_id"
        state = OrderState

        @staticmethod
        def begin(event: OrderPlaced) -> OrderState:
            return OrderState(order_id=event.order_id, ...)

        payment = Step(MakePayment, success=PaymentCompleted, failure=PaymentFailed,
                       compensate=Compensate(RefundPayment, success=PaymentRefunded))
        shipping = Step(CreateShippingLabel, success=ShippingLabelCreated, failure=ShippingFailed)

        @evolve(PaymentCompleted)
        def paid(state: OrderState, event: PaymentCompleted) -> OrderState:
            return replace(state, payment_id=event.payment_id)

A step's command is built from the state by matching field names, unless it passes ``build``.
``@evolve(T)`` functions are the only way the state changes after ``begin``: pure functions of
(state, input). ``@on(T)`` handlers take inputs that are not a step's reply and return commands
to send, ``Fail(reason)`` or ``Complete()``.

``upcasters = {OrderPlaced: order_placed_v1}`` reads records written with an older version of a
schema that Avro resolution cannot map onto the current one (a renamed field): each function gets
the old record's fields as written and returns the current ones (see
``stream_processors.codecs.records.register_upcaster``).

The class compiles to ``stream_processors.core.model.SagaDefinition`` when it is created, and every
declaration error raises ``DeclarationError`` there, at import, naming the problem.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

from sagas.flow import Target, catches, targets
from stream_processors.codecs.records import (
    Command,
    DeclarationError,
    Event,
    Record,
    State,
    Upcaster,
    register_upcaster,
)
from stream_processors.core.model import (
    DEFAULT_RETRY,
    Builder,
    CommandSpec,
    Directive,
    SagaDefinition,
    Task,
    reply_index,
    validate,
)
from stream_processors.core.policy import NO_RETRY, RetryPolicy
from stream_processors.core.throttle import Limit, PrioritySource, Throttle, compile_throttle


def _as_tuple(replies: type[Event] | Iterable[type[Event]] | None) -> tuple[type[Event], ...]:
    if replies is None:
        return ()
    if isinstance(replies, type):
        return (replies,)
    return tuple(replies)


C = TypeVar("C", bound=Command)


class _CommandDeclaration(Generic[C]):
    """What a step and a compensation share: a command type, how to build it, its replies.

    Generic in the command: ``build`` must return the declared command type (mypy checks it).
    """

    def __init__(
        self,
        command: type[C] | None,
        *,
        success: type[Event] | Iterable[type[Event]] | None,
        failure: type[Event] | Iterable[type[Event]] | None = None,
        build: Callable[..., C] | None = None,
        topic: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float | None = None,
    ) -> None:
        self.command = command
        self.success = _as_tuple(success)
        self.failure = _as_tuple(failure)
        self.build = build
        self.topic = topic
        self.retry = retry
        self.timeout_ms = None if timeout is None else round(timeout * 1000)

    def compile(self, where: str, state: type[State], in_map: bool = False) -> CommandSpec:
        command = self.command
        if isinstance(self, Wait):
            if not self.success:
                raise DeclarationError(f"{where}: declares no event to wait for")
            return CommandSpec(
                None,
                None,
                None,
                self.success,
                self.failure,
                self.retry,
                self.timeout_ms,
                early_ms=self.early_ms,
            )
        if command is None or not (isinstance(command, type) and issubclass(command, Command)):
            raise DeclarationError(f"{where}: has no command (got {command!r})")
        topic = self.topic or command.__topic__
        if topic is None:
            raise DeclarationError(
                f"{where}: {command.__qualname__} declares no topic; pass topic= to the step"
            )
        if not self.success:
            raise DeclarationError(f"{where}: declares no success reply")
        default = _build_from_item if in_map else _build_from_state
        return CommandSpec(
            command,
            self.build or default(where, command, state),
            topic,
            self.success,
            self.failure,
            self.retry,
            self.timeout_ms,
        )


class Compensate(_CommandDeclaration[C]):
    """The command that undoes a completed step, and the replies that finish it.

    A compensation has its own ``retry`` policy and ``timeout``; one that still fails parks the
    instance in ``needs_attention`` until an operator retries or resolves it.
    """


class Step(_CommandDeclaration[C]):
    """A step: the command it sends, its replies, and what undoes it.

    ``next`` names the step(s) to start when this one succeeds; by default the step declared
    after it, and none for the last. ``end=True`` makes it a last step wherever it stands.

    ``retry`` says which failed attempts are tried again and when (by default transient errors
    and timeouts: 3 attempts, 1 s then 2 s apart); ``timeout`` (seconds) bounds each attempt.
    ``catch`` maps what the step finally failed with (a failure reply class, or an error name
    such as ``TIMEOUT``) to the step to run instead, or to ``COMPENSATE``.
    """

    def __init__(
        self,
        command: type[C] | None,
        *,
        success: type[Event] | Iterable[type[Event]] | None,
        failure: type[Event] | Iterable[type[Event]] | None = None,
        compensate: Compensate[Any] | None = None,
        build: Callable[..., C] | None = None,
        topic: str | None = None,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float | None = None,
        catch: Mapping[type[Event] | str, Target] | None = None,
        max_visits: int | None = None,
        limit: str | Limit | None = None,
    ) -> None:
        super().__init__(
            command,
            success=success,
            failure=failure,
            build=build,
            topic=topic,
            retry=retry,
            timeout=timeout,
        )
        self.catch = catches(catch)
        self.compensate = compensate
        self.next = targets(next)
        self.end = end
        self.max_visits = max_visits
        self.early_ms = 0
        #: The limit its commands count against: one of the saga's ``limits`` by name, or its
        #: own (``stream_processors.core.throttle``); by default its service's, if declared.
        self.limit = limit


class Wait(Step[Command]):
    """A step that sends nothing and waits for an event (an approval, a webhook) with a timeout.

    The events must name the instance through their key field, like the start event, and come
    from a topic (their ``topic``) that the processor routes into the saga's inbox. An event
    that comes before the wait starts is kept (journaled) and satisfies the wait when it starts,
    if it came at most ``early`` seconds before (by default: the timeout); an event no wait
    takes is journaled as unmatched.
    """

    def __init__(
        self,
        *,
        success: type[Event] | Iterable[type[Event]],
        failure: type[Event] | Iterable[type[Event]] | None = None,
        timeout: float,
        compensate: Compensate[Any] | None = None,
        next: Target | Iterable[Target] | None = None,
        end: bool = False,
        catch: Mapping[type[Event] | str, Target] | None = None,
        early: float | None = None,
        max_visits: int | None = None,
    ) -> None:
        super().__init__(
            None,
            success=success,
            failure=failure,
            compensate=compensate,
            next=next,
            end=end,
            retry=NO_RETRY,
            timeout=timeout,
            catch=catch,
            max_visits=max_visits,
        )
        #: An awaited event that comes before the wait starts is kept this long (ms) for it.
        self.early_ms = round((timeout if early is None else early) * 1000)


def _build_from_state(where: str, command: type[Command], state: type[State]) -> Builder:
    """The default builder: take each command field from the state field of the same name."""
    state_fields = set(state.__fields__)
    required = [
        f.name
        for f in dataclasses.fields(command)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in state_fields]
    if missing:
        raise DeclarationError(
            f"{where}: {command.__qualname__} needs field {missing[0]!r}, which "
            f"{state.__qualname__} lacks; pass build= to say how to make the command"
        )
    names = [name for name in command.__fields__ if name in state_fields]
    command_hints, state_hints = typing.get_type_hints(command), typing.get_type_hints(state)
    for name in names:
        if _allows_none(state_hints[name]) and not _allows_none(command_hints[name]):
            raise DeclarationError(
                f"{where}: {state.__qualname__}.{name} may be None but "
                f"{command.__qualname__}.{name} may not; pass build= to say how to make the command"
            )

    def build(data: Any) -> Command:
        return command(**{name: getattr(data, name) for name in names})

    return build


def _build_from_item(where: str, command: type[Command], state: type[State]) -> Builder:
    """The default builder inside a map: each command field from the item (a record's field or
    a JSON object's key) if it has it, else from the state field of the same name."""
    names = list(command.__fields__)

    def field(data: Any, item: Any, name: str) -> Any:
        if isinstance(item, Mapping) and name in item:
            return item[name]
        if hasattr(item, name):
            return getattr(item, name)
        return getattr(data, name)

    def build(data: Any, item: Any) -> Command:
        return command(**{name: field(data, item, name) for name in names})

    return build


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


S = TypeVar("S")
R = TypeVar("R", bound=Record)
E = TypeVar("E", bound=Event)


class Evolves(Generic[S, R]):
    """A saga's evolver for ``R``, as ``@evolve(R)`` leaves it in the class body.

    Not a function, so the class does not bind it as a method: no ``@staticmethod`` is needed,
    and mypy checks ``(state, R) -> state`` against the type given to ``evolve``.
    """

    __sagalog_evolves__: type[R]

    def __init__(self, input_type: type[R], function: Callable[[S, R], S]) -> None:
        self.__sagalog_evolves__ = input_type
        self.function = _unwrap(function)

    def __call__(self, state: S, record: R) -> S:
        result: S = self.function(state, record)
        return result


class Handles(Generic[S, E]):
    """A saga's handler for ``E``, as ``@on(E)`` leaves it in the class body (see ``Evolves``)."""

    __sagalog_handles__: type[E]

    def __init__(
        self, input_type: type[E], function: Callable[[S, E, int], Iterable[Directive]]
    ) -> None:
        self.__sagalog_handles__ = input_type
        self.function = _unwrap(function)

    def __call__(self, state: S, event: E, now_ms: int) -> Iterable[Directive]:
        result: Iterable[Directive] = self.function(state, event, now_ms)
        return result


def evolve(input_type: type[R]) -> Callable[[Callable[[S, R], S]], Evolves[S, R]]:
    """Mark a pure function (state, input) -> state that applies an accepted input."""

    def mark(function: Callable[[S, R], S]) -> Evolves[S, R]:
        return Evolves(input_type, function)

    return mark


def on(
    input_type: type[E],
) -> Callable[[Callable[[S, E, int], Iterable[Directive]]], Handles[S, E]]:
    """Mark a handler (state, event, now_ms) -> iterable of commands, Fail or Complete."""

    def mark(function: Callable[[S, E, int], Iterable[Directive]]) -> Handles[S, E]:
        return Handles(input_type, function)

    return mark


def _claimed_replies(where: str, tasks: Iterable[Task]) -> dict[type[Record], Any]:
    try:
        return reply_index(tasks)
    except DeclarationError as error:
        raise DeclarationError(f"{where}: {error}") from None


def _unwrap(member: Any) -> Any:
    """The plain function of a class member (in a staticmethod, an ``Evolves``, a ``Handles``)."""
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, Evolves | Handles):
        return member.function
    return member


class Saga:
    """Base class of declared sagas. Subclass with ``name=``, and optionally ``version=`` and
    ``deadline=`` (seconds from the start after which a running instance compensates), and
    ``sla=`` (seconds or a ``timedelta``: how long an instance should take, start to finish; the
    metrics count instances finished within and over it, and those running past it). An ``sla``
    class attribute does the same as the keyword."""

    definition: ClassVar[SagaDefinition]
    start: ClassVar[type[Event]]
    state: ClassVar[type[State]]
    key: ClassVar[str | None] = None
    #: How long an instance should take (seconds or a timedelta); the ``sla=`` keyword wins.
    sla: ClassVar[float | timedelta | None] = None
    #: Older versions of the saga's records: {record class: function(old fields) -> fields}.
    upcasters: ClassVar[Mapping[type[Record], Upcaster]] = {}

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        version: int = 1,
        deadline: float | None = None,
        sla: float | timedelta | None = None,
        limits: Mapping[str, Limit] | None = None,
        priority: PrioritySource | None = None,
        aging: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        saga_name = name or cls.__name__
        where = f"saga {saga_name!r} ({cls.__qualname__})"
        start = getattr(cls, "start", None)
        if not (isinstance(start, type) and issubclass(start, Event)):
            raise DeclarationError(f"{where}: start must be an Event class, got {start!r}")
        state = getattr(cls, "state", None)
        if not (isinstance(state, type) and issubclass(state, State)):
            raise DeclarationError(f"{where}: state must be a State class, got {state!r}")
        # getattr_static: from the class or a base, without binding a plain function as a method.
        begin = _unwrap(inspect.getattr_static(cls, "begin", None))
        if not callable(begin):
            raise DeclarationError(f"{where}: needs a begin(event) -> state function")
        key = cls.key or start.__key__
        if key is None:
            raise DeclarationError(
                f"{where}: no key field: set key = '<field>' "
                f"or declare key= on {start.__qualname__}"
            )

        from sagas._compile import compile_paths

        step_limits: dict[str, str | Limit] = {}
        tasks, flow, first = compile_paths(where, cls, state, step_limits)
        throttle = _throttle(where, start, limits, step_limits, priority, aging)
        evolvers: dict[type[Record], Callable[[Any, Any], Any]] = {}
        handlers: dict[type[Record], Callable[[Any, Any, int], Iterable[Directive]]] = {}
        for member_name, member in cls.__dict__.items():
            function = _unwrap(member)
            for marker, table in (
                ("__sagalog_evolves__", evolvers),
                ("__sagalog_handles__", handlers),
            ):
                # The mark may sit on a staticmethod wrapper or on the function inside it.
                input_type = getattr(member, marker, None) or getattr(function, marker, None)
                if input_type is None:
                    continue
                if input_type in table:
                    raise DeclarationError(
                        f"{where}: two {marker.strip('_').split('_')[1]} functions for "
                        f"{input_type.__qualname__} (one is {member_name!r})"
                    )
                table[input_type] = function

        definition = SagaDefinition(
            name=saga_name,
            version=version,
            start=start,
            key=key,
            state=state,
            begin=begin,
            tasks=tasks,
            first=(first,) if first else (),
            evolvers=evolvers,
            handlers=handlers,
            replies=_claimed_replies(where, tasks.values()),
            deadline_ms=None if deadline is None else round(deadline * 1000),
            flow=flow,
            sla_ms=_sla_ms(where, sla if sla is not None else getattr(cls, "sla", None)),
            throttle=throttle,
        )
        validate(definition)
        _register_upcasters(where, cls.upcasters)
        cls.definition = definition


def _sla_ms(where: str, sla: object) -> int | None:
    """The ``sla`` option in ms: seconds (a number) or a ``timedelta``, positive."""
    if sla is None:
        return None
    if isinstance(sla, timedelta):
        sla = sla.total_seconds()
    if isinstance(sla, bool) or not isinstance(sla, int | float) or sla <= 0:
        raise DeclarationError(f"{where}: sla must be positive seconds or a timedelta, not {sla!r}")
    return round(sla * 1000)


def _throttle(
    where: str,
    start: type[Event],
    limits: Mapping[str, Limit] | None,
    step_limits: Mapping[str, str | Limit],
    priority: PrioritySource | None,
    aging: float | None,
) -> Throttle | None:
    """The saga's flow control (``limits=``, steps' ``limit=``, ``priority=``, ``aging=``)."""
    if isinstance(priority, str) and priority not in start.__fields__:
        raise DeclarationError(
            f"{where}: priority field {priority!r} is not a field of {start.__qualname__}"
        )
    try:
        return compile_throttle(limits, step_limits, priority, aging)
    except DeclarationError as error:
        raise DeclarationError(f"{where}: {error}") from None


def _register_upcasters(where: str, upcasters: Mapping[type[Record], Upcaster]) -> None:
    """Register a saga's ``upcasters`` (for any writer older than the current schema)."""
    if not isinstance(upcasters, Mapping):
        raise DeclarationError(f"{where}: upcasters must map record classes to functions")
    for record, upcaster in upcasters.items():
        if not (isinstance(record, type) and issubclass(record, Record)):
            raise DeclarationError(f"{where}: upcasters: {record!r} is not a record class")
        if getattr(record, "__avro__", None) is None:
            raise DeclarationError(f"{where}: upcasters: {record.__qualname__} has no schema")
        function = _unwrap(upcaster)
        if not callable(function):
            raise DeclarationError(
                f"{where}: the upcaster for {record.__qualname__} is not a function: {upcaster!r}"
            )
        try:
            register_upcaster(record.__avro__.full_name, function)
        except DeclarationError as error:
            raise DeclarationError(f"{where}: {error}") from None
