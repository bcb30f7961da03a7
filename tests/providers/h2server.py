"""A small, scriptable HTTP/2 server (h2c, prior knowledge) on a real socket, for the tests of
providers/h2client.py: each request's path picks a behaviour, and the server records what
it saw (headers, bodies, resets, streams open at once, connections)."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings


class H2Server:
    """Paths (after any prefix): `/json` answers `{"n": <body length>}`; `/sse?k=K&ms=M` K
    events M ms apart then `data: [DONE]`, with END_STREAM in a frame of its own a little
    later (`&end_ms=E`); `/reset` headers, one event, then RST_STREAM; `/refuse` RST_STREAM
    REFUSED_STREAM at once; `/goaway` GOAWAY naming the stream before this one (or none) as
    the last processed; `/refuse-once` and `/goaway-once` do so the first time, then answer
    as `/json`; `/hang` headers and nothing more; `/silent` nothing at all; `/big?kb=N` N KiB
    of body; `/gzip` a gzip-encoded JSON body."""

    def __init__(self, max_streams: int = 100, window: int = 65535) -> None:
        self.max_streams = max_streams
        self.window = window
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.resets: list[int] = []         # error codes of streams the client reset
        self.ended = 0                      # streams the server ended normally
        self.most_open = 0                  # most streams answered at once on any connection
        self.sent: dict[int, int] = {}      # bytes of body sent per stream id (the last connection's)
        self.once: set[str] = set()         # `-once` paths already acted on
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.get_running_loop().create_server(lambda: _Conn(self), "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


class _Conn(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="latin-1"))
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.windows: dict[int, asyncio.Event] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections += 1
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams,
                                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.server.window})
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks.values():
            task.cancel()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.heads[event.stream_id] = dict(event.headers)
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.heads:
                    task = asyncio.get_running_loop().create_task(self.answer(event.stream_id))
                    self.tasks[event.stream_id] = task
                    task.add_done_callback(lambda _, sid=event.stream_id: self.tasks.pop(sid, None))
            elif isinstance(event, h2.events.StreamReset):
                self.server.resets.append(event.error_code)
                task = self.tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(event, h2.events.WindowUpdated):
                for sid, ready in list(self.windows.items()):
                    if not event.stream_id or event.stream_id == sid:
                        ready.set()
        self.flush()

    async def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """Body bytes as the client's windows allow, waiting for WINDOW_UPDATEs."""
        view = memoryview(data)
        while True:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0 and view:
                ready = self.windows[sid] = asyncio.Event()
                await ready.wait()
                continue
            piece, view = view[:window], view[window:]
            self.h2.send_data(sid, piece.tobytes(), end_stream=end and not view)
            self.server.sent[sid] = self.server.sent.get(sid, 0) + len(piece)
            self.flush()
            if not view:
                return

    async def answer(self, sid: int) -> None:
        head = self.heads.pop(sid)
        body = bytes(self.bodies.pop(sid))
        path, _, query = head[":path"].partition("?")
        args = dict(p.split("=") for p in query.split("&") if p)
        self.server.requests.append({"headers": head, "body": body, "path": path})
        self.server.most_open = max(self.server.most_open, len(self.tasks))
        name = path.rsplit("/", 1)[-1]
        if name.endswith("-once"):  # the behaviour the first time, then an ordinary JSON answer
            name = "json" if name in self.server.once else name.removesuffix("-once")
            self.server.once.add(path.rsplit("/", 1)[-1])
        if name == "silent":
            await asyncio.sleep(3600)
        if name == "refuse":
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.flush()
            return
        if name == "goaway":
            self.h2.close_connection(last_stream_id=max(sid - 2, 0))
            self.flush()
            # A graceful shutdown: streams up to the last one go on (h2 would close everything).
            self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
            return
        json_head = [(":status", "200"), ("content-type", "application/json")]
        if name == "json":
            await asyncio.sleep(float(args.get("ms", 0)) / 1000)
            self.h2.send_headers(sid, json_head)
            await self.send(sid, b'{"n": %d}' % len(body), end=True)
            return
        if name == "gzip":
            self.h2.send_headers(sid, [*json_head, ("content-encoding", "gzip")])
            await self.send(sid, gzip.compress(b'{"zipped": true}'), end=True)
            return
        if name == "big":
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/octet-stream")])
            await self.send(sid, b"x" * (int(args["kb"]) * 1024), end=True)
            return
        self.h2.send_headers(sid, [(":status", "200"), ("content-type", "text/event-stream")])
        self.flush()
        if name == "hang":
            await asyncio.sleep(3600)
        if name == "reset":
            await self.send(sid, b"data: 0\n\n")
            await asyncio.sleep(0.05)
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        for k in range(int(args.get("k", 3))):
            await asyncio.sleep(float(args.get("ms", 10)) / 1000)
            await self.send(sid, b"data: %d\n\n" % k)
        await self.send(sid, b"data: [DONE]\n\n")
        await asyncio.sleep(float(args.get("end_ms", 0)) / 1000)
        self.h2.end_stream(sid)
        self.server.ended += 1
        self.flush()
