"""A small HTTP/1.1 client for upstream calls: keep-alive connections pooled per provider
and origin, responses parsed by httptools (llhttp), nothing per request that a POST to a
JSON or server-sent-events API does not need.

Why not aiohttp: in the gateway's profile its client was a fifth of all CPU per request
(sessions, timers, tracing, cookie jars, multidicts). Here a request is one write of
prebuilt bytes, and a response is a status, a dict of headers and a byte buffer that the
protocol fills and the caller drains (`read`, `read_some`, `readline`).

Errors: every transport failure raises `TransportError` (refused, reset, malformed or cut
short); silence past the idle timeout and attempts past the total deadline raise
`TimeoutError`. `providers/http.py` turns both into our typed errors.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httptools

from farebox.providers.deadline import Deadlines
from farebox.providers.h2client import H2Pool, Unprocessed, request_headers
from farebox.providers.pool import PoolBase, no_delay
from farebox.providers.response import Response, TransportError

HIGH_WATER = 1 << 20      # bytes buffered unread before the socket stops being read
DRAIN_S = 1.0             # how long a released response's last bytes are awaited to keep its connection
_URL_CACHE_MAX = 4096
P = TypeVar("P", "Pool", H2Pool)
H2_RESENDS = 2            # times a request an HTTP/2 server provably never processed is sent again


class _Target:
    """A parsed URL: what a pool is keyed by and what a request line needs."""

    __slots__ = ("host", "host_header", "origin", "port", "target", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = 443 if self.tls else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if self.port == default else f"{name}:{self.port}"
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.origin = (parts.scheme, self.host, self.port)


_targets: dict[str, _Target] = {}


def target_of(url: str) -> _Target:
    target = _targets.get(url)
    if target is None:
        if len(_targets) >= _URL_CACHE_MAX:
            _targets.clear()
        target = _targets[url] = _Target(url)
    return target


def request_head(target: _Target, headers: dict[str, str], length: int) -> bytes:
    lines = [f"POST {target.target} HTTP/1.1", f"Host: {target.host_header}", f"Content-Length: {length}",
             "Accept-Encoding: gzip, deflate"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            # A header may never smuggle another header or a second request.
            raise TransportError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise TransportError("a header holds characters HTTP/1.1 cannot carry") from None


class Connection(Deadlines, asyncio.Protocol):
    """One keep-alive connection. httptools calls the `on_*` methods while `data_received`
    feeds it; at most one response is in flight."""

    __slots__ = ("_idle_since", "_keep_alive", "_parser", "_response", "_timer", "_timer_at", "closed", "deadline",
                 "full_deadline", "last_read", "loop", "paused", "pool", "transport")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._keep_alive = False        # what the response's headers said (llhttp forgets at its end)
        self.closed = False
        self.paused = False
        self.deadline = 0.0           # loop time after which the whole attempt has taken too long
        self.full_deadline = 0.0      # `deadline` once the caller lifts a first-byte bound (Response.started)
        self.last_read = 0.0          # loop time data last arrived (or the request went out)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0          # loop time `_timer` fires
        self._idle_since = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:
            # Bytes nobody asked for (a server talking out of turn): the connection is unusable.
            self.close()
            return
        self.last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except Exception as e:  # llhttp's verdict, or a callback's (a corrupt compressed body)
            self._broken(TransportError(f"malformed HTTP response: {e}"))
            return
        if response._done:
            return  # draining: see finished
        if len(response._buffer) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        self.closed = True
        self._cancel_timer()
        self.pool.lost(self)

    def _ended(self, exc: Exception | None = None) -> None:
        response = self._response
        if response is None or response._complete:
            return
        if response._headers_ready.done() and response._error is None and self._close_delimited():
            # No Content-Length and not chunked: the body is whatever came before the close.
            self.on_message_complete()
            return
        what = "before answering" if not response._headers_ready.done() else "mid-response"
        reason = f": {exc}" if exc else ""
        response._fail(TransportError(f"the server closed the connection {what}{reason}"))

    def _close_delimited(self) -> bool:
        headers = self._response.headers if self._response is not None else {}
        return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        assert response is not None
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = response.headers.get(key)
        response.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the real response follows
            response.headers.clear()
            return
        response.status = status
        self._keep_alive = self._parser.should_keep_alive()
        try:
            response._headers_complete()
        except TransportError as e:
            self._broken(e)

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        response._feed(body)  # raises on a corrupt compressed body: data_received's verdict

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or response.status == 0:
            return  # the end of an interim (1xx) response
        response._end()
        if response._done:
            self._recycle()  # drained: the connection can serve again

    # -- the pool's side -------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, deadline: float, full_deadline: float) -> Response:
        assert self._response is None and self.transport is not None and deadline <= full_deadline
        response = self._response = Response(self)
        self.deadline = deadline
        self.full_deadline = full_deadline
        self.last_read = self.loop.time()
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        self._arm(self.last_read)
        return response

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()  # the silence while paused was ours
            self.transport.resume_reading()

    def finished(self, reusable: bool) -> None:
        """The caller is done with the response. A body read to its end frees the
        connection; one whose last bytes are still on their way (a stream's terminator after
        [DONE]) is drained for up to DRAIN_S before the connection is reused; anything else
        closes it."""
        response = self._response
        if self.closed or response is None:
            return
        if reusable:
            self._recycle()
        elif response._error is None and response.status:
            response._buffer.clear()
            self.deadline = min(self.deadline, self.loop.time() + DRAIN_S)
            self._cancel_timer()
            self._arm(self.loop.time())
            if self.paused:
                self.resume()
        else:
            self.close()

    def _recycle(self) -> None:
        self._response = None
        if self.closed or not self._keep_alive:
            self.close()
            return
        self._parser = httptools.HttpResponseParser(self)
        self._idle_since = self.loop.time()
        self.pool.put(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows and tells the pool
        self.closed = True

    def _broken(self, error: BaseException) -> None:
        if self._response is not None:
            self._response._fail(error)
        self.close()

    def idle_for(self, now: float) -> float:
        return now - self._idle_since


class Pool(PoolBase):
    """Connections to one origin for one provider: idle ones are reused newest first;
    `limit` (0: none) bounds open connections, and callers past it wait their turn."""

    def __init__(self, target: _Target, **settings: Any) -> None:
        super().__init__(target, **settings)
        self.idle: dict[Connection, None] = {}  # insertion order: the newest last
        self.open = 0                   # connections made and not yet lost (busy or idle)
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()

    def take_idle(self, now: float) -> Connection | None:
        """The newest idle connection still fresh enough to reuse, if any."""
        while self.idle:
            conn, _ = self.idle.popitem()
            if not conn.closed and conn.idle_for(now) < self.keepalive_s:
                return conn
            conn.close()  # too old: the server may be about to close it under us
        return None

    async def acquire(self) -> Connection:
        conn = self.take_idle(self.loop.time())
        if conn is not None:
            return conn
        if self.limit and self.open >= self.limit:
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.put(waiter.result())  # type: ignore[arg-type]
                raise
            if handed is not None:
                return handed
        return await self._connect()

    async def _connect(self) -> Connection:
        self.open += 1
        target = self.target
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), target.host, target.port, ssl=self.tls,
                    server_hostname=target.host if self.tls else None)
        except BaseException:
            self.open -= 1
            self._wake_one(None)
            raise
        return conn

    def put(self, conn: Connection) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle[conn] = None

    def lost(self, conn: Connection) -> None:
        self.open -= 1
        self.idle.pop(conn, None)
        self._wake_one(None)  # a slot is free: the next waiter connects anew

    def _wake_one(self, conn: Connection | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return

    def close(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


class Client:
    """Pools per (provider, origin). `post` returns once the status line and headers have
    arrived; the caller reads the body and must `release()` or `close()` the response."""

    def __init__(self, *, connect_timeout_s: float, idle_timeout_s: float, total_timeout_s: float,
                 connections_max: int = 0, keepalive_s: float = 15.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s
        self.connections_max = connections_max
        self.keepalive_s = keepalive_s
        self._pools: dict[tuple[str, tuple[str, str, int], type], Pool | H2Pool] = {}
        self._tls: dict[bool, ssl.SSLContext] = {}  # by whether it offers h2 by ALPN

    def _tls_for(self, target: _Target, http2: bool) -> ssl.SSLContext | None:
        if not target.tls:
            return None
        context = self._tls.get(http2)
        if context is None:
            context = self._tls[http2] = ssl.create_default_context()
            if http2:
                context.set_alpn_protocols(["h2"])
        return context

    def _pool(self, scope: str, target: _Target, kind: type[P]) -> P:
        key = (scope, target.origin, kind)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = kind(
                target, limit=self.connections_max, connect_timeout_s=self.connect_timeout_s,
                idle_timeout_s=self.idle_timeout_s, keepalive_s=self.keepalive_s,
                tls=self._tls_for(target, kind is H2Pool))
        return pool  # type: ignore[return-value]

    async def post(self, scope: str, url: str, body: bytes, headers: dict[str, str],
                   timeout_s: float | None = None, first_byte_s: float | None = None,
                   http2: bool = False) -> Response:
        """`timeout_s` (at most `total_timeout_s`) bounds everything from here to the end of
        the body: waiting for a connection, the headers, the body. `first_byte_s` bounds it
        more tightly until the caller calls the response's `started` (a stream's first token).
        The connection's own timer enforces both once a connection is in hand, so a caller
        needs no `asyncio.timeout` of its own (which cost 5 µs a request). `http2` sends it
        as a stream of a shared HTTP/2 connection (`providers/h2client.py`)."""
        target = target_of(url)
        if http2:
            return await self._post_h2(scope, target, body, headers, timeout_s, first_byte_s)
        head = request_head(target, headers, len(body))
        pool = self._pool(scope, target, Pool)
        now = pool.loop.time()
        deadline, full = self._deadlines(now, timeout_s, first_byte_s)
        conn = pool.take_idle(now)
        if conn is None:   # wait for a free slot, or connect: no timer of a connection runs yet
            async with asyncio.timeout_at(deadline):
                conn = await pool.acquire()
        response = conn.send(head, body, deadline, full)
        try:
            await response._headers_ready
        except BaseException:
            response.close()
            raise
        return response

    def _deadlines(self, now: float, timeout_s: float | None, first_byte_s: float | None) -> tuple[float, float]:
        """(until the first byte, until the end) as loop times."""
        full = now + (self.total_timeout_s if timeout_s is None else min(timeout_s, self.total_timeout_s))
        return (full if first_byte_s is None else min(full, now + first_byte_s)), full

    async def _post_h2(self, scope: str, target: _Target, body: bytes, headers: dict[str, str],
                       timeout_s: float | None, first_byte_s: float | None) -> Response:
        fields = request_headers(target, headers, len(body))
        pool = self._pool(scope, target, H2Pool)
        now = pool.loop.time()
        deadline, full = self._deadlines(now, timeout_s, first_byte_s)
        for attempt in range(H2_RESENDS + 1):
            conn = pool.take(pool.loop.time())
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await pool.acquire()
            response = conn.open(fields, body, deadline, full)
            try:
                await response._headers_ready
            except Unprocessed:
                response.close()
                if attempt == H2_RESENDS:
                    raise
                continue  # never acted on: the same request again, on a connection that takes it
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def open_connections(self) -> int:
        return sum(pool.open for pool in self._pools.values())

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost
