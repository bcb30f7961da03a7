"""One HTTP request and its response, as the ASGI application sees them: the scope, the
request body as it arrives (`receive`), and the response it sends (`send`), framed here
(status line, headers, Content-Length or chunked) and handed to the connection
(`api/server.py` HttpProtocol) to write. Split from the server so each stays small: this is
the ASGI side, that the socket side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farebox.api.server import HttpProtocol

REASONS = {200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 301: b"Moved Permanently",
           302: b"Found", 304: b"Not Modified", 400: b"Bad Request", 401: b"Unauthorized",
           402: b"Payment Required", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
           408: b"Request Timeout", 409: b"Conflict", 410: b"Gone", 413: b"Content Too Large",
           415: b"Unsupported Media Type", 422: b"Unprocessable Content", 429: b"Too Many Requests",
           431: b"Request Header Fields Too Large", 499: b"Client Closed Request", 500: b"Internal Server Error",
           501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A body message carrying this key (true) leaves now with the parts still corked, instead of
# at the end of this pass of the loop (`HttpProtocol.write_soon`). Other ASGI servers ignore
# the key and write every part at once anyway.
FLUSH = "farebox.flush"


def error_bytes(status: int, message: str) -> bytes:
    body = b'{"error":{"code":%d,"message":"%s"}}' % (status, message.encode())
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, REASONS.get(status, b""), len(body))) + body


class _Date:
    """The Date header, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


_date = _Date()


class Cycle:
    """One request and its response: the scope, the body as it arrives, and the ASGI
    `receive` and `send` the application gets."""

    __slots__ = ("_gone", "_waiter", "body", "body_done", "body_given", "chunked", "conn", "continue_sent",
                 "disconnected", "expect_continue", "head_only", "head_written", "headers", "keep_alive",
                 "response_done", "response_started", "scope", "status")

    def __init__(self, conn: HttpProtocol, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.continue_sent = False
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.body_done = False         # the parser has seen the whole request body
        self.body_given = False        # ... and the application has received all of it
        self._waiter: asyncio.Future[None] | None = None
        self._gone: Callable[[], None] | None = None
        self.disconnected = False
        self.response_started = False
        self.head_written = False
        self.response_done = False
        self.chunked = False
        self.status = 0
        self.headers: Any = ()

    def on_disconnect(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once if the client leaves before the response ends (None: no
        longer): what a task awaiting `receive` would learn, without a task per stream. The
        application finds it as the scope's extension "farebox.on_disconnect"."""
        self._gone = callback

    def left(self) -> None:
        """The connection closed under this request."""
        self.disconnected = True
        self.wake()
        gone, self._gone = self._gone, None
        if gone is not None and not self.response_done:
            gone()

    def wake(self) -> None:
        """Body bytes arrived, the body ended, the response ended or the client left."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def buffered(self) -> int:
        return sum(len(b) for b in self.body)

    # -- ASGI ------------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        while True:
            if self.disconnected or self.response_done:
                return {"type": "http.disconnect"}
            if not self.body_given:
                if self.body or self.body_done:
                    body = self.body
                    data = body[0] if len(body) == 1 else b"".join(body)
                    body.clear()
                    self.conn.resume_reading()
                    self.body_given = self.body_done
                    return {"type": "http.request", "body": data, "more_body": not self.body_done}
                if self.expect_continue and not self.continue_sent:
                    self.continue_sent = True
                    self.conn.write(_CONTINUE)
            waiter = self._waiter = self.conn.loop.create_future()
            await waiter

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("the response already started")
            self.response_started = True
            self.status = message["status"]
            self.headers = message.get("headers") or ()
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.response_started or self.response_done:
            raise RuntimeError("a response body outside a started, unfinished response")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.disconnected:
            if not more:
                self.response_done = True
            return
        conn = self.conn
        out = b"" if self.head_written else self._head(body, more)
        if self.head_only:
            body = b""
        if self.chunked:
            if body:
                out += b"%x\r\n%s\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += body
        if not more or message.get(FLUSH):
            conn.write(out)  # with whatever earlier parts still wait in the cork
        elif out:
            conn.write_soon(out)
        if not more:
            self.response_done = True
            self.wake()  # a `receive` waiting for the client to leave returns now
            conn.response_finished(self)
        elif conn.writing_paused:
            await conn.drained()

    def _head(self, body: bytes, more: bool) -> bytes:
        """The status line and headers, with Content-Length when the whole body is known
        now, else chunked framing."""
        self.head_written = True
        status = self.status
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"")), _date.header()]
        has_length = False
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
            elif lname == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if not has_length and status not in (204, 304):
            if more:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                lines.append(b"content-length: %d\r\n" % len(body))
        if not self.body_done or self.conn.server.stopping:
            # Request body still on the socket (it cannot carry another request), or shutting down.
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)
