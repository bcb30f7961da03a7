"""POST /api/v1/messages and /api/v1/messages/count_tokens: the Anthropic Messages API
(Claude Code, the anthropic SDKs) in front of the same relay as chat completions.

A request is translated to the neutral request once (`anthropic_wire`), then runs exactly
like a chat completion: holds, failover, settlement, generation records, client
disconnects. Only the answer's framing differs. Errors on these paths, including the
router's own, are rendered in Anthropic's shape by `error_response`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from farebox.api import anthropic_reply as reply
from farebox.api import anthropic_wire as wire
from farebox.api import chat
from farebox.api.errors import error_headers
from farebox.api.http import JSON_HEADERS, Request, Response, json_response
from farebox.api.inference import json_object
from farebox.errors import FareboxError
from farebox.ledger.pricing import measure_prompt
from farebox.tenancy.records import KeyRecord

if TYPE_CHECKING:
    from farebox.app import Gateway

PING = reply.sse([reply.PING])


def error_response(error: FareboxError) -> Response:
    metadata = dict(error.metadata)
    metadata.setdefault("error_type", error.error_type)
    body = reply.error_body(error.status, error.message, metadata)
    return Response(error.status, orjson.dumps(body), JSON_HEADERS + error_headers(error))


def authenticate(gw: Gateway, req: Request) -> KeyRecord:
    """Claude Code with ANTHROPIC_AUTH_TOKEN sends `Authorization: Bearer`, the anthropic
    SDK `x-api-key`. A client that sends both means the bearer token: Claude Code's setup
    for gateways sets ANTHROPIC_AUTH_TOKEN and blanks ANTHROPIC_API_KEY."""
    authorization = req.header(b"authorization")
    if not authorization:
        api_key = req.header(b"x-api-key")
        if api_key:
            authorization = f"Bearer {api_key}"
    return gw.directory.authenticate(authorization)


class Messages:
    def __init__(self, gw: Gateway) -> None:
        self.catalog = gw.catalog
        self.aliases = wire.upstream_aliases(gw.catalog)

    def catalog_id(self, name: str) -> str:
        """A catalog model id as given, else the catalog model serving that upstream id;
        an unknown name stays as it is and fails routing with the usual 404."""
        if self.catalog.model(name) is not None:
            return name
        return self.aliases.get(name, name)

    async def create(self, gw: Gateway, req: Request) -> Response | None:
        raw = await req.body(gw.settings.body_bytes_max)
        key = authenticate(gw, req)
        body = wire.to_chat(json_object(raw))
        body["model"] = self.catalog_id(body["model"])
        if "models" in body:
            body["models"] = [self.catalog_id(m) for m in body["models"]]
        request = chat.build(gw, req, body, key)
        # The message id is the generation id; the SDKs read `request-id` into their errors.
        request_id = [(b"request-id", request.gen_id.encode())]
        stop = body.get("stop")
        if not request.stream:
            answer = await gw.relay.complete(request)
            headers = JSON_HEADERS + [(b"x-generation-id", request.gen_id.encode())] + request_id
            return Response(200, orjson.dumps(reply.message_from_chat(answer, stop)), headers)
        await chat.stream_to_client(gw, req, request, MessagesSink(req.send, request.gen_id, stop, request_id))
        return None

    async def count_tokens(self, gw: Gateway, req: Request) -> Response:
        """The gateway's estimate of the prompt's tokens (about four bytes a token, the
        same estimate it bills by when an upstream reports no usage), not a tokenizer's
        count. The model is not looked up: the estimate does not depend on it."""
        raw = await req.body(gw.settings.body_bytes_max)
        authenticate(gw, req)
        body = wire.to_chat(json_object(raw), counting=True)
        return json_response({"input_tokens": measure_prompt(body).estimate()})


class MessagesSink(chat.SseSink):
    """The relay's stream as Anthropic's events, each written as its chunk arrives."""

    __slots__ = ("encoder",)

    def __init__(self, send: Callable[..., Any], gen_id: str, stop: list[str] | None,
                 headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(send, gen_id, headers)
        self.encoder = reply.StreamEncoder(gen_id, stop)

    async def keepalive(self) -> None:
        await self._write(PING)

    async def chunk(self, chunk: dict[str, Any]) -> None:
        events = self.encoder.chunk(chunk)
        if events:
            await self._write(reply.sse(events))

    async def finish(self, chunk: dict[str, Any]) -> None:
        await self._write(reply.sse(self.encoder.finish(chunk)), more=False)

    async def fail(self, chunk: dict[str, Any]) -> None:
        await self._write(reply.sse(self.encoder.fail(chunk)), more=False)
