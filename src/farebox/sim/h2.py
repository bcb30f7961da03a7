"""HTTP/2 with prior knowledge (h2c) on the simulator's HTTP/1.1 port.

A connection that opens with the HTTP/2 client preface is served here, any other is
handed to aiohttp untouched. Each HTTP/2 request is relayed to the simulator's own
aiohttp app over a loopback HTTP/1.1 connection and its response relayed back as it
arrives, so every route and control (pacing, faults, hangs, stats) means exactly what
it means over HTTP/1.1 and is implemented once. Failures map as an HTTP/2 front end
such as nginx maps them: no response head from the backend -> 502; a backend that
breaks after the head -> RST_STREAM INTERNAL_ERROR; a client that resets a stream or
leaves -> the backend request is closed, so the handler is cancelled as for HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import cast

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from aiohttp import web
from h2.errors import ErrorCodes
from yarl import URL

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Real providers' fronts allow 100-256 streams per connection (Cloudflare 256); the top
# of that range lets a gateway's pool put a benchmark's hundreds of streams on few
# connections, while a runaway client still cannot open unbounded loopback relays.
MAX_CONCURRENT_STREAMS = 256
# Bodies are buffered until END_STREAM anyway; a 1 MiB stream window (16 MiB for the
# connection) lets a long prompt arrive in a few round trips instead of sixteen per MiB.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20
_DEFAULT_WINDOW = 65_535  # RFC 9113's initial connection window, before our WINDOW_UPDATE
# HTTP/1.1 connection-specific headers, which HTTP/2 forbids (RFC 9113 8.2.2; h2 refuses them).
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"})
# Not relayed to the backend either: te means nothing on HTTP/1.1's side, host comes from
# :authority, and aiohttp computes the length of the (complete) body itself.
_NOT_RELAYED = _CONNECTION_SPECIFIC | {"te", "host", "content-length"}
# Without this, aiohttp's client would add headers the h2 client never sent.
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_BACKEND_FAILURES = (aiohttp.ClientError, OSError)  # a broken or garbled loopback response

log = logging.getLogger(__name__)


class Sniffer(asyncio.Protocol):
    """The listening socket's protocol: waits for the first bytes, then becomes the HTTP/2
    side or hands the transport to aiohttp. A byte that departs from the preface decides,
    so a short HTTP/1.1 request is never held back."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no asyncio.Transport subclass
        self.site.sniffing.add(self)

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if len(self.seen) < len(PREFACE) and PREFACE.startswith(self.seen):
            return  # could still become the preface: wait for more
        http2 = self.seen.startswith(PREFACE)
        proto: asyncio.Protocol = Http2(self.site) if http2 else self.site.http1()
        assert self.transport is not None
        self.site.sniffing.discard(self)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.seen)

    def eof_received(self) -> bool:
        return False  # nothing decided yet and nothing more coming: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.sniffing.discard(self)


@dataclass(eq=False, slots=True)
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    window: asyncio.Event = field(default_factory=asyncio.Event)  # set when the send window may have grown
    ended: bool = False  # the client's END_STREAM arrived
    task: asyncio.Task[None] | None = None  # the relay (or local answer), once started


