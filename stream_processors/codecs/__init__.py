"""Codecs: Avro encoding, the typed-record catalog, schema derivation and compatibility,
record signing, and the schema registry client.
"""
