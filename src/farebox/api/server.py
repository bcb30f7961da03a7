"""The HTTP/1.1 server: asyncio protocols, httptools (llhttp) for parsing, and the ASGI 3
interface to the application (`api/router.py` Api), with only what the gateway uses.

Why not uvicorn: it was a tenth of the gateway's CPU per request (per-request cycle
objects, timers for every keep-alive, message validation, default headers rebuilt each
time). Here a request is a scope dict, a task, and its response goes out in one write
when its body comes in one message.

What it does: keep-alive and pipelining (one request at a time per connection, the
rest queued), `Expect: 100-continue`, chunked request and response bodies, backpressure
both ways (a slow client pauses the app's `send`; an unread body pauses the socket),
`http.disconnect` when the client leaves, a limit on header bytes, closing connections
idle longer than `keepalive_s`, graceful shutdown (stop accepting, finish what is in
flight for up to `shutdown_grace_s`, then cancel), and the ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools

from farebox.api.cycle import Cycle, error_bytes

log = logging.getLogger("farebox.server")
access_log = logging.getLogger("farebox.access")

App = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

HEADER_BYTES_MAX = 64 * 1024   # request line plus headers
BODY_HIGH_WATER = 1 << 20      # unread request body bytes before the socket stops being read
_ASGI = {"version": "3.0", "spec_version": "2.3"}


# Corked stream writes go out at once past either limit (a few KB of events each, usually).
_CORK_WRITES_MAX = 64
_CORK_BYTES_MAX = 16384


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.cycle: Cycle | None = None            # the request being answered
        self.queue: deque[Cycle] = deque()         # pipelined requests waiting their turn
        self.parsing: Cycle | None = None          # the request whose bytes are being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.reading_paused = False
        self.writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.closed = False
        self._corked: list[bytes] = []             # stream writes waiting for the end of this loop pass
        self.last_active = 0.0
        self.task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        local = transport.get_extra_info("sockname")
        self.local = (local[0], local[1]) if isinstance(local, tuple) else None
        self.last_active = self.loop.time()
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "Protocol upgrades are not supported")
        except (httptools.HttpParserError, _TooLarge):
            # httptools re-raises a callback's exception wrapped in its own error type.
            if self.header_bytes > HEADER_BYTES_MAX:
                self._reject(431, "Request headers too large")
            else:
                self._reject(400, "Invalid HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for cycle in (self.cycle, *self.queue):
            if cycle is not None:
                cycle.left()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drained(self) -> None:
        if self.writing_paused and not self.closed:
            self._drain = self.loop.create_future()
            await self._drain

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > HEADER_BYTES_MAX:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > HEADER_BYTES_MAX:
            raise _TooLarge
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self.url
        q = url.find(b"?")
        raw_path, query = (url, b"") if q < 0 else (url[:q], url[q + 1:])
        if not raw_path.startswith(b"/"):
            raw_path = httptools.parse_url(url).path or b"/"  # an absolute-form target
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        method = parser.get_method().decode("ascii")
        expect = False
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                expect = True
        scope = {"type": "http", "asgi": _ASGI, "http_version": parser.get_http_version(), "method": method,
                 "scheme": "http", "path": path, "raw_path": raw_path, "query_string": query, "root_path": "",
                 "headers": self.headers, "client": self.client, "server": self.local, "state": {}}
        cycle = Cycle(self, scope, parser.should_keep_alive(), expect)
        scope["extensions"] = {"farebox.on_disconnect": cycle.on_disconnect}
        self.parsing = cycle
        if self.cycle is None:
            self._run(cycle)
        else:
            self.queue.append(cycle)
            if not self.reading_paused and self.transport is not None:
                self.reading_paused = True  # one request at a time: hold the rest on the socket
                self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        if cycle.response_done or cycle.disconnected:
            return  # answered without its body: drop it
        cycle.body.append(body)
        cycle.wake()
        if not self.reading_paused and cycle.buffered() > BODY_HIGH_WATER and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        self.parsing = None
        cycle.body_done = True
        cycle.wake()

    # -- running requests -----------------------------------------------------------------
    def _run(self, cycle: Cycle) -> None:
        self.cycle = cycle
        self.task = self.loop.create_task(self._serve(cycle))

    async def _serve(self, cycle: Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError) and self.server.stopping:
                pass
            else:
                log.exception("unhandled error in the application on %s %s", cycle.scope["method"],
                              cycle.scope["path"])
            if not cycle.response_started and not cycle.disconnected:
                self.write(error_bytes(500, "Internal error"))
                self.close()
            elif not cycle.response_done:
                self.close()
            if not isinstance(e, Exception):
                raise
            return
        if not cycle.response_done and not cycle.disconnected:
            if not cycle.response_started:
                log.error("the application sent no response to %s %s", cycle.scope["method"], cycle.scope["path"])
                self.write(error_bytes(500, "Internal error"))
            self.close()  # a response started but never finished: the client must not wait for it

    def response_finished(self, cycle: Cycle) -> None:
        if access_log.isEnabledFor(logging.INFO):
            scope = cycle.scope
            query = f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else ""
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            access_log.info('%s - "%s %s%s HTTP/%s" %d', client, scope["method"], scope["path"], query,
                            scope["http_version"], cycle.status)
        self.cycle = None
        self.task = None
        self.last_active = self.loop.time()
        if not cycle.keep_alive or self.server.stopping:
            self.close()
            return
        if self.queue:
            self._run(self.queue.popleft())
        if self.reading_paused and not self.queue and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.queue and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self._corked:
            self._corked.append(data)
            data = b"".join(self._corked)
            self._corked.clear()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write at the end of this pass of the event loop, with whatever else is written
        meanwhile: the events of a stream that arrived together in one upstream read leave in
        one send, not one each, and none waits longer than the rest of this pass."""
        corked = self._corked
        if not corked:
            self.loop.call_soon(self._uncork)
        corked.append(data)
        if len(corked) >= _CORK_WRITES_MAX or len(data) >= _CORK_BYTES_MAX:
            self.write(b"")   # large or many: out now, so the transport's backpressure sees them

    def _uncork(self) -> None:
        if self._corked:
            self.write(b"")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _reject(self, status: int, message: str) -> None:
        if self.cycle is None or self.cycle.response_done:
            self.write(error_bytes(status, message))
        self.close()

    def idle(self) -> bool:
        return self.cycle is None and not self.queue


