"""A stream's half of a request's lifecycle (`relay.py` the rest): open the upstream stream
and hold back what comes before its first token, so a failure there can still fail over;
then relay each chunk to the client's sink as it arrives, stamped with the generation's
id, object and created, and settle with the usage the stream reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from farebox.catalog.model import Endpoint
from farebox.choices import excludes_reasoning, native_finish, strip_reasoning, substantive
from farebox.errors import FareboxError
from farebox.generation import usage_wire
from farebox.keepalive import first_token
from farebox.ledger.book import Hold
from farebox.ledger.pricing import Usage
from farebox.providers.base import Call, UpstreamStream, normalize_finish
from farebox.request import ChatRequest, Outcome

if TYPE_CHECKING:
    from farebox.relay import Relay

_CHUNK_OBJECTS = {"chat": "chat.completion.chunk", "completion": "text_completion"}


class Sink(Protocol):
    """Where a stream's events go; the api layer frames them as server-sent events."""

    started: bool
    disconnected: bool

    def on_disconnect(self, callback: Any) -> None: ...
    async def keepalive(self) -> None: ...
    async def chunk(self, chunk: dict[str, Any]) -> None: ...
    async def flush(self) -> None: ...
    async def finish(self, chunk: dict[str, Any]) -> None: ...
    async def fail(self, chunk: dict[str, Any]) -> None: ...


class Abandoned(Exception):
    """The client went away while an attempt waited for its first token."""

    def __init__(self, endpoint: Endpoint, hold: Hold, attempts: list[dict[str, Any]], byok: bool = False) -> None:
        super().__init__(endpoint.id)
        self.endpoint, self.hold, self.attempts, self.byok = endpoint, hold, attempts, byok


