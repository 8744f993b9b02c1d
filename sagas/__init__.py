"""Sagalog: declare sagas, events and commands as Python classes, and run them on Kafka."""
