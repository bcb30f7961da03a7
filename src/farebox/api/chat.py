"""POST /api/v1/chat/completions: parse, authenticate, hand to the relay, frame the
answer as JSON or as server-sent events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.errors import error_body
from farebox.api.http import JSON_HEADERS, Request, Response
from farebox.api.validate import validate_chat
from farebox.errors import BadRequest, FareboxError, InternalError
from farebox.ledger.pricing import measure_prompt
from farebox.relay import ChatRequest

if TYPE_CHECKING:
    from farebox.app import Gateway

log = logging.getLogger("farebox.api")

KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"


def parse(gw: Gateway, req: Request, raw: bytes) -> ChatRequest:
    key = gw.directory.authenticate(req.header(b"authorization"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"Request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    if "messages" not in body and isinstance(body.get("prompt"), str):
        # Older OpenRouter clients send a bare prompt.
        body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
    validate_chat(body)
    model = body.get("model")
    models = [model] if model else []
    for fallback in body.get("models") or ():
        if fallback not in models:
            models.append(fallback)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if "session_id" not in body:
        session = req.header(b"x-session-id")
        if session:
            body["session_id"] = session[:256]
    clock = gw.clock
    now = clock.now()
    org = gw.directory.orgs[key.org_id]  # type: ignore[index]
    return ChatRequest(
        body=body, key=key, org=org, models=models, stream=body.get("stream") is True,
        max_tokens=max_tokens, prompt=measure_prompt(body), gen_id=gw.ids.generation_id(int(now)),
        created=int(now), created_ms=int(now * 1000), started=clock.monotonic(),
        http_referer=req.header(b"http-referer"),
        title=req.header(b"x-openrouter-title") or req.header(b"x-title"),
        user_agent=req.header(b"user-agent"),
    )


async def handle(gw: Gateway, req: Request) -> Response | None:
    raw = await req.body(gw.settings.body_bytes_max)
    chat = parse(gw, req, raw)
    if not chat.stream:
        body = await gw.relay.complete(chat)
        return Response(200, orjson.dumps(body), JSON_HEADERS + [(b"x-generation-id", chat.gen_id.encode())])
    await stream_to_client(gw, req, chat)
    return None


async def stream_to_client(gw: Gateway, req: Request, chat: ChatRequest) -> None:
    """Relay a streamed request as server-sent events, watching for the client leaving."""
    sink = SseSink(req.send, chat.gen_id)
    watcher = asyncio.get_running_loop().create_task(_watch(req.receive, sink))
    try:
        await gw.relay.stream(chat, sink)
    except FareboxError as e:
        if not sink.started:
            raise
        await sink.fail(_internal_chunk(chat, e))
    except Exception as e:
        log.exception("stream %s failed", chat.gen_id)
        if not sink.started:
            raise
        await sink.fail(_internal_chunk(chat, InternalError(f"Internal error: {type(e).__name__}")))
    finally:
        watcher.cancel()
        await sink.close()


def _internal_chunk(chat: ChatRequest, error: FareboxError) -> dict[str, Any]:
    return {"id": chat.gen_id, "object": "chat.completion.chunk", "created": chat.created, "model": chat.models[0],
            "error": orjson.loads(error_body(error))["error"],
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}


async def _watch(receive: Callable[..., Any], sink: SseSink) -> None:
    """Wait for the client to go away. The request body has been read, so the next
    message the server gives us is the disconnect (or the end of our own response)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not sink.ended:
                sink.gone()
            return


class SseSink:
    """Frames a stream's events as server-sent events. The status line and headers go out
    with the first event, so an error before any event is still a plain JSON error with
    its own status."""

    __slots__ = ("_on_disconnect", "disconnected", "ended", "gen_id", "send", "started")

    def __init__(self, send: Callable[..., Any], gen_id: str) -> None:
        self.send = send
        self.gen_id = gen_id
        self.started = self.ended = self.disconnected = False
        self._on_disconnect: Callable[[], None] | None = None

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        self._on_disconnect = callback

    def gone(self) -> None:
        self.disconnected = True
        if self._on_disconnect is not None:
            self._on_disconnect()

    async def _write(self, data: bytes, more: bool = True) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"), (b"x-generation-id", self.gen_id.encode())]})
        if not more:
            self.ended = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def keepalive(self) -> None:
        await self._write(KEEPALIVE)

    async def chunk(self, chunk: dict[str, Any]) -> None:
        await self._write(b"data: " + orjson.dumps(chunk) + b"\n\n")

    async def finish(self, chunk: dict[str, Any]) -> None:
        await self._write(b"data: " + orjson.dumps(chunk) + b"\n\n" + DONE, more=False)

    async def fail(self, chunk: dict[str, Any]) -> None:
        await self._write(b"data: " + orjson.dumps(chunk) + b"\n\n", more=False)

    async def close(self) -> None:
        if self.started and not self.ended:
            await self._write(b"", more=False)