class Streaming:
    """Mixed into `Relay`, whose planning, attempts and settlement it uses."""

    async def stream(self: Relay, req: ChatRequest, sink: Sink) -> None:
        self.admit(req)

        async def attempt(call: Call) -> tuple[tuple[UpstreamStream, list[dict[str, Any]], bool], str | None]:
            opened = await first_token(self._open_first(call), sink, self.keepalives)
            return opened, opened[0].upstream_id

        try:
            served = await self._attempts(req, attempt)
        except Abandoned as gone:
            # The client left before the first token: nothing generated, nothing billed,
            # but the generation is recorded as cancelled.
            outcome = Outcome(gone.endpoint, Usage(), None, None, None, None, cancelled=True, attempts=gone.attempts,
                              byok=gone.byok)
            await self._settle(req, gone.hold, outcome)
            return
        except FareboxError as error:
            if not sink.started:
                raise
            await sink.fail(self._error_chunk(req, None, error))
            return
        upstream, held, ended = served.result
        await self._relay_stream(req, served.hold, sink, served.endpoint, upstream, held, ended, served.attempts,
                                 served.started, served.byok)

    async def _open_first(self: Relay, call: Call) -> tuple[UpstreamStream, list[dict[str, Any]], bool]:
        """Open the stream and read until its first chunk that carries something (a token,
        a tool call, a finish reason). Chunks before it (the role announcement) are held
        back, so an upstream that fails before its first token can still be failed over
        without the client having seen anything. Returns the held chunks and whether the
        stream already ended."""
        upstream: UpstreamStream | None = None
        held: list[dict[str, Any]] = []
        assert call.budget_s is not None
        # Until its first token the attempt has the first-byte bound (or the request's budget
        # left, if less); the upstream client's connection timer enforces it and raises
        # UpstreamTimeout, as it does the total bound afterwards (no asyncio.timeout: 5 µs).
        call.first_byte_s = min(self.settings.upstream_first_byte_timeout_s, call.budget_s)
        try:
            upstream = await self.dialects[call.endpoint.provider.dialect].open_stream(call)
            while True:
                chunk = await upstream.next()
                if chunk is None:
                    return upstream, held, True
                choices = chunk.get("choices")
                if choices:
                    held.append(chunk)
                    if substantive(choices):
                        upstream.started()
                        return upstream, held, False
        except BaseException:
            if upstream is not None:
                upstream.close()
            raise

    async def _relay_stream(self: Relay, req: ChatRequest, hold: Hold, sink: Sink, endpoint: Endpoint,
                            upstream: UpstreamStream, held: list[dict[str, Any]], ended: bool,
                            attempts: list[dict[str, Any]], started: float, byok: bool = False) -> None:
        sink.on_disconnect(upstream.close)
        text: list[str] | None = [] if req.logging else None   # the completion, kept only with prompt logging
        provider_name = endpoint.provider.name
        chunk_object = _CHUNK_OBJECTS[req.api]
        tokens = 0
        native: str | None = None
        finish: str | None = None
        error: FareboxError | None = None
        first_token_at = self.clock.monotonic()
        exclude = excludes_reasoning(req.body)
        pending = iter(held)
        chunk = next(pending, None)
        flushed = False
        try:
            while chunk is not None:
                if sink.disconnected:
                    break
                choices = chunk.get("choices")
                if choices:
                    # Every chunk carries the generation's own id, object and created, as the
                    # last one (usage) does: not the upstream's, whose clock is not ours.
                    chunk["id"] = req.gen_id
                    chunk["object"] = chunk_object
                    chunk["created"] = req.created
                    chunk["provider"] = provider_name
                    chunk["model"] = endpoint.model_id
                    for choice in choices:
                        reason = choice.get("finish_reason")
                        native_c = native_finish(choice)
                        choice["native_finish_reason"] = native_c
                        if reason:
                            native = native_c
                            finish = choice["finish_reason"] = normalize_finish(reason)
                        delta = choice.get("delta")
                        if (delta and (delta.get("content") or delta.get("reasoning") or delta.get("tool_calls")
                                       or delta.get("reasoning_content"))) or choice.get("text"):
                            tokens += 1
                        if text is not None:
                            piece = delta.get("content") if delta else choice.get("text")
                            if isinstance(piece, str):
                                text.append(piece)
                        if exclude and delta:
                            strip_reasoning(delta)
                    if not exclude or substantive(choices) or tokens == 0:
                        await sink.chunk(chunk)
                chunk = next(pending, None)
                if chunk is None and not ended:
                    if not flushed:
                        # The first token leaves now, unless the process is busy (farebox/load.py);
                        # whatever came with it in the same read shares the next send.
                        flushed = True
                        if not self.load.busy():
                            await sink.flush()
                    chunk = await upstream.next()
        except FareboxError as e:
            if not sink.disconnected:
                error = e
        finally:
            if sink.disconnected or error is not None:
                upstream.close()
        cancelled = sink.disconnected
        usage = upstream.usage
        if usage is None or cancelled:
            # The upstream's own count when it sent one, else what reached the client.
            usage = usage or Usage(prompt_tokens=req.prompt.estimate(), completion_tokens=tokens, estimated=True)
        usage.images = req.prompt.images
        if error is not None:
            finish = "error"
        outcome = Outcome(endpoint, usage, native, finish, upstream.upstream_id, first_token_at,
                          cancelled=cancelled, attempts=attempts, attempt_started=started, byok=byok,
                          completion_text="".join(text) if text is not None else None)
        try:
            cost, settlement = await self._settle(req, hold, outcome)
        except FareboxError as e:
            if not cancelled:
                await sink.fail(self._error_chunk(req, endpoint, e))
            return
        if cancelled:
            return
        if error is not None:
            await sink.fail(self._error_chunk(req, endpoint, error))
            return
        await sink.finish({"id": req.gen_id, "provider": provider_name, "model": endpoint.model_id,
                           "object": _CHUNK_OBJECTS[req.api], "created": req.created, "choices": [],
                           "usage": usage_wire(usage, cost, settlement, req.api, byok)})

    def _error_chunk(self: Relay, req: ChatRequest, endpoint: Endpoint | None, error: FareboxError) -> dict[str, Any]:
        metadata = dict(error.metadata)
        metadata["error_type"] = error.error_type
        return {"id": req.gen_id, "object": "chat.completion.chunk", "created": req.created,
                "model": endpoint.model_id if endpoint else req.models[0],
                "provider": endpoint.provider.name if endpoint else None,
                "error": {"code": error.status, "message": error.message, "metadata": metadata},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                             "native_finish_reason": None}]}
