"""The simulator over HTTP/2 with prior knowledge (h2c), on the port that also serves
HTTP/1.1: real sockets, a small h2 client below, the simulator's own controls."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import uvloop
from aiohttp import web
from h2.errors import ErrorCodes

from farebox.sim import h2 as sim_h2
from farebox.sim.server import create_app, start
from farebox.sim.text import count_prompt_tokens

HI = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture(params=[asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """Every test runs under both loops: `farebox sim` serves on uvloop when it is installed."""
    return request.param


class Reply:
    """One stream's response as the client saw it, frame by frame."""

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.fields: list[tuple[str, str]] = []  # the response headers as sent, repeats included
        self.chunks: list[tuple[float, bytes]] = []  # (arrival time, DATA payload)
        self.reset: int | None = None  # RST_STREAM error code, if the server reset the stream
        self.ended = False  # END_STREAM arrived
        self.done = asyncio.Event()  # ended, reset, or the connection went away
        self.window_updates = 0

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """HTTP/2 with prior knowledge over one asyncio connection, honouring flow control both
    ways. `acking=False` holds back WINDOW_UPDATEs for received data until ack()."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: dict[int, int]) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                         header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.replies: dict[int, Reply] = {}
        self.acking = True
        self.unacked: dict[int, int] = {}
        self.window = asyncio.Event()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self.read())

    @classmethod
    async def connect(cls, port: int, trickle: bool = False, **settings: int) -> Client:
        """`trickle` sends most of the preface a few bytes at a time, as a slow network might
        (the rest goes with the SETTINGS frame, so the server's can't be acknowledged early)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        codes = {getattr(h2.settings.SettingCodes, k.upper()): v for k, v in settings.items()}
        client = cls(reader, writer, codes)
        opening = client.conn.data_to_send()
        sent = 0
        for cut in (5, 12, 20) if trickle else ():
            writer.write(opening[sent:cut])
            sent = cut
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(opening[sent:])
        return client

    def flush(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(self.conn.data_to_send())

    async def read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self.handle(event)
                self.flush()
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            for reply in self.replies.values():
                reply.done.set()

    def handle(self, event: h2.events.Event) -> None:
        reply = self.replies.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and reply:
            reply.fields = list(event.headers)
            reply.headers = dict(event.headers)
            reply.status = int(reply.headers.pop(":status"))
        elif isinstance(event, h2.events.DataReceived) and reply:
            reply.chunks.append((time.monotonic(), event.data))
            self.unacked[reply.sid] = self.unacked.get(reply.sid, 0) + event.flow_controlled_length
            if self.acking:
                self.ack()
        elif isinstance(event, h2.events.StreamEnded) and reply:
            reply.ended = True
            reply.done.set()
        elif isinstance(event, h2.events.StreamReset) and reply:
            reply.reset = event.error_code
            reply.done.set()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            if reply:
                reply.window_updates += 1
            self.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def ack(self) -> None:
        for sid, size in self.unacked.items():
            self.conn.acknowledge_received_data(size, sid)
        self.unacked.clear()
        self.flush()

    async def request(self, path: str, body: Any = None, method: str = "POST", end: bool = True,
                      authority: str = "sim", headers: list[tuple[str, str]] | None = None) -> Reply:
        """Open a stream and send the whole request (waiting for window as needed); the reply
        fills in as frames arrive. A body that is not bytes is sent as JSON."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sid = self.conn.get_next_available_stream_id()
        reply = self.replies[sid] = Reply(sid)
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority),
                  *(headers or [])]
        if data is not None and not isinstance(body, bytes):
            fields.append(("content-type", "application/json"))
        self.conn.send_headers(sid, fields, end_stream=data is None)
        view = memoryview(data or b"")
        while view:
            self.window.clear()
            size = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if size <= 0:
                self.flush()
                await asyncio.wait_for(self.window.wait(), 10)
                continue
            self.conn.send_data(sid, view[:size].tobytes(), end_stream=end and size == len(view))
            view = view[size:]
        self.flush()
        return reply

    async def fetch(self, path: str, body: Any = None, method: str = "POST") -> Reply:
        reply = await self.request(path, body, method)
        await asyncio.wait_for(reply.done.wait(), 10)
        return reply

    def cancel(self, reply: Reply) -> None:
        self.conn.reset_stream(reply.sid, ErrorCodes.CANCEL)
        self.flush()

    async def close(self) -> None:
        if not self.closed.is_set():
            self.conn.close_connection()
            self.flush()
        self.writer.close()
        await self.task


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-small", "messages": HI, "stream": stream, **extra}


def sse_data(reply: Reply) -> list[str]:
    return [e.removeprefix("data: ") for e in reply.body.decode().split("\n\n") if e]


def with_sim(test: Callable[[int], Awaitable[None]], loop_factory: LoopFactory) -> None:
    """Run `test(port)` against the sim as `farebox sim` serves it, in this thread's loop."""

    async def main() -> None:
        runner, port = await start(port=0)
        try:
            await test(port)
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def stats(client: Client) -> dict[str, int]:
    reply = await client.fetch("/_sim/stats", method="GET")
    assert reply.status == 200
    return reply.json()


async def until(client: Client, check: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Poll GET /_sim/stats (over h2) until `check` holds; fail after a generous 5 s."""
    deadline = time.monotonic() + 5
    while not check(got := await stats(client)):
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.02)
    return got


def test_chat_over_h2_equals_http1_on_the_same_port(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        h2_reply = await client.fetch(CHAT, chat())
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}{CHAT}", json=chat()) as resp:
            assert resp.version == aiohttp.HttpVersion11
            h1_status, h1_type, h1 = resp.status, resp.headers["Content-Type"], await resp.json()
        got = h2_reply.json()
        assert (h2_reply.status, h2_reply.headers["content-type"]) == (h1_status, h1_type)
        assert h1_status == 200
        assert h2_reply.ended and h2_reply.reset is None
        assert int(h2_reply.headers["content-length"]) == len(h2_reply.body)
        assert "connection" not in h2_reply.headers and "transfer-encoding" not in h2_reply.headers
        assert got.keys() == h1.keys() and {"choices", "usage"} <= got.keys()
        for volatile in ("id", "created"):
            del got[volatile], h1[volatile]
        assert got == h1  # the same handlers answer: the same deterministic answer
        # HTTP/1.x requests are served at once, even one shorter than the 24-byte preface:
        # its first byte already is no preface.
        tiny = b"GET / HTTP/1.0\r\n\r\n"
        assert len(tiny) < len(sim_h2.PREFACE)
        for request, head in ((b"GET /v1/models HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n",
                               b"HTTP/1.1 200 OK\r\n"), (tiny, b"HTTP/1.0 404 ")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert raw.startswith(head), raw[:80]
        await client.close()

    with_sim(test, loop_factory)


def test_preface_in_pieces_is_still_http2(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port, trickle=True)
        reply = await client.fetch(CHAT, chat())
        assert reply.status == 200 and reply.json()["object"] == "chat.completion"
        await client.close()

    with_sim(test, loop_factory)


def test_streams_multiplex_on_one_connection(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        paced = "/_sim/tokens_per_s=20,output_tokens=6" + CHAT
        a, b = await client.request(paced, chat(True)), await client.request(paced, chat(True))
        plain = await asyncio.gather(*(client.fetch(CHAT, chat()) for _ in range(20)))
        await asyncio.wait_for(asyncio.gather(a.done.wait(), b.done.wait()), 10)
        assert a.sid != b.sid and a.ended and b.ended
        for reply in (a, b):
            assert reply.status == 200 and sse_data(reply)[-1] == "[DONE]"
        # Interleaved, not one after the other: each began before the other finished.
        assert a.chunks[0][0] < b.chunks[-1][0] and b.chunks[0][0] < a.chunks[-1][0]
        assert {r.status for r in plain} == {200}
        assert len({r.json()["id"] for r in plain}) == 20
        await client.close()

    with_sim(test, loop_factory)



def test_streams_past_the_limit_are_refused_not_the_connection(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        # All sent before the server's SETTINGS are read, so h2 does not hold any back; each
        # takes ~0.4 s, so none ends before the last has arrived.
        over = sim_h2.MAX_CONCURRENT_STREAMS + 20
        replies = [await client.request("/_sim/tokens_per_s=5,output_tokens=3" + CHAT, chat(True))
                   for _ in range(over)]
        await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in replies)), 20)
        refused = [r for r in replies if r.reset is not None]
        assert {r.reset for r in refused} == {ErrorCodes.REFUSED_STREAM} and len(refused) == 20
        assert all(r.status is None and not r.chunks for r in refused)  # never served: safe to retry
        assert all(sse_data(r)[-1] == "[DONE]" for r in replies if r.reset is None)
        assert (await client.fetch(CHAT, chat())).status == 200 and client.goaway is None
        await client.close()

    with_sim(test, loop_factory)

def test_paced_stream_arrives_as_it_is_generated(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        reply = await client.fetch("/_sim/tokens_per_s=20,output_tokens=5" + CHAT, chat(True))
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(e) for e in sse_data(reply)[:-1]]
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        # 5 tokens at 20/s: four 50 ms sleeps between token chunks, each relayed as it came.
        times = [t for t, data in reply.chunks if b'"content"' in data]
        assert len(times) >= 5, reply.chunks
        assert times[-1] - times[0] >= 0.15
        assert all(later > earlier for earlier, later in itertools.pairwise(times))
        await client.close()

    with_sim(test, loop_factory)


def test_status_fault_passes_through_with_its_body_and_headers(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        down = await client.fetch("/_sim/status=503" + CHAT, chat(True))
        assert down.status == 503 and down.ended
        assert down.json()["error"]["type"] == "server_error"
        limited = await client.fetch("/_sim/status=429,retry_after=3" + CHAT, chat())
        assert limited.status == 429 and limited.headers["retry-after"] == "3"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        await client.close()

    with_sim(test, loop_factory)


def test_request_body_beyond_the_window_is_acknowledged_as_it_arrives(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        messages = [{"role": "user", "content": "word " * (3 * sim_h2.STREAM_WINDOW // 5)}]
        body = json.dumps({"model": "sim-small", "messages": messages}).encode()
        assert len(body) > 3 * sim_h2.STREAM_WINDOW
        reply = await client.fetch(CHAT, body)
        assert reply.status == 200
        assert reply.json()["usage"]["prompt_tokens"] == count_prompt_tokens(messages)
        assert reply.window_updates > 0  # the client could only finish on the server's WINDOW_UPDATEs
        await client.close()

    with_sim(test, loop_factory)


def test_response_beyond_the_client_window_waits_for_its_acknowledgements(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port, initial_window_size=4096)
        client.acking = False
        reply = await client.request("/_sim/output_tokens=20000" + CHAT, chat())
        deadline = time.monotonic() + 5
        while len(reply.body) < 4096:
            assert time.monotonic() < deadline and not reply.done.is_set()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # room to overrun the window, were the server to ignore it
        assert len(reply.body) == 4096 and not reply.done.is_set()
        client.acking = True
        client.ack()
        await asyncio.wait_for(reply.done.wait(), 10)
        assert reply.ended and int(reply.headers["content-length"]) == len(reply.body) > 65_535
        assert reply.json()["usage"]["completion_tokens"] == 20000
        await client.close()

    with_sim(test, loop_factory)


def test_client_reset_disconnects_the_handler(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        base = await stats(client)
        hang = await client.request("/_sim/hang=true" + CHAT, chat(True))
        await until(client, lambda s: s["active_streams"] == base["active_streams"] + 1)
        client.cancel(hang)
        got = await until(client, lambda s: s["streams_disconnected"] == base["streams_disconnected"] + 1)
        assert got["active_streams"] == base["active_streams"]
        # A stream reset mid-way stops generating too, and the connection carries on.
        slow = await client.request("/_sim/tokens_per_s=5,output_tokens=50" + CHAT, chat(True))
        deadline = time.monotonic() + 5
        while not slow.chunks:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        client.cancel(slow)
        got = await until(client, lambda s: s["streams_disconnected"] == base["streams_disconnected"] + 2)
        assert got["streams_completed"] == base["streams_completed"]
        assert (got["active_streams"], got["active_requests"]) == (base["active_streams"], base["active_requests"])
        await client.close()

    with_sim(test, loop_factory)


def test_lost_connection_disconnects_every_handler(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        watcher = await Client.connect(port)
        base = await stats(watcher)
        client = await Client.connect(port)
        for _ in range(3):
            await client.request("/_sim/hang=true" + CHAT, chat())
        await until(watcher, lambda s: s["active_requests"] == base["active_requests"] + 3)
        client.writer.transport.abort()  # no GOAWAY, no FIN: gone
        await client.task
        got = await until(watcher, lambda s: s["requests_disconnected"] == base["requests_disconnected"] + 3)
        assert got["active_requests"] == base["active_requests"]
        await watcher.close()

    with_sim(test, loop_factory)


def test_backend_cut_resets_only_its_own_stream(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        survivor = await client.request("/_sim/tokens_per_s=20,output_tokens=6" + CHAT, chat(True))
        cut = await client.fetch("/_sim/cut_after=3" + CHAT, chat(True))
        assert cut.status == 200 and cut.chunks  # the head and the first events made it
        assert cut.reset == ErrorCodes.INTERNAL_ERROR and not cut.ended
        half = await client.fetch("/_sim/cut_after=1" + CHAT, chat())  # Content-Length, half a body
        assert half.status == 200 and half.reset == ErrorCodes.INTERNAL_ERROR
        assert 0 < len(half.body) < int(half.headers["content-length"])
        await asyncio.wait_for(survivor.done.wait(), 10)
        assert survivor.ended and survivor.reset is None and sse_data(survivor)[-1] == "[DONE]"
        after = await client.fetch(CHAT, chat())
        assert after.status == 200 and client.goaway is None
        await client.close()

    with_sim(test, loop_factory)


def on_site(app: web.Application, test: Callable[[int], Awaitable[None]], loop_factory: LoopFactory,
            **site: Any) -> None:
    """Run `test(port)` against any aiohttp app behind the h2 front."""

    async def main() -> None:
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        front = sim_h2.Site(runner, "127.0.0.1", 0, **{"max_body": 1 << 20, "drain_s": 1.0, **site})
        await front.start()
        try:
            await test(runner.addresses[0][1])
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def test_backend_failing_before_its_head_is_a_502(loop_factory: LoopFactory) -> None:
    async def closes(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async def babbles(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.write(b"SSH-2.0-not-http\r\n\r\n")
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_get("/closes", closes)
    app.router.add_get("/babbles", babbles)

    async def test(port: int) -> None:
        client = await Client.connect(port)
        for path in ("/closes", "/babbles"):
            reply = await client.fetch(path, method="GET")
            assert reply.status == 502 and reply.ended, path
            assert reply.body.startswith(b"Bad Gateway")
        await client.close()

    on_site(app, test, loop_factory)



def test_headers_are_relayed_as_sent_both_ways(loop_factory: LoopFactory) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        resp = web.json_response({"headers": list(request.headers.items()), "length": len(body),
                                  "path": request.path_qs})
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["Connection"] = "keep-alive, X-Hop"
        resp.headers["X-Hop"] = "only for this connection"
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)

    async def test(port: int) -> None:
        client = await Client.connect(port)
        reply = await client.request("/a%2Fb/c?alt=sse&x=%20", b"0123456789", method="PUT",
                                     authority="api.example:443",
                                     headers=[("x-api-key", "k"), ("x-twice", "1"), ("x-twice", "2")])
        await asyncio.wait_for(reply.done.wait(), 10)
        seen = reply.json()
        assert seen["path"] == "/a%2Fb/c?alt=sse&x=%20"  # not re-encoded on the way
        assert seen["length"] == 10
        # What the client sent, with :authority as Host, and nothing aiohttp's client would add.
        assert sorted(seen["headers"]) == sorted([
            ["Host", "api.example:443"], ["x-api-key", "k"], ["x-twice", "1"], ["x-twice", "2"],
            ["Content-Length", "10"]])
        assert [v for k, v in reply.fields if k == "set-cookie"] == ["a=1", "b=2"]
        assert reply.status == 200 and "x-hop" not in reply.headers and "connection" not in reply.headers
        assert reply.headers["content-type"] == "application/json; charset=utf-8"
        await client.close()

    on_site(app, test, loop_factory)

def test_body_over_the_limit_is_a_413_that_stops_the_upload(loop_factory: LoopFactory) -> None:
    async def test(port: int) -> None:
        client = await Client.connect(port)
        whole = await client.fetch(CHAT, b"x" * 5000)
        assert whole.status == 413 and whole.ended
        # Still uploading when refused: answered, then told to stop without error.
        ongoing = await client.request(CHAT, b"x" * 5000, end=False)
        await asyncio.wait_for(ongoing.done.wait(), 10)
        assert ongoing.status == 413 and ongoing.reset == ErrorCodes.NO_ERROR
        small = await client.fetch(CHAT, chat())
        assert small.status == 200
        await client.close()

    on_site(create_app(), test, loop_factory, max_body=4096)


def test_shutdown_drains_streams_then_closes_every_connection(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        runner, port = await start(port=0)
        draining = await Client.connect(port)
        paced = await draining.request("/_sim/tokens_per_s=20,output_tokens=6" + CHAT, chat(True))
        hanging = await Client.connect(port)
        hang = await hanging.request("/_sim/hang=true" + CHAT, chat(True))
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)  # says nothing
        await until(draining, lambda s: s["active_streams"] >= 2)
        began = time.monotonic()
        await asyncio.wait_for(runner.cleanup(), 10)
        assert time.monotonic() - began < 4  # about a second of grace, not a hang
        assert paced.ended and sse_data(paced)[-1] == "[DONE]"  # in flight, allowed to finish
        for client in (draining, hanging):
            await asyncio.wait_for(client.closed.wait(), 5)
            assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
        assert not hang.ended and hang.status is None  # cut off after the grace period
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        idle_writer.close()
        await draining.close()
        await hanging.close()
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, leftover

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
