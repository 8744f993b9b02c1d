"""Sagalog: declare sagas, events and commands as Python classes, and run them on Kafka.

What users import lives here: ``Event``, ``Command`` and ``State`` (typed records bound to Avro
schemas); ``Saga``, ``Step``, ``Wait``, ``Compensate``, ``evolve`` and ``on`` (declaring sagas);
``Choice``/``When``, ``Parallel``, ``Map``, ``Branch``, ``Sleep``, ``Child``, ``Succeed`` and
``Fail`` (control flow, ``sagas.flow``; ``CHILD_FAILED`` is a child step's error name);
``RetryPolicy`` with the error names ``TRANSIENT``, ``TIMEOUT`` and ``ALL``, and ``COMPENSATE``
(failure handling); ``Limit`` (flow control: ``limits=`` on a saga, ``limit=`` on a step);
``Fail`` and ``Complete`` (handler outcomes); ``Publisher`` (publishing domain
events; ``DeliveryFailed`` when the broker did not take some); and ``Worker``,
``BusinessError``, ``TransientError`` and ``TaskError`` (services that handle commands,
and the tasks of declarative definitions by action: ``Worker.action``).
The test kit is ``sagas.testing`` (import it from there: it is not loaded here).
"""

from sagas.flow import Branch, Child, Choice, Map, Parallel, Sleep, Succeed, When
from sagas.publisher import DeliveryFailed, Publisher
from sagas.saga import Compensate, Saga, Step, Wait, evolve, on
from sagas.worker import BusinessError, CommandContext, TaskError, TransientError, Worker
from stream_processors.codecs.records import Command, DeclarationError, Event, State
from stream_processors.core.model import CHILD_FAILED, COMPENSATE, Complete, Fail
from stream_processors.core.policy import ALL, TIMEOUT, TRANSIENT, RetryPolicy
from stream_processors.core.throttle import Limit

__all__ = [
    "ALL",
    "CHILD_FAILED",
    "COMPENSATE",
    "TIMEOUT",
    "TRANSIENT",
    "Branch",
    "BusinessError",
    "Child",
    "Choice",
    "Command",
    "CommandContext",
    "Compensate",
    "Complete",
    "DeclarationError",
    "DeliveryFailed",
    "Event",
    "Fail",
    "Limit",
    "Map",
    "Parallel",
    "Publisher",
    "RetryPolicy",
    "Saga",
    "Sleep",
    "State",
    "Step",
    "Succeed",
    "TaskError",
    "TransientError",
    "Wait",
    "When",
    "Worker",
    "evolve",
    "on",
]
