"""A small HTTP/1.1 client for OpenAI-style server-sent event streams, for bench/streams.py.

Raw sockets through `asyncio.Protocol` (no HTTP library): its own cost per event is a few
microseconds and the same whichever server it talks to, so the difference between two
paths measured with it is the servers' difference. It speaks just enough HTTP/1.1:
`Content-Length` request bodies, chunked or `Content-Length` or read-until-close response
bodies, keep-alive. SSE events are split on blank lines (`\\n\\n`, as the simulator, nginx's
canned stream and Farebox frame them); each `data:` payload is parsed with orjson.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _UNTIL_CLOSE, _IDLE = range(8)


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one POST with a JSON body."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             "Accept: text/event-stream", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Exchange:
    """One request and what came back, with perf_counter() times."""

    __slots__ = ("body", "content", "done_at", "ended_at", "error", "events", "first_event_at", "first_token_at",
                 "keep_alive", "last_event_at", "max_gap", "max_gap_end", "sent_at", "status", "tokens", "usage",
                 "usage_last")

    def __init__(self, sent_at: float, keep_content: bool = False) -> None:
        self.sent_at = sent_at
        self.status = 0
        self.keep_alive = True
        self.first_event_at: float | None = None  # the first `data:` event
        self.first_token_at: float | None = None  # the first event whose delta carries content
        self.last_event_at: float | None = None
        self.max_gap = 0.0                        # longest wait between two data events, seconds
        self.max_gap_end: float | None = None     # when that wait ended
        self.done_at: float | None = None         # `data: [DONE]`
        self.ended_at: float | None = None        # the response body complete (or the connection gone)
        self.events = 0                           # data events, [DONE] included
        self.tokens = 0                           # events with non-empty delta content
        self.usage: dict[str, Any] | None = None  # the last usage object seen
        self.usage_last = False                   # the last event before [DONE] carried usage
        self.error: str | None = None
        self.body = bytearray()                   # a non-SSE body (an error answer)
        self.content: list[str] | None = [] if keep_content else None

    @property
    def ok(self) -> bool:
        """Status 200, no error event, [DONE] seen, usage in the final chunk."""
        return self.error is None and self.status == 200 and self.done_at is not None and self.usage_last

    def problem(self) -> str | None:
        """Why the exchange is not ok, in a few words (None when it is)."""
        if self.error is not None:
            return self.error
        if self.status != 200:
            return f"status {self.status}: {bytes(self.body[:200])!r}"
        if self.done_at is None:
            return "no [DONE]"
        if not self.usage_last:
            return "no usage in the final chunk"
        return None


class SseConnection(asyncio.Protocol):
    """One keep-alive connection; `request()` sends a request and resolves when its
    response has ended (or the connection was lost)."""

    events_total = 0  # data events received by every connection of this process, for progress rates

    def __init__(self, on_first_event: Any = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._sse = bytearray()
        self._state = _IDLE
        self._left = 0
        self._ex: Exchange | None = None
        self._done: asyncio.Future[Exchange] | None = None
        self._on_first_event = on_first_event  # called with the exchange when its first data event arrives
        self._keep_content = False

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self._ex
        if ex is not None:
            if self._state == _UNTIL_CLOSE:
                self._feed(bytes(self._buf))
            elif ex.error is None:
                where = "before the response headers" if self._state == _HEAD else "mid-body"
                ex.error = f"connection {'reset' if exc else 'closed'} {where}" + (f" ({exc})" if exc else "")
            self._finish()

    def data_received(self, data: bytes) -> None:
        if self._ex is None:
            return  # nothing asked for (a server talking out of turn); ignored
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as e:
            self._ex.error = f"unparseable response: {e}"
            self._finish()
            self.close()

    # -- use ---------------------------------------------------------------------------
    def request(self, raw: bytes, keep_content: bool = False) -> asyncio.Future[Exchange]:
        assert self._ex is None and self.transport is not None and not self.closed, "one request at a time"
        self._done = asyncio.get_running_loop().create_future()
        self._ex = Exchange(time.perf_counter(), keep_content)
        self._state = _HEAD
        self._buf.clear()
        self._sse.clear()
        self.transport.write(raw)
        return self._done

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self, reason: str) -> None:
        """Give up on the exchange in flight (a timeout): record why and drop the connection."""
        if self._ex is not None and self._ex.error is None:
            self._ex.error = reason
        if self.transport is not None:
            self.transport.abort()

    # -- parsing -----------------------------------------------------------------------
    def _finish(self) -> None:
        ex, done = self._ex, self._done
        self._ex = self._done = None
        self._state = _IDLE
        if ex is not None:
            ex.ended_at = time.perf_counter()
            if done is not None and not done.done():
                done.set_result(ex)

    def _parse(self) -> None:
        buf = self._buf
        ex = self._ex
        while ex is not None and buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                ex.status = int(head[0].split(" ", 2)[1])
                fields = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip().lower()
                ex.keep_alive = fields.get("connection") != "close"
                if "chunked" in fields.get("transfer-encoding", ""):
                    self._state = _SIZE
                elif "content-length" in fields:
                    self._left = int(fields["content-length"])
                    self._state = _LENGTH
                    if self._left == 0:
                        self._complete()
                        return
                else:
                    ex.keep_alive = False
                    self._state = _UNTIL_CLOSE
            elif state == _SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self._left = size
                self._state = _DATA if size else _TRAILER
            elif state == _DATA:
                take = min(self._left, len(buf))
                self._feed(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if len(buf) < 2:
                    return
                del buf[:2]
                self._state = _SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:  # the empty line after the last (empty) chunk: the body is complete
                    self._complete()
                    return
            elif state == _LENGTH:
                take = min(self._left, len(buf))
                self._feed(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._complete()
                    return
            elif state == _UNTIL_CLOSE:
                return  # fed at connection_lost

    def _complete(self) -> None:
        keep = self._ex is not None and self._ex.keep_alive
        self._finish()
        if not keep:
            self.close()

    def _feed(self, data: bytes) -> None:
        ex = self._ex
        assert ex is not None
        if ex.status != 200:
            ex.body += data
            return
        sse = self._sse
        sse += data
        while (end := sse.find(b"\n\n")) >= 0:
            event = bytes(sse[:end])
            del sse[: end + 2]
            self._event(ex, event)

    def _event(self, ex: Exchange, event: bytes) -> None:
        payload = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        if not payload:
            return  # a comment (keep-alive) or an event without data
        now = time.perf_counter()
        ex.events += 1
        if ex.first_event_at is None:
            ex.first_event_at = now
            if self._on_first_event is not None:
                self._on_first_event(ex)
        elif ex.last_event_at is not None and now - ex.last_event_at > ex.max_gap:
            ex.max_gap = now - ex.last_event_at
            ex.max_gap_end = now
        SseConnection.events_total += 1
        ex.last_event_at = now
        if payload == b"[DONE]":
            ex.done_at = now
            return
        if ex.done_at is not None:
            ex.error = ex.error or "data after [DONE]"
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            ex.error = ex.error or f"event is not JSON: {payload[:200]!r}"
            return
        if not isinstance(obj, dict):
            ex.error = ex.error or f"event is not an object: {payload[:200]!r}"
            return
        if "error" in obj:
            ex.error = ex.error or f"error event: {payload[:300]!r}"
        usage = obj.get("usage")
        ex.usage_last = bool(usage)
        if usage:
            ex.usage = usage
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                ex.tokens += 1
                if ex.first_token_at is None:
                    ex.first_token_at = now
                if ex.content is not None:
                    ex.content.append(content)


async def connect(host: str, port: int, on_first_event: Any = None) -> SseConnection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: SseConnection(on_first_event), host, port)
    return conn
