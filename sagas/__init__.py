"""Sagalog: declare sagas, events and commands as Python classes, and run them on Kafka.

What users import lives here: ``Event``, ``Command`` and ``State`` (typed records bound to Avro
schemas), ``Saga``, ``Step``, ``Compensate``, ``evolve`` and ``on`` (declaring sagas), ``Fail`` and
``Complete`` (handler outcomes), ``Publisher`` (publishing domain events) and ``Worker`` with
``BusinessError`` (services that handle commands).
"""

from sagas.saga import Compensate, Saga, Step, evolve, on
from stream_processors.model import Complete, Fail
from stream_processors.records import Command, DeclarationError, Event, State

__all__ = [
    "Command",
    "Compensate",
    "Complete",
    "DeclarationError",
    "Event",
    "Fail",
    "Saga",
    "State",
    "Step",
    "evolve",
    "on",
]
