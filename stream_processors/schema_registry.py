"""A client for Confluent-compatible schema registries (Confluent, Apicurio's ccompat API, ...).

When ``SAGALOG_SCHEMA_REGISTRY_URL`` is set (or ``use_registry`` is called), records are written
in the Confluent wire format (a zero byte and the registry's 4-byte schema id) instead of Avro
single-object encoding, so consumers built on Confluent serializers read them as they are.
Schemas are registered under their full record name (the "record name strategy"), because a
record class knows its schema but not every topic it will be written to. Ids and definitions are
cached: the registry is asked once per schema per process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from stream_processors.avro import AvroSchema

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """The registry refused a request or could not be reached."""


class HttpSchemaRegistry:
    """The two calls Sagalog needs: register a schema, and fetch one by id."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise LookupError(f"{method} {path}: not found") from error
            detail = error.read().decode(errors="replace")[:300]
            raise RegistryError(f"{method} {path}: HTTP {error.code}: {detail}") from error
        except urllib.error.URLError as error:
            raise RegistryError(f"{method} {path}: {error.reason}") from error

    def register(self, schema: AvroSchema) -> int:
        """Register ``schema`` under its full name (idempotent); returns its global id."""
        answer = self._request(
            "POST",
            f"/subjects/{schema.full_name}/versions",
            {"schema": json.dumps(schema.definition, sort_keys=True)},
        )
        return int(answer["id"])

    def definition(self, schema_id: int) -> Mapping[str, Any]:
        answer = self._request("GET", f"/schemas/ids/{schema_id}")
        parsed: Mapping[str, Any] = json.loads(answer["schema"])
        return parsed