class Http2(asyncio.Protocol):
    """One HTTP/2 connection: streams in, relays out, one task per request stream."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="latin-1"))
        self.streams: dict[int, _Stream] = {}
        self.writable = asyncio.Event()  # cleared while the transport's write buffer is full
        self.writable.set()
        self.draining = False  # shutting down: new streams are refused, close when the last ends
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # connection_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.site.h2.add(self)
        codes = h2.settings.SettingCodes
        kept = {codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                codes.MAX_HEADER_LIST_SIZE: self.conn.local_settings.max_header_list_size}
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            **kept, codes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS})
        self.conn.initiate_connection()  # advertises the stream limit, which handle() enforces:
        # h2 would answer one stream too many by closing the whole connection (a client may
        # open streams before our SETTINGS reach it); RFC 9113 5.1.2 refuses just that stream.
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=kept)
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:  # h2 has queued a GOAWAY naming the error
            self.flush()
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            self.handle(event)
        self.flush()
        if self.draining and not self.streams:
            self.close()

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            if self.draining or len(self.streams) >= MAX_CONCURRENT_STREAMS:
                self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # unprocessed: safe to retry
            else:
                self.streams[sid] = _Stream([(str(k), str(v)) for k, v in event.headers])
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            st = self.streams.get(event.stream_id)
            if st is not None and st.task is None:
                st.body += event.data
                if len(st.body) > self.site.max_body:
                    text = f"Maximum request body size {self.site.max_body} exceeded"
                    self.start(event.stream_id, st, self.answer(event.stream_id, st, 413, text))
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.ended = True
                if st.task is None:
                    self.start(event.stream_id, st, self.relay(event.stream_id, st))
        elif isinstance(event, h2.events.StreamReset):
            st = self.streams.pop(event.stream_id, None)
            if st is not None and st.task is not None:
                st.task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            sid = getattr(event, "stream_id", 0)  # 0: the connection's window, or every stream's initial one
            for st in [self.streams.get(sid)] if sid else self.streams.values():
                if st is not None:
                    st.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client's GOAWAY: h2 lets nothing more be sent (python-hyper/h2#1181), so
            # close; connection_lost cancels the relays.
            assert self.transport is not None
            self.transport.close()

    def start(self, sid: int, st: _Stream, work: Coroutine[object, object, None]) -> None:
        st.task = asyncio.get_running_loop().create_task(work)
        st.task.add_done_callback(lambda task: self.finished(sid, st, task))

    def finished(self, sid: int, st: _Stream, task: asyncio.Task[None]) -> None:
        if self.streams.get(sid) is st:
            del self.streams[sid]
        if not task.cancelled() and task.exception() is not None:
            log.error("HTTP/2 stream %d failed", sid, exc_info=task.exception())
            self.reset(sid, ErrorCodes.INTERNAL_ERROR)
        if self.draining and not self.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.h2.discard(self)
        self.cancel()
        self.writable.set()  # let no relay wait for a buffer that will never drain
        self.gone.set_result(None)

    def cancel(self) -> None:
        for st in self.streams.values():
            if st.task is not None:
                st.task.cancel()  # the relay closes its backend request: the handler sees a disconnect

    def reset(self, sid: int, code: ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed: nothing to reset
            self.conn.reset_stream(sid, code)
        self.flush()

    async def send(self, sid: int, st: _Stream, data: bytes, end: bool = False) -> None:
        """Send `data` (and END_STREAM if `end`) within the peer's windows and frame size."""
        view = memoryview(data)
        while True:
            await self.writable.wait()
            st.window.clear()  # before reading the window, so no update is missed
            size = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if size <= 0 and view:
                await st.window.wait()
                continue
            last = size == len(view)
            self.conn.send_data(sid, view[:size].tobytes(), end_stream=end and last)
            self.flush()
            view = view[size:]
            if last:
                return

    async def answer(self, sid: int, st: _Stream, status: int, text: str) -> None:
        """A response of this front end's own (502, 413), as plain text."""
        body = text.encode() + b"\n"
        headers = [(":status", str(status)), ("content-type", "text/plain; charset=utf-8"),
                   ("content-length", str(len(body)))]
        self.conn.send_headers(sid, headers)
        await self.send(sid, st, body, end=True)
        if not st.ended:
            self.reset(sid, ErrorCodes.NO_ERROR)  # answered early: stop the upload (RFC 9113 8.1)

    async def relay(self, sid: int, st: _Stream) -> None:
        pseudo = {k: v for k, v in st.headers if k.startswith(":")}
        path = pseudo.get(":path", "")
        if not path.startswith("/"):  # CONNECT, OPTIONS * and such: nothing here serves them
            await self.answer(sid, st, 400, "Only origin-form :path is served")
            return
        fields = [(k, v) for k, v in st.headers if not k.startswith(":") and k not in _NOT_RELAYED]
        if ":authority" in pseudo:
            fields.append(("host", pseudo[":authority"]))
        assert self.site.session is not None
        try:
            resp = await self.site.session.request(
                pseudo.get(":method", "GET"), URL(self.site.backend + path, encoded=True),
                headers=fields, data=io.BytesIO(st.body) if st.body else None,  # bytes > 1 MiB warn
                skip_auto_headers=_SKIP_AUTO, allow_redirects=False)
        except _BACKEND_FAILURES as err:
            await self.answer(sid, st, 502, f"Bad Gateway: the simulator did not answer ({type(err).__name__})")
            return
        try:
            self.conn.send_headers(sid, [(":status", str(resp.status)), *_response_fields(resp)])
            async for chunk in resp.content.iter_any():  # as they arrive: paced streams stay paced
                await self.send(sid, st, chunk)
            await self.send(sid, st, b"", end=True)
        except _BACKEND_FAILURES:
            resp.close()
            self.reset(sid, ErrorCodes.INTERNAL_ERROR)
        except BaseException:  # cancelled (client gone) or a bug: drop the backend request
            resp.close()
            raise
        else:
            resp.release()

    def drain(self) -> None:
        """Shutdown: serve the streams in flight, refuse new ones, close once none is left.
        No GOAWAY until then: h2 (like an h2-based client) treats one as the end of all
        traffic (python-hyper/h2#1181), so an early one would cut the streams in flight."""
        self.draining = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        self.cancel()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()  # GOAWAY: NO_ERROR, the last stream we accepted
        self.flush()
        assert self.transport is not None
        self.transport.close()


