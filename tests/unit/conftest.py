"""Fixtures for the pure-core unit tests: Avro schemas that only the tests use.

Record classes find their schema by full name in the process catalog, the nearest ``schemas/``
folder, ``SAGALOG_SCHEMA_PATH`` and the built-in folder. The test schemas live in one folder
written once per session (the catalog loads each folder once, and two different schemas of the
same name would clash), all under the ``tests.unit`` namespace so they never meet real ones.
Tests that declare record classes take ``schema_path``, which points ``SAGALOG_SCHEMA_PATH`` at
that folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _record(namespace: str, name: str, *fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": namespace, "fields": list(fields)}


def _f(name: str, avro_type: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": avro_type, **extra}


OPTIONAL_STRING = ["null", "string"]

#: Every schema the unit tests declare classes against, by file name.
TEST_SCHEMAS: dict[str, dict[str, Any]] = {
    # tests/unit/test_derive.py: a file a derived class agrees with (docs aside)
    "derive/Agreed.avsc": {
        **_record("tests.unit.derive", "Agreed", _f("id", "string", doc="its id")),
        "doc": "Written by hand.",
    },
    # tests/unit/test_records.py
    "records/Shape.avsc": _record(
        "tests.unit.records",
        "Shape",
        _f("id", "string"),
        _f("count", "long"),
        _f("note", OPTIONAL_STRING, default=None),
    ),
    "records/AllTypes.avsc": _record(
        "tests.unit.records",
        "AllTypes",
        _f("id", "string"),
        _f("count", "long"),
        _f("small", "int"),
        _f("ratio", "double"),
        _f("flag", "boolean"),
        _f("blob", "bytes"),
        _f("tags", {"type": "array", "items": "string"}),
        _f("limits", {"type": "map", "values": "long"}),
        _f("note", OPTIONAL_STRING, default=None),
    ),
    "records/Keyed.avsc": _record("tests.unit.records", "Keyed", _f("id", "string")),
    "records/Unbound.avsc": _record("tests.unit.records", "Unbound", _f("x", "string")),
    # tests/unit/test_saga_declaration.py
    "sagas/Notify.avsc": _record(
        "tests.unit.sagas", "Notify", _f("order_id", "string"), _f("email", "string")
    ),
    # tests/unit/test_decide_fold.py
    "orders/RefundFailed.avsc": _record(
        "tests.unit.orders", "RefundFailed", _f("order_id", "string"), _f("reason", "string")
    ),
    "orders/OrderCancelled.avsc": _record(
        "tests.unit.orders", "OrderCancelled", _f("order_id", "string"), _f("reason", "string")
    ),
    "orders/OrderCollected.avsc": _record(
        "tests.unit.orders", "OrderCollected", _f("order_id", "string")
    ),
    "orders/SendReceipt.avsc": _record(
        "tests.unit.orders", "SendReceipt", _f("order_id", "string")
    ),
    # tests/unit/test_failure_handling.py
    "failures/RefundFailed.avsc": _record(
        "tests.unit.failures", "RefundFailed", _f("order_id", "string"), _f("reason", "string")
    ),
    "failures/OrderApproved.avsc": _record(
        "tests.unit.failures", "OrderApproved", _f("order_id", "string"), _f("approver", "string")
    ),
    "failures/OrderRejected.avsc": _record(
        "tests.unit.failures", "OrderRejected", _f("order_id", "string"), _f("reason", "string")
    ),
    "failures/SendInvoice.avsc": _record(
        "tests.unit.failures", "SendInvoice", _f("order_id", "string"), _f("amount_cents", "long")
    ),
    "failures/InvoiceSent.avsc": _record(
        "tests.unit.failures", "InvoiceSent", _f("order_id", "string"), _f("invoice_id", "string")
    ),
    "failures/OrderCollected.avsc": _record(
        "tests.unit.failures", "OrderCollected", _f("order_id", "string")
    ),
}


@pytest.fixture(scope="session")
def unit_schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of test-only ``.avsc`` files, written once per session."""
    root = tmp_path_factory.mktemp("unit-schemas")
    for relative, definition in TEST_SCHEMAS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(definition, indent=1))
    return root


@pytest.fixture
def schema_path(monkeypatch: pytest.MonkeyPatch, unit_schema_dir: Path) -> Path:
    """Point ``SAGALOG_SCHEMA_PATH`` at the test schemas for one test."""
    monkeypatch.setenv("SAGALOG_SCHEMA_PATH", str(unit_schema_dir))
    return unit_schema_dir
