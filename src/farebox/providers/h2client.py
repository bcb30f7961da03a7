"""HTTP/2 to upstreams whose catalog entry says `http2 = true`: many requests share one
connection as streams, framed by the sans-IO `h2` library.

Why: a gateway holding thousands of streams with HTTP/1.1 holds one upstream socket per
stream beside the client's, so 10,000 open streams need 20,000 descriptors in one process;
over HTTP/2 they need 10,000 plus one connection per `SETTINGS_MAX_CONCURRENT_STREAMS`
(a few hundred) streams. The big providers' API front ends speak HTTP/2.

Each stream looks to its `Response` exactly like an HTTP/1.1 connection does
(`loop`, `paused`, `resume`, `finished`, `close`, the deadlines), so everything above the
client is unchanged. `https://` negotiates h2 by ALPN (and refuses a server that will not);
`http://` uses prior knowledge (h2c), as the simulator and `bench/paced_upstream.py` serve it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from farebox.providers.deadline import Deadlines
from farebox.providers.pool import PoolBase, no_delay
from farebox.providers.response import Response, TransportError

if TYPE_CHECKING:
    from farebox.providers.client import _Target


class Unprocessed(TransportError):
    """The server says it never acted on the request (REFUSED_STREAM, or a stream above a
    GOAWAY's last id, RFC 9113 §8.7): it may be sent again, on another connection."""

HIGH_WATER = 1 << 20          # bytes buffered unread before a stream stops acknowledging data
DRAIN_S = 1.0                 # how long a released stream's END_STREAM is awaited before resetting it
STREAM_WINDOW = 1 << 20       # what each stream may have in flight towards us
CONNECTION_WINDOW = 1 << 24   # what all streams of a connection may have in flight together
ASSUMED_STREAMS = 100         # concurrency before the server's SETTINGS say (RFC 9113 §6.5.2 recommends ≥100)
LAST_STREAM_ID = 2**31 - 1 - 2 * 1000  # stop opening streams on a connection well before ids run out
# Headers HTTP/2 forbids (RFC 9113 §8.2.2): HTTP/1.1's connection management.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "te",
                  "content-length", "accept-encoding"})
_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding="latin-1")


def request_headers(target: _Target, headers: dict[str, str], length: int) -> list[tuple[str, str]]:
    out = [(":method", "POST"), (":scheme", "https" if target.tls else "http"), (":authority", target.host_header),
           (":path", target.target), ("content-length", str(length)), ("accept-encoding", "gzip, deflate")]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise TransportError(f"invalid header {name!r}")
        lower = name.lower()
        if lower not in _HOP:
            out.append((lower, value))
    return out