def _response_fields(resp: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The backend's response headers (raw, so repeated ones stay repeated) minus the
    connection-specific ones and those its Connection header names (RFC 9110 7.6.1)."""
    drop = _CONNECTION_SPECIFIC | {t.strip().lower() for t in resp.headers.get("Connection", "").split(",")}
    return [(k.lower(), v) for k, v in resp.raw_headers if k.decode("latin-1").lower() not in drop]


def _backend_url(server: asyncio.AbstractServer) -> str:
    """Where the relays reach `server`: its bound address, loopback for a wildcard one."""
    host, port = server.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
    addr = ipaddress.ip_address(host)
    if addr.is_unspecified:
        addr = ipaddress.ip_address("127.0.0.1" if addr.version == 4 else "::1")
    return f"http://[{addr}]:{port}" if addr.version == 6 else f"http://{addr}:{port}"


class Site(web.BaseSite):
    """aiohttp's TCPSite with the sniffer in front: HTTP/1.1 and h2c on one port."""

    __slots__ = ("_host", "_port", "backend", "drain_s", "h2", "max_body", "session", "sniffing")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, max_body: int,
                 drain_s: float, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self.max_body = max_body  # the app's client_max_size: the same 413 boundary as HTTP/1.1
        self.drain_s = drain_s  # how long in-flight HTTP/2 streams may finish at shutdown
        self.sniffing: set[Sniffer] = set()
        self.h2: set[Http2] = set()
        self.backend = ""  # http://address:port of the bound socket, for the relays
        self.session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        port = self._server.sockets[0].getsockname()[1] if self._server else self._port
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=port))

    def http1(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None, "runner was cleaned up"
        return server()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        # Not serving until the relays know the bound port (unknown before this when port=0).
        self._server = server = await loop.create_server(
            lambda: Sniffer(self), self._host, self._port, backlog=self._backlog, start_serving=False)
        self.backend = _backend_url(server)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # MAX_CONCURRENT_STREAMS bounds it per connection
            timeout=aiohttp.ClientTimeout(),  # hangs and slow streams last as long as the client wants
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        await server.start_serving()

    async def stop(self) -> None:
        await super().stop()  # stop listening
        for sniffer in list(self.sniffing):
            assert sniffer.transport is not None
            sniffer.transport.close()
        conns = list(self.h2)
        for conn in conns:
            conn.drain()
        if conns:  # the grace aiohttp's shutdown_timeout gives HTTP/1.1 requests
            await asyncio.wait([conn.gone for conn in conns], timeout=self.drain_s)
        for conn in conns:
            conn.close()  # no-op for the drained ones; the rest are cut off
        await asyncio.gather(*(st.task for conn in conns for st in conn.streams.values() if st.task),
                             return_exceptions=True)
        if self.session is not None:
            await self.session.close()

