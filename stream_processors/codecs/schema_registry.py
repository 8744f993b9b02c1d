"""A client for Confluent-compatible schema registries (Confluent, Apicurio's ccompat API, ...).

When ``SAGALOG_SCHEMA_REGISTRY_URL`` is set (or ``use_registry`` is called), records are written
in the Confluent wire format (a zero byte and the registry's 4-byte schema id) instead of Avro
single-object encoding, so consumers built on Confluent serializers read them as they are.
Schemas are registered under their full record name (the "record name strategy"), because a
record class knows its schema but not every topic it will be written to. Ids and definitions are
cached: the registry is asked once per schema per process.

A secured registry: basic authentication from ``user:password`` given to the client, else
from the URL (``https://user:password@host``), else from
``SAGALOG_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO``; its certificate verified against
``SAGALOG_SCHEMA_REGISTRY_CA_LOCATION`` (a PEM file) when set,
else the system's CAs. Errors show the URL without its credentials, and never the password.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from stream_processors.codecs.avro import AvroSchema

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
USER_INFO_VARIABLE = "SAGALOG_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"
CA_LOCATION_VARIABLE = "SAGALOG_SCHEMA_REGISTRY_CA_LOCATION"


class RegistryError(Exception):
    """The registry refused a request or could not be reached."""


class HttpSchemaRegistry:
    """The two calls Sagalog needs: register a schema, and fetch one by id."""

    def __init__(
        self,
        url: str,
        timeout: float = 10,
        *,
        user_info: str | None = None,
        ca_location: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        in_url = None
        if parts.username is not None:
            password = urllib.parse.unquote(parts.password or "")
            in_url = f"{urllib.parse.unquote(parts.username)}:{password}"
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        #: The registry's URL without credentials: safe to show.
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        self.timeout = timeout
        user_info = user_info or in_url or os.environ.get(USER_INFO_VARIABLE) or None
        self._authorization = (
            None if user_info is None else "Basic " + base64.b64encode(user_info.encode()).decode()
        )
        ca_location = ca_location or os.environ.get(CA_LOCATION_VARIABLE) or None
        self._context = None if ca_location is None else _ssl_context(ca_location)

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        where = f"{method} {self.url}{path}"
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context
            ) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise LookupError(f"{where}: not found") from None
            detail = error.read().decode(errors="replace")[:300]
            if error.code in (401, 403):
                detail = f"{detail} (credentials: user info in the URL or {USER_INFO_VARIABLE}" + (
                    ", none given)" if self._authorization is None else ", given but refused)"
                )
            raise RegistryError(f"{where}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            raise RegistryError(f"{where}: {reason}") from None

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


def _ssl_context(ca_location: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_location)
    except (OSError, ssl.SSLError) as error:
        raise RegistryError(f"cannot use {ca_location} ({CA_LOCATION_VARIABLE}): {error}") from None
