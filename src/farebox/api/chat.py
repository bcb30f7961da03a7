"""POST /api/v1/chat/completions: parse, authenticate, hand to the relay, frame the
answer as JSON or as server-sent events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.cycle import FLUSH
from farebox.api.errors import error_body
from farebox.api.http import JSON_HEADERS, Request, Response
from farebox.api.inference import json_object, new_request
from farebox.api.validate import validate_chat
from farebox.errors import FareboxError, InternalError
from farebox.ledger.pricing import measure_prompt
from farebox.request import ChatRequest
from farebox.tenancy.records import KeyRecord

if TYPE_CHECKING:
    from farebox.app import Gateway

log = logging.getLogger("farebox.api")

KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"


def parse(gw: Gateway, req: Request, raw: bytes) -> ChatRequest:
    key = gw.directory.authenticate(req.header(b"authorization"))
    body = json_object(raw)
    if "messages" not in body and isinstance(body.get("prompt"), str):
        # Older OpenRouter clients send a bare prompt.
        body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
    return build(gw, req, body, key)


def build(gw: Gateway, req: Request, body: dict[str, Any], key: KeyRecord) -> ChatRequest:
    """Validate a neutral (OpenAI-shaped) chat request and make the relay's request of
    it. Every chat-shaped endpoint ends here, whatever wire format it speaks."""
    validate_chat(body)
    if "session_id" not in body:
        session = req.header(b"x-session-id")
        if session:
            body["session_id"] = session[:256]
    return new_request(gw, req, key, body, api="chat", stream=body.get("stream") is True,
                       max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                       prompt=measure_prompt(body))


async def handle(gw: Gateway, req: Request) -> Response | None:
    raw = await req.body(gw.settings.body_bytes_max)
    chat = parse(gw, req, raw)
    if not chat.stream:
        body = await gw.relay.complete(chat)
        return Response(200, orjson.dumps(body), JSON_HEADERS + [(b"x-generation-id", chat.gen_id.encode())])
    await stream_to_client(gw, req, chat)
    return None


async def stream_to_client(gw: Gateway, req: Request, chat: ChatRequest, sink: SseSink | None = None) -> None:
    """Run a streaming request through the relay into `sink` (OpenAI-shaped events unless
    another API's sink is given), watching for the client leaving. Errors before the first
    event propagate (a plain JSON error with its status); later ones end the stream
    through `sink.fail`."""
    sink = sink or SseSink(req.send, chat.gen_id)
    # Our server calls back when the client leaves; under another ASGI server a task waits
    # on `receive` for the disconnect.
    on_disconnect = req.scope.get("extensions", {}).get("farebox.on_disconnect")
    watcher = None
    if on_disconnect is not None:
        on_disconnect(sink.left)
    else:
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
        if watcher is not None:
            watcher.cancel()
        elif on_disconnect is not None:
            on_disconnect(None)
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
            sink.left()
            return


class SseSink:
    """Frames a stream's events as server-sent events. The status line and headers go out
    with the first event, so an error before any event is still a plain JSON error with
    its own status. `headers` are added to the response's (another API's request id)."""

    __slots__ = ("_on_disconnect", "disconnected", "ended", "gen_id", "headers", "send", "started")

    def __init__(self, send: Callable[..., Any], gen_id: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.send = send
        self.gen_id = gen_id
        self.headers = headers or []
        self.started = self.ended = self.disconnected = False
        self._on_disconnect: Callable[[], None] | None = None

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        self._on_disconnect = callback

    def gone(self) -> None:
        self.disconnected = True
        if self._on_disconnect is not None:
            self._on_disconnect()

    def left(self) -> None:
        """The client's connection closed: it is gone unless the stream had already ended."""
        if not self.ended:
            self.gone()

    async def _write(self, data: bytes, more: bool = True, flush: bool = False) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"), (b"x-generation-id", self.gen_id.encode()), *self.headers]})
        if not more:
            self.ended = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more, FLUSH: flush})

    async def flush(self) -> None:
        """Send what has been written now, not at the end of this pass of the loop: the
        relay calls it once the first token is written, so the client does not wait for the
        rest of the upstream's read (or the settlement, when the stream ends in it)."""
        if self.started and not self.ended:
            await self._write(b"", flush=True)

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
