"""The Confluent wire format through a schema registry, end to end over HTTP.

A small registry server speaking the two calls of the Confluent REST API that Sagalog uses
(register under a subject, fetch by id) runs on loopback for the duration of the module. No
registry ships as a Python package, so this stands in for one; the client code under test is
the real one, over real HTTP. A second instance serves HTTPS with a certificate from a CA made
for the module with the openssl command, and wants basic authentication.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stream_processors.codecs.avro import DecodeError, SchemaCatalog, decode, parse
from stream_processors.codecs.schema_registry import (
    CA_LOCATION_VARIABLE,
    USER_INFO_VARIABLE,
    HttpSchemaRegistry,
    RegistryError,
)

V1 = {
    "type": "record",
    "name": "Ping",
    "namespace": "tests.registry",
    "fields": [{"name": "n", "type": "long"}],
}
V2 = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string", "default": "-"}]}


class _Registry(BaseHTTPRequestHandler):
    schemas: ClassVar[list[str]] = []
    subjects: ClassVar[dict[str, list[int]]] = {}

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if not self._authorized():
            return None
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            return self._reply(404, {"error_code": 404})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        schema = json.dumps(json.loads(body["schema"]), sort_keys=True)
        if schema not in self.schemas:
            self.schemas.append(schema)
        schema_id = self.schemas.index(schema) + 1
        self.subjects.setdefault(parts[1], []).append(schema_id)
        self._reply(200, {"id": schema_id})

    def _authorized(self) -> bool:
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return None
        prefix = "/schemas/ids/"
        if not self.path.startswith(prefix):
            return self._reply(404, {"error_code": 404})
        schema_id = int(self.path[len(prefix) :])
        if not 1 <= schema_id <= len(self.schemas):
            return self._reply(404, {"error_code": 40403, "message": "Schema not found"})
        self._reply(200, {"schema": self.schemas[schema_id - 1]})

    def log_message(self, *args: Any) -> None:
        pass


SECRET = "s3cr3t-pa55"


class _SecuredRegistry(_Registry):
    """The same registry, for user ``sagalog`` with password ``SECRET`` only."""

    def _authorized(self) -> bool:
        wanted = "Basic " + base64.b64encode(f"sagalog:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") == wanted:
            return True
        self._reply(401, {"error_code": 401, "message": "Unauthorized"})
        return False


def _serve(server: HTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    for port in _serve(HTTPServer(("127.0.0.1", 0), _Registry)):
        yield f"http://127.0.0.1:{port}"


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made for this module, and a certificate for 127.0.0.1 it signed (server.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    _openssl(
        folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem",
    )  # fmt: skip
    return folder / "ca.pem"


@pytest.fixture(scope="module")
def secured_url(ca_file: Path) -> Iterator[str]:
    """HTTPS with basic authentication; the URL carries no credentials."""
    server = HTTPServer(("127.0.0.1", 0), _SecuredRegistry)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca_file.parent / "server.pem", ca_file.parent / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for port in _serve(server):
        yield f"https://127.0.0.1:{port}"


def test_records_are_written_in_the_confluent_wire_format(registry_url: str) -> None:
    writer = SchemaCatalog(HttpSchemaRegistry(registry_url))
    schema = writer.add(parse(V1))
    framed = writer.encode(schema, {"n": 7})

    assert framed[0] == 0
    schema_id = int.from_bytes(framed[1:5], "big")
    assert _Registry.subjects["tests.registry.Ping"][-1] == schema_id
    assert framed[5:] == b"\x0e"  # zigzag 7


def test_a_reader_fetches_an_unknown_writer_schema_by_id_and_resolves_it(registry_url: str) -> None:
    old_writer = SchemaCatalog(HttpSchemaRegistry(registry_url))
    framed = old_writer.encode(old_writer.add(parse(V1)), {"n": 3})

    # A reader that only knows v2, the current version, and has never seen v1.
    reader = SchemaCatalog(HttpSchemaRegistry(registry_url))
    reader.add(parse(V2))
    schema, datum = decode(reader, framed)

    assert schema.full_name == "tests.registry.Ping"
    assert datum == {"n": 3, "note": "-"}


def test_an_id_the_registry_does_not_have_is_an_unknown_schema(registry_url: str) -> None:
    reader = SchemaCatalog(HttpSchemaRegistry(registry_url))
    with pytest.raises(DecodeError) as caught:
        decode(reader, b"\x00\x00\x00\x99\x99\x02")
    assert caught.value.reason == "unknown-schema"


def test_an_unreachable_registry_is_a_registry_error() -> None:
    catalog = SchemaCatalog(HttpSchemaRegistry("http://127.0.0.1:9", timeout=2))
    with pytest.raises(RegistryError):
        catalog.encode(catalog.add(parse(V1)), {"n": 1})


def _register(registry: HttpSchemaRegistry) -> int:
    return registry.register(parse(V1))


def test_a_secured_registry_takes_credentials_and_ca_from_the_environment(
    secured_url: str, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(USER_INFO_VARIABLE, f"sagalog:{SECRET}")
    monkeypatch.setenv(CA_LOCATION_VARIABLE, str(ca_file))
    registry = HttpSchemaRegistry(secured_url)
    schema_id = _register(registry)
    assert registry.definition(schema_id)["name"] == "Ping"


def test_credentials_in_the_url_are_used_and_never_shown(secured_url: str, ca_file: Path) -> None:
    with_user = secured_url.replace("https://", f"https://sagalog:{SECRET}@")
    registry = HttpSchemaRegistry(with_user, ca_location=str(ca_file))
    assert registry.url == secured_url
    assert _register(registry) >= 1
    wrong = HttpSchemaRegistry(with_user.replace(SECRET, "guess"), ca_location=str(ca_file))
    with pytest.raises(RegistryError) as caught:
        _register(wrong)
    message = str(caught.value)
    assert "HTTP 401" in message and "given but refused" in message
    assert secured_url in message and "guess" not in message and "sagalog:" not in message


def test_a_registry_without_credentials_says_which_setting_is_missing(
    secured_url: str, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(USER_INFO_VARIABLE, raising=False)
    with pytest.raises(RegistryError) as caught:
        _register(HttpSchemaRegistry(secured_url, ca_location=str(ca_file)))
    assert "HTTP 401" in str(caught.value) and USER_INFO_VARIABLE in str(caught.value)


def test_a_certificate_from_an_unknown_ca_is_refused(
    secured_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CA_LOCATION_VARIABLE, raising=False)
    registry = HttpSchemaRegistry(secured_url, user_info=f"sagalog:{SECRET}")
    with pytest.raises(RegistryError) as caught:
        _register(registry)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_deciding_never_calls_the_registry(
    registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pure core encodes commands without I/O; the processor registers schemas at start."""
    from examples.order_fulfillment.messages import MakePayment, OrderPlaced
    from examples.order_fulfillment.saga import OrderFulfillment
    from stream_processors.codecs.records import CATALOG
    from stream_processors.core.decide import Input, decide

    monkeypatch.setattr(CATALOG, "registry", HttpSchemaRegistry(registry_url))
    monkeypatch.setattr(CATALOG, "_registry_ids", {})
    monkeypatch.setattr(CATALOG, "_by_registry_id", {})
    order = OrderPlaced(
        order_id="o-1", customer_id="c", amount_cents=5, card_token="t", postcode="1"
    )
    subject = MakePayment.__avro__.full_name

    def make_payment() -> bytes:
        decision = decide(OrderFulfillment.definition, None, Input(order, order.encode()), 1)
        return decision.commands[0].value

    before = len(_Registry.subjects.get(subject, []))
    assert make_payment()[:2] == b"\xc3\x01"  # not registered yet: single-object, no HTTP call
    assert len(_Registry.subjects.get(subject, [])) == before

    CATALOG.register([MakePayment.__avro__])  # what prepare_saga_schemas does at start
    framed = make_payment()
    assert framed[0] == 0
    assert int.from_bytes(framed[1:5], "big") == _Registry.subjects[subject][-1]
