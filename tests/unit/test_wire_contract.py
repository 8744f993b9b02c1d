"""docs/wire-contract.md shows what the code writes: every example block, byte for byte.

The examples are made by ``tools/wire_examples.py`` with Sagalog's own code; the document shows
each after a ``<!-- wire-example: NAME -->`` line. A change to an encoding, a header, the
signature or a schema makes its example stale here: run
``.venv/bin/python tools/wire_examples.py --write`` and read what changed before committing it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastavro.schema import to_parsing_canonical_form

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    path = ROOT / "tools" / "wire_examples.py"
    spec = importlib.util.spec_from_file_location("wire_examples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TOOL = _load()
CURRENT: dict[str, str] = TOOL.examples()
TEXT: str = TOOL.DOCUMENT.read_text()
SHOWN: dict[str, str] = TOOL.documented(TEXT)


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_the_document_shows_the_example_as_the_code_makes_it(name: str) -> None:
    assert name in SHOWN, f"docs/wire-contract.md has no <!-- wire-example: {name} --> block"
    assert SHOWN[name] == CURRENT[name], (
        f"example {name!r} of docs/wire-contract.md is stale: "
        "run .venv/bin/python tools/wire_examples.py --write"
    )


def test_every_example_the_document_shows_is_made_by_the_tool() -> None:
    assert sorted(set(SHOWN) - set(CURRENT)) == []


def test_the_documents_crc64_is_the_fingerprint_the_code_writes() -> None:
    found = re.search(r"^<!-- wire-code: crc64-avro -->\n```python\n(.*?)^```$", TEXT, re.M | re.S)
    assert found, "docs/wire-contract.md has no <!-- wire-code: crc64-avro --> block"
    namespace: dict[str, Any] = {}
    exec(found.group(1), namespace)
    crc64_avro = namespace["crc64_avro"]
    # The Avro specification's test vector: the fingerprint of the schema "null".
    assert crc64_avro(b'"null"') == 0x63DD24E7CC258F8A
    for record in (TOOL.OrderPlaced, TOOL.CommandFailed, TOOL.OperatorAction):
        schema = record.__avro__
        canonical = to_parsing_canonical_form(schema.parsed).encode()
        assert crc64_avro(canonical).to_bytes(8, "little") == schema.fingerprint


def test_the_partition_is_the_java_clients() -> None:
    # Values of Kafka's own murmur2 tests (Java: Utils.murmur2), as signed 32-bit ints.
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536}
    for key, expected in cases.items():
        assert TOOL.murmur2(key) == expected
