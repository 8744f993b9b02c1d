"""The engine: the saga processor, its local snapshot store and restore, header routing,
metrics, and the schema history it keeps on Kafka.
"""