class _TooLarge(Exception):
    pass


class Server:
    """Listens, serves, and shuts down gracefully on SIGINT/SIGTERM or `stop()`."""

    def __init__(self, app: App, *, host: str, port: int, backlog: int = 4096, keepalive_s: float = 30.0,
                 shutdown_grace_s: float = 30.0) -> None:
        self.app = app
        self.host, self.port = host, port
        self.backlog = backlog
        self.keepalive_s = keepalive_s
        self.shutdown_grace_s = shutdown_grace_s
        self.connections: set[HttpProtocol] = set()
        self.started = False
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listener: asyncio.AbstractServer | None = None
        self._stop: asyncio.Event | None = None
        self._lifespan: _Lifespan | None = None
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int:
        """The port listened on (the one picked when `port` was 0)."""
        assert self._bound_port is not None, "not listening yet"
        return self._bound_port

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def serve(self, *, signals: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._lifespan = _Lifespan(self.app)
        if not await self._lifespan.startup():
            return
        try:
            self._listener = await self.loop.create_server(lambda: HttpProtocol(self), self.host, self.port,
                                                           backlog=self.backlog, reuse_address=True)
        except OSError as e:
            log.error("cannot listen on %s:%s: %s", self.host, self.port, e)
            await self._lifespan.shutdown()
            return
        self._bound_port = self._listener.sockets[0].getsockname()[1]
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, self.stop)
        self.started = True
        sweeper = self.loop.create_task(self._sweep_idle())
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
            if signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.loop.remove_signal_handler(sig)
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.stopping = True
        assert self._listener is not None and self._lifespan is not None
        self._listener.close()
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        deadline = self.loop.time() + self.shutdown_grace_s
        while any(not c.idle() for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            conn.close()
        await asyncio.sleep(0)
        await self._lifespan.shutdown()

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle longer than keepalive_s: one pass a second
        over all of them, instead of a timer per request."""
        while True:
            await asyncio.sleep(1.0)
            cutoff = self.loop.time() - self.keepalive_s
            for conn in [c for c in self.connections if c.idle() and c.last_active < cutoff]:
                conn.close()


class _Lifespan:
    """The ASGI lifespan protocol: startup before listening, shutdown after the last request."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self.outbox.put)
        except Exception:
            log.exception("the application's lifespan failed")
            await self.outbox.put({"type": "lifespan.startup.failed", "message": "lifespan raised"})

    async def startup(self) -> bool:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.outbox.get()
        if reply["type"] != "lifespan.startup.complete":
            log.error("start-up failed: %s", reply.get("message", reply["type"]))
            return False
        return True

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        get = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait((get, self.task), return_when=asyncio.FIRST_COMPLETED)
        get.cancel()
