"""Sagalog: declare sagas, events and commands as Python classes, and run them on Kafka.

What users import lives here: ``Event``, ``Command`` and ``State`` (typed records bound to Avro
schemas); ``Saga``, ``Step``, ``Wait``, ``Compensate``, ``evolve`` and ``on`` (declaring sagas);
``RetryPolicy`` with the error names ``TRANSIENT``, ``TIMEOUT`` and ``ALL``, and ``COMPENSATE``
(failure handling); ``Fail`` and ``Complete`` (handler outcomes); ``Publisher`` (publishing domain
events); and ``Worker``, ``BusinessError`` and ``TransientError`` (services that handle commands).
The test kit is ``sagas.testing`` (import it from there: it is not loaded here).
"""

from sagas.publisher import Publisher
from sagas.saga import Compensate, Saga, Step, Wait, evolve, on
from sagas.worker import BusinessError, CommandContext, TransientError, Worker
from stream_processors.codecs.records import Command, DeclarationError, Event, State
from stream_processors.core.model import COMPENSATE, Complete, Fail
from stream_processors.core.policy import ALL, TIMEOUT, TRANSIENT, RetryPolicy

__all__ = [
    "ALL",
    "COMPENSATE",
    "TIMEOUT",
    "TRANSIENT",
    "BusinessError",
    "Command",
    "CommandContext",
    "Compensate",
    "Complete",
    "DeclarationError",
    "Event",
    "Fail",
    "Publisher",
    "RetryPolicy",
    "Saga",
    "State",
    "Step",
    "TransientError",
    "Wait",
    "Worker",
    "evolve",
    "on",
]
