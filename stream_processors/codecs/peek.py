"""One string field read off an encoded record's first bytes, without decoding the rest (pure).

Some readers want one field of many records and decode few of them: restore skips finished
snapshots by their status, a run's outcome reader skips journal entries that are not terminal
by their kind. Decoding a whole record to look at one field costs about sixteen times reading
it off the front. ``LeadingString`` reads the last of a schema's first few fields, a string,
from a record written with the current version of that schema in the native framing; for
anything else (another writer, registry framing, a record cut short or damaged) it answers
None, and the caller decodes the record as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from stream_processors.codecs.records import CATALOG

#: The leading fields' types that can be skipped: a varint, or a varint length and its bytes.
_NUMBERS = frozenset({"int", "long"})
_SIZED = frozenset({"string", "bytes"})


def varint(data: bytes, position: int) -> tuple[int, int]:
    """The Avro (zig-zag) variable-length integer at ``position``, and where the next begins."""
    shift = result = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7


@dataclass(frozen=True)
class LeadingString:
    """The string field that ends ``leading`` (``(name, type)`` pairs, the first fields of the
    schema ``full_name``), read off encoded records of that schema's current version."""

    full_name: str
    leading: tuple[tuple[str, str], ...]

    @cached_property
    def _header(self) -> bytes | None:
        """The frame header of the current schema, if it begins with ``leading``."""
        schema = CATALOG.current(self.full_name)
        fields = schema.definition["fields"][: len(self.leading)]
        found = tuple((f["name"], f["type"]) for f in fields)
        skippable = all(kind in _NUMBERS | _SIZED for _, kind in self.leading[:-1])
        return schema.header if found == self.leading and skippable else None

    def read(self, data: bytes) -> str | None:
        """The field's value in ``data``, or None when it cannot be read this way."""
        header = self._header
        if header is None or not data.startswith(header):
            return None
        position = len(header)
        try:
            for _, kind in self.leading[:-1]:
                value, position = varint(data, position)
                if kind in _SIZED:
                    position += value
            size, position = varint(data, position)
            end = position + size
            if size < 0 or end > len(data):
                return None
            return data[position:end].decode()
        except (IndexError, UnicodeDecodeError):  # cut short or damaged: decoding it will say
            return None


__all__ = ["LeadingString", "varint"]