class H2Stream(Deadlines):
    """One request and its response on a shared connection: what a `Response` calls its
    connection. `closed` once the stream is over for us (ended, reset, or given up)."""

    __slots__ = ("_body", "_response", "_timer", "_timer_at", "_unacked", "closed", "conn", "deadline",
                 "full_deadline", "last_read", "loop", "paused", "pool", "sid")

    def __init__(self, conn: H2Connection, sid: int, body: bytes, deadline: float, full_deadline: float) -> None:
        self.conn = conn
        self.sid = sid
        self.loop = conn.loop
        self.pool = conn.pool
        self._response = Response(self)
        self._body = memoryview(body)   # what flow control has not let out yet
        self._unacked = 0               # bytes received and not yet acknowledged (paused)
        self.closed = False
        self.paused = False
        self.deadline = deadline
        self.full_deadline = full_deadline
        self.last_read = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- the Response's side --------------------------------------------------------------
    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()  # the silence while paused was ours
            self.conn.acknowledge(self, self._unacked)
            self._unacked = 0

    def finished(self, reusable: bool) -> None:
        """The caller is done. A stream read to its end is already gone; one whose
        END_STREAM is still on its way (after a stream's [DONE]) is drained for up to
        DRAIN_S, since a reset stream is work for the server and some count them; anything
        else is reset at once."""
        response = self._response
        assert response is not None
        if self.closed or reusable:
            return
        if response._error is None and response.status:
            response._buffer.clear()
            now = self.loop.time()
            self.deadline = min(self.deadline, now + DRAIN_S)
            self._cancel_timer()
            self._arm(now)
            self.resume()
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.conn.reset(self)

    def _broken(self, error: BaseException) -> None:
        if self._response is not None:
            self._response._fail(error)
        self.close()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection and its streams. `accepting` turns false when the server says
    GOAWAY or stream ids run low; the connection closes when its last stream ends."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.accepting = True
        self.max_streams = ASSUMED_STREAMS
        self.idle_since = self.loop.time()
        self.alpn: str | None = None
        # The server's first SETTINGS: until it comes, how many streams it takes is unknown.
        self.settled: asyncio.Future[None] = self.loop.create_future()

    @property
    def capacity(self) -> int:
        if self.closed or not self.accepting:
            return 0
        return self.max_streams - len(self.streams)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        no_delay(transport)
        tls = transport.get_extra_info("ssl_object")
        self.alpn = tls.selected_alpn_protocol() if tls is not None else None
        # Push is off (an API answers, it never pushes); each stream may have STREAM_WINDOW in flight.
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail_all(TransportError(f"HTTP/2 protocol error from the server: {e!r}"))
            self._flush()  # the GOAWAY h2 queued
            self.close()
            return
        now = self.loop.time()
        for event in events:
            handle = _HANDLERS.get(type(event))
            if handle is not None:
                handle(self, event, now)
        self._flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc else ""
        error = TransportError(f"the server closed the HTTP/2 connection{reason}")
        if not self.settled.done():
            self.settled.set_exception(error)
            self.settled.exception()  # retrieved: `_connect` may have stopped waiting
        self._fail_all(error)
        self.pool.lost(self)

    # -- events ------------------------------------------------------------------------
    def _on_response(self, event: Any, now: float) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream._response is None:
            return
        response = stream._response
        stream.last_read = now
        for name, value in event.headers:
            if name == ":status":
                response.status = int(value)
            elif not name.startswith(":"):
                previous = response.headers.get(name)
                response.headers[name] = value if previous is None else f"{previous}, {value}"
        try:
            response._headers_complete()
        except TransportError as e:
            stream._broken(e)

    def _on_data(self, event: Any, now: float) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if stream is None or stream._response is None:
            self.h2.acknowledge_received_data(length, event.stream_id)  # stream given up: keep the connection's window open
            return
        stream.last_read = now
        response = stream._response
        try:
            response._feed(event.data)
        except TransportError as e:
            self.h2.acknowledge_received_data(length, event.stream_id)
            stream._broken(e)
            return
        if stream.paused or len(response._buffer) > HIGH_WATER:
            stream.paused = True
            stream._unacked += length  # the server waits until the reader catches up
        else:
            self.h2.acknowledge_received_data(length, event.stream_id)

    def _on_ended(self, event: Any, now: float) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream._response is None:
            return
        response = stream._response
        if not response._headers_ready.done():
            response._fail(TransportError("the server ended the stream before answering"))
        else:
            response._end()
        self._forget(stream)

    def _on_reset(self, event: Any, now: float) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream._response is None:
            return
        try:
            code = h2.errors.ErrorCodes(event.error_code).name
        except ValueError:
            code = str(event.error_code)
        kind = Unprocessed if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM else TransportError
        stream._response._fail(kind(f"the server reset the stream ({code})"))
        self._forget(stream)

    def _on_window(self, event: Any, now: float) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream._body:
                self._send_body(stream)
        else:
            for stream in list(self.streams.values()):
                if stream._body:
                    self._send_body(stream)

    def _on_settings(self, event: Any, now: float) -> None:
        self.max_streams = min(self.h2.remote_settings.max_concurrent_streams, 1 << 16)
        if not self.settled.done():
            self.settled.set_result(None)
        self.pool.wake()

    def _on_goaway(self, event: Any, now: float) -> None:
        """The server will take no new streams; those above `last_stream_id` it never saw."""
        self.accepting = False
        last = event.last_stream_id if event.last_stream_id is not None else 0
        if not event.error_code:
            # A graceful GOAWAY lets the streams up to `last` finish (RFC 9113 §6.8), but h2
            # closes its whole state machine on any GOAWAY and would refuse their frames
            # (python-hyper/h2#1181): reopen it; `accepting` keeps new streams off.
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        for stream in list(self.streams.values()):
            if stream.sid > last and stream._response is not None:
                stream._response._fail(Unprocessed("the server closed the connection before taking the request"))
                self._forget(stream)
        if event.error_code:
            self._fail_all(TransportError(f"the server ended the HTTP/2 connection ({event.error_code!r})"))
        if not self.streams:
            self.close()
        self.pool.wake()

    # -- streams -----------------------------------------------------------------------
    def open(self, headers: list[tuple[str, str]], body: bytes, deadline: float, full_deadline: float) -> Response:
        assert self.capacity > 0 and self.transport is not None
        sid = self.h2.get_next_available_stream_id()
        if sid >= LAST_STREAM_ID:
            self.accepting = False
        stream = H2Stream(self, sid, body, deadline, full_deadline)
        try:
            self.h2.send_headers(sid, headers, end_stream=not body)
        except h2.exceptions.ProtocolError as e:
            raise TransportError(f"could not send the request over HTTP/2: {e}") from None
        self.streams[sid] = stream
        if body:
            self._send_body(stream)
        self._flush()
        stream._arm(stream.last_read)
        assert stream._response is not None
        return stream._response

    def _send_body(self, stream: H2Stream) -> None:
        """As much of the request body as the server's windows allow; the rest on WINDOW_UPDATE."""
        body = stream._body
        while body:
            window = min(self.h2.local_flow_control_window(stream.sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                break
            piece, body = body[:window], body[window:]
            self.h2.send_data(stream.sid, piece.tobytes(), end_stream=not body)
        stream._body = body

    def acknowledge(self, stream: H2Stream, length: int) -> None:
        if length and not self.closed:
            self.h2.acknowledge_received_data(length, stream.sid)
            self._flush()

    def reset(self, stream: H2Stream) -> None:
        """Give up on a stream: the server stops its work and the slot is free."""
        if stream.sid in self.streams and not self.closed:
            try:
                self.h2.reset_stream(stream.sid, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass  # it ended on the server's side meanwhile, or the whole connection did (GOAWAY)
            self._flush()
        self._forget(stream)

    def _forget(self, stream: H2Stream) -> None:
        stream.closed = True
        stream._cancel_timer()
        if self.streams.pop(stream.sid, None) is None:
            return
        if not self.streams:
            self.idle_since = self.loop.time()
            if not self.accepting:
                self.close()
        self.pool.wake()

    def _fail_all(self, error: BaseException) -> None:
        for stream in list(self.streams.values()):
            if stream._response is not None:
                stream._response._fail(error)
            self._forget(stream)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()  # connection_lost follows and tells the pool


_HANDLERS = {
    h2.events.ResponseReceived: H2Connection._on_response,
    h2.events.DataReceived: H2Connection._on_data,
    h2.events.StreamEnded: H2Connection._on_ended,
    h2.events.StreamReset: H2Connection._on_reset,
    h2.events.WindowUpdated: H2Connection._on_window,
    h2.events.RemoteSettingsChanged: H2Connection._on_settings,
    h2.events.ConnectionTerminated: H2Connection._on_goaway,
}


class H2Pool(PoolBase):
    """Connections to one origin for one provider. A request takes the oldest connection
    with a free stream slot (so idle ones age out), waits for the connection being made
    while that one is still assumed to have room, or makes one; `limit` (0: none) bounds
    connections, and callers past it wait for a slot."""

    def __init__(self, target: _Target, **settings: Any) -> None:
        super().__init__(target, **settings)
        self.conns: list[H2Connection] = []
        self.open = 0                               # connections being made or made and not yet lost
        self.waiters: deque[asyncio.Future[None]] = deque()
        self._connecting: asyncio.Future[H2Connection] | None = None
        self._promised = 0                          # callers waiting for `_connecting`

    def take(self, now: float) -> H2Connection | None:
        for conn in self.conns:
            if conn.capacity > 0:
                if not conn.streams and now - conn.idle_since >= self.keepalive_s:
                    conn.accepting = False  # too old: the server may be about to close it under us
                    conn.close()
                    continue
                return conn
        return None

    async def acquire(self) -> H2Connection:
        while True:
            conn = self.take(self.loop.time())
            if conn is not None:
                return conn
            if self._connecting is not None and self._promised < ASSUMED_STREAMS:
                self._promised += 1
                await asyncio.shield(self._connecting)  # its failure is every waiter's
                continue
            if not self.limit or self.open < self.limit:
                self._connecting = self.loop.create_task(self._connect())
                self._connecting.add_done_callback(_retrieve)
                self._promised = 1
                await asyncio.shield(self._connecting)
                continue
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            await waiter

    async def _connect(self) -> H2Connection:
        self.open += 1
        target = self.target
        conn: H2Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: H2Connection(self), target.host, target.port, ssl=self.tls,
                    server_hostname=target.host if self.tls else None)
                if self.tls is not None and conn.alpn != "h2":
                    conn.close()
                    raise TransportError(f"{target.host} did not agree to HTTP/2 (ALPN: {conn.alpn!r})")
                # A connection's first streams must not outrun a limit the server is about to state.
                await conn.settled
        except BaseException:
            self.open -= 1
            if conn is not None:
                conn.close()
            raise
        finally:
            self._connecting = None
            self._promised = 0
        self.conns.append(conn)
        return conn

    def wake(self) -> None:
        """A stream slot may be free: let the waiters look again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def lost(self, conn: H2Connection) -> None:
        if conn in self.conns:  # else it failed in `_connect`, which counts it out
            self.conns.remove(conn)
            self.open -= 1
        self.wake()

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # every waiter saw it; nobody else needs to
