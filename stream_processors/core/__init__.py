"""The pure core: the saga model, decide, fold, policies, the journal and the instance.

Nothing here talks to Kafka or does I/O; the engine and the test kit both build on it.
"""
