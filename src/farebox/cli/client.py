"""A small HTTP client for the management commands: they talk to a running server with
the management key, so the CLI and the HTTP API can never disagree about the rules."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def server_url(url: str | None) -> str:
    return (url or os.environ.get("FAREBOX_URL") or DEFAULT_URL).rstrip("/")


def management_key() -> str:
    key = os.environ.get("FAREBOX_MANAGEMENT_KEY")
    if key:
        return key.strip()
    home = Path(os.environ.get("FAREBOX_HOME") or "~/.farebox").expanduser()
    path = home / "management_key"
    try:
        return path.read_text().strip()
    except OSError:
        raise ClientError(0, f"No management key: set FAREBOX_MANAGEMENT_KEY or start the server once so it "
                             f"writes {path}") from None


def call(url: str | None, method: str, path: str, body: dict[str, Any] | None = None,
         key: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server_url(url) + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key or management_key()}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null", parse_float=Decimal)
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        raise ClientError(e.code, message) from None
    except urllib.error.URLError as e:
        raise ClientError(0, f"Cannot reach Farebox at {server_url(url)}: {e.reason}") from None


def query(org: str | None, **params: Any) -> str:
    """A query string naming the organization and the given parameters, leaving out Nones."""
    return urlencode({k: v for k, v in {"organization": org, **params}.items() if v is not None})
