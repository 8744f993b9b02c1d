"""The Kafka shell: client configuration, connection errors, transactions, topics, broker
limits, and reading topics to their end.
"""
