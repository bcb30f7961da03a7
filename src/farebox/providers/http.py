"""Pooled upstream HTTP (`providers/client.py`, pools per provider), and the only place
that catches transport exceptions and turns them into typed errors.

Upstream HTTP error statuses are read here too: the dialect's `read_fault` names the
kind of error from its body, and `faults.provider_error` decides our status and whether
another endpoint may be tried.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from farebox.catalog.model import Provider
from farebox.errors import ProviderError, UpstreamTimeout
from farebox.providers.client import Client
from farebox.providers.faults import Fault, provider_error
from farebox.providers.response import Response, TransportError

ERROR_BODY_MAX = 64 * 1024
ReadFault = Callable[[int, Any], Fault]  # (HTTP status, parsed body or text) -> Fault
_TRANSPORT = (TransportError, OSError)


class Upstreams:
    def __init__(self, *, connect_timeout_s: float, idle_timeout_s: float, total_timeout_s: float,
                 connections_max: int = 0, keepalive_s: float = 15.0) -> None:
        self.client = Client(connect_timeout_s=connect_timeout_s, idle_timeout_s=idle_timeout_s,
                             total_timeout_s=total_timeout_s, connections_max=connections_max,
                             keepalive_s=keepalive_s)

    async def close(self) -> None:
        await self.client.close()

    async def post(self, provider: Provider, url: str, body: bytes, headers: dict[str, str],
                   read_fault: ReadFault, timeout_s: float | None = None,
                   first_byte_s: float | None = None) -> Response:
        """POST and return the response once its status line and headers arrived.
        Raises ProviderError/UpstreamTimeout for transport failures and error statuses.
        `timeout_s` bounds the whole exchange, body included, and `first_byte_s` it until
        the response's `started` (Client.post)."""
        try:
            response = await self.client.post(provider.slug, url, body, headers, timeout_s, first_byte_s,
                                              provider.http2)
        except TimeoutError:
            raise UpstreamTimeout(f"{provider.name} did not answer in time", provider_name=provider.name) from None
        except _TRANSPORT as e:
            raise ProviderError(f"Could not reach {provider.name}: {_describe(e)}", provider_name=provider.name,
                                raw=_describe(e)) from None
        if response.status >= 400:
            raise await _status_error(provider, response, read_fault)
        return response


async def read_json(provider: Provider, response: Response) -> Any:
    """The whole body of a non-streaming reply, parsed; garbage is a ProviderError."""
    try:
        data = await response.read()
    except TimeoutError:
        raise UpstreamTimeout(f"{provider.name} did not finish in time", provider_name=provider.name) from None
    except _TRANSPORT as e:
        raise ProviderError(f"{provider.name} broke off its response: {_describe(e)}",
                            provider_name=provider.name, raw=_describe(e)) from None
    finally:
        response.release()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise invalid_response(provider, data) from None


async def read_line(provider: Provider, response: Response) -> bytes:
    """One line of a streamed body (b"" at its end)."""
    try:
        return await response.readline()
    except TimeoutError:
        raise UpstreamTimeout(f"{provider.name} went silent mid-stream", provider_name=provider.name) from None
    except _TRANSPORT as e:
        raise ProviderError(f"{provider.name} broke off the stream: {_describe(e)}",
                            provider_name=provider.name, raw=_describe(e)) from None


def invalid_response(provider: Provider, data: bytes | str) -> ProviderError:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return ProviderError(f"{provider.name} returned an invalid response", provider_name=provider.name,
                         raw=text[:1000])


async def _status_error(provider: Provider, response: Response, read_fault: ReadFault) -> ProviderError:
    status = response.status
    try:
        data = await response.read_some(ERROR_BODY_MAX)
    except (TimeoutError, *_TRANSPORT):
        data = b""
    finally:
        response.release()
    try:
        raw: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raw = data.decode("utf-8", "replace")
    headers = {}
    if "retry-after" in response.headers:
        headers["Retry-After"] = response.headers["retry-after"]
    fault = read_fault(status, raw)
    if fault.error_type != "rate_limit_exceeded":
        headers.clear()  # Retry-After on anything else is about the provider, not the client
    return provider_error(provider.name, fault, raw, headers)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class TranslatedStream:
    """What the streams of translating dialects (Anthropic, Gemini) share: the response,
    a translator that turns upstream events into OpenAI chunks and keeps the upstream id
    and usage, the chunks one event produced waiting to be handed out, and closing."""

    def __init__(self, provider: Provider, response: Response, translator: Any) -> None:
        self.provider = provider
        self.response = response
        self.translator = translator
        self._pending: deque[dict[str, Any]] = deque()
        self._closed = False

    @property
    def upstream_id(self) -> str | None:
        return self.translator.upstream_id

    @property
    def usage(self) -> Any:
        return self.translator.usage

    def started(self) -> None:
        self.response.started()

    def _finished(self) -> None:
        """The upstream ended the stream properly: give the connection back to the pool."""
        self._closed = True
        self.response.release()

    def close(self) -> None:
        """Abort: drop the upstream connection (the client left, or the stream went wrong)."""
        if not self._closed:
            self._closed = True
            self.response.close()
