"""The upstream HTTP client (providers/client.py) against small real servers: connection
reuse, framing, compression, timeouts, broken responses and the connection limit."""

from __future__ import annotations

import asyncio
import functools
import gzip
from collections.abc import Awaitable, Callable

import pytest

from farebox.providers.client import Client
from farebox.providers.response import TransportError


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Each test runs its coroutine on a fresh event loop."""
    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))
    return wrapper


class RawServer:
    """An HTTP server made of whatever bytes `answer` writes per request; counts connections."""

    def __init__(self, answer: Callable[[int], list[bytes | float]]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/x"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                self.requests += 1
                for part in self.answer(self.requests):
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    elif part == b"CLOSE":
                        writer.close()
                        return
                    else:
                        writer.write(part)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes, *extra: bytes) -> list[bytes | float]:
    return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)]


def client(**options: float) -> Client:
    return Client(**{"connect_timeout_s": 2, "idle_timeout_s": 5, "total_timeout_s": 10, **options})  # type: ignore[arg-type]


@run
async def test_sequential_requests_reuse_one_connection() -> None:
    server = RawServer(lambda n: ok(b'{"n": %d}' % n))
    async with server as url:
        c = client()
        for n in range(1, 6):
            response = await c.post("p", url, b"{}", {"Content-Type": "application/json"})
            assert response.status == 200 and await response.read() == b'{"n": %d}' % n
            response.release()
        await c.close()
    assert (server.requests, server.connections) == (5, 1)


@run
async def test_connection_close_and_unread_bodies_are_not_reused() -> None:
    server = RawServer(lambda n: ok(b"x", b"Connection: close\r\n") + [b"CLOSE"] if n == 1 else ok(b"y" * 10))
    async with server as url:
        c = client()
        first = await c.post("p", url, b"", {})
        assert await first.read() == b"x"
        first.release()
        second = await c.post("p", url, b"", {})
        second.close()  # body never read: the connection cannot carry another request
        third = await c.post("p", url, b"", {})
        assert await third.read() == b"y" * 10
        third.release()
        await c.close()
    assert server.connections == 3


@run
async def test_a_stream_released_after_its_last_event_keeps_its_connection() -> None:
    """The relay releases a stream after the [DONE] line; the chunked terminator may still be
    on its way, and is drained rather than costing the connection."""
    def answer(n: int) -> list[bytes | float]:
        event = b"data: [DONE]\n\n"
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n",
                b"%x\r\n%s\r\n" % (len(event), event), 0.05, b"0\r\n\r\n"]

    server = RawServer(answer)
    async with server as url:
        c = client()
        for _ in range(3):
            response = await c.post("p", url, b"{}", {})
            assert await response.readline() == b"data: [DONE]\n"
            response.release()
            await asyncio.sleep(0.2)
        await c.close()
    assert (server.requests, server.connections) == (3, 1)


@run
async def test_gzip_bodies_are_decompressed_and_lines_split() -> None:
    body = gzip.compress(b"line one\nline two\nlast")
    server = RawServer(lambda n: ok(body, b"Content-Encoding: gzip\r\n"))
    async with server as url:
        c = client()
        response = await c.post("p", url, b"", {})
        assert [await response.readline() for _ in range(4)] == [b"line one\n", b"line two\n", b"last", b""]
        response.release()
        await c.close()


@run
async def test_buffered_lines_are_taken_without_waiting_and_agree_with_readline() -> None:
    """A line split across reads is not buffered until its end arrives; whole lines are."""
    def answer(n: int) -> list[bytes | float]:
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"12\r\ndata: one\n\ndata: t\r\n", 0.05, b"6\r\nwo\n\nla\r\n", 0.05, b"2\r\nst\r\n0\r\n\r\n"]

    server = RawServer(answer)
    async with server as url:
        c = client()
        response = await c.post("p", url, b"{}", {})
        lines = []
        while True:
            line = response.buffered_line()
            if line is None:
                line = await response.readline()
                if not line:
                    break
            lines.append(line)
        assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n", b"last"]
        assert response.buffered_line() is None
        response.release()
        await c.close()


@pytest.mark.parametrize(("parts", "problem"), [
    ([b"NOT HTTP\r\n\r\n"], "malformed"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", b"CLOSE"], "mid-response"),
    ([b"CLOSE"], "before answering"),
])
@run
async def test_broken_responses_raise_transport_errors(parts: list[bytes], problem: str) -> None:
    async with RawServer(lambda n: parts) as url:
        c = client()
        with pytest.raises(TransportError, match=problem):
            response = await c.post("p", url, b"", {})
            await response.read()
        await c.close()


@run
async def test_silence_past_the_idle_timeout_raises_timeout_error() -> None:
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n", 5.0]
    async with RawServer(lambda n: parts) as url:
        c = client(idle_timeout_s=0.2)
        response = await c.post("p", url, b"", {})
        with pytest.raises(TimeoutError):
            await response.read()
        await c.close()


@run
async def test_headers_cannot_smuggle_lines() -> None:
    async with RawServer(lambda n: ok(b"")) as url:
        c = client()
        with pytest.raises(TransportError, match="invalid header"):
            await c.post("p", url, b"", {"Authorization": "Bearer x\r\nX-Evil: 1"})
        await c.close()


@run
async def test_a_callers_timeout_bounds_a_body_that_keeps_trickling() -> None:
    # Never silent for the idle timeout: only the caller's own timeout can end it.
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *[b"1\r\na\r\n", 0.05] * 100]
    async with RawServer(lambda n: parts) as url:
        c = client(idle_timeout_s=2, total_timeout_s=30)
        response = await c.post("p", url, b"", {}, timeout_s=0.3)
        with pytest.raises(TimeoutError):   # without the bound, the whole body arrives in 5 s
            await response.read()
        await c.close()


@run
async def test_a_reused_connection_still_keeps_a_shorter_timeout_than_its_last_request() -> None:
    # The first request leaves its connection's timer set for its idle timeout (5 s); the
    # second, on the same connection, must get its own 0.3 s bound, not that later one. Its
    # body takes 2 s, so a timer that fired only at 5 s would let it finish.
    trickle = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *[b"1\r\na\r\n", 0.05] * 40,
               b"0\r\n\r\n"]
    server = RawServer(lambda n: ok(b"quick") if n == 1 else trickle)
    async with server as url:
        c = client(idle_timeout_s=5, total_timeout_s=30)
        response = await c.post("p", url, b"", {})
        assert await response.read() == b"quick"
        response.release()
        response = await c.post("p", url, b"", {}, timeout_s=0.3)
        with pytest.raises(TimeoutError):
            await response.read()
        await c.close()
    assert server.connections == 1


@pytest.mark.parametrize("started", [True, False])
@run
async def test_a_first_byte_bound_holds_until_the_caller_says_started(started: bool) -> None:
    # A first line at once, then a body that trickles for 1.5 s (never silent for the idle
    # timeout): past the 0.3 s first-byte bound only if `started` lifted it.
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"6\r\nfirst\n\r\n",
             *[b"1\r\na\r\n", 0.05] * 30, b"0\r\n\r\n"]
    async with RawServer(lambda n: parts) as url:
        c = client(idle_timeout_s=2, total_timeout_s=30)
        response = await c.post("p", url, b"", {}, first_byte_s=0.3)
        assert await response.readline() == b"first\n"
        if started:
            response.started()
            assert await response.read() == b"a" * 30
            response.release()
        else:
            with pytest.raises(TimeoutError):
                await response.read()
        await c.close()


@run
async def test_a_callers_timeout_bounds_its_wait_for_a_connection() -> None:
    server = RawServer(lambda n: [3.0, *ok(b"slow")] if n == 1 else ok(b"%d" % n))
    async with server as url:
        c = client(connections_max=1)
        first = asyncio.create_task(c.post("p", url, b"", {}))
        await asyncio.sleep(0.1)              # the only connection is busy for 3 s
        with pytest.raises(TimeoutError):
            await c.post("p", url, b"", {}, timeout_s=0.2)
        response = await first                # the slot is not lost to the caller that gave up
        assert await response.read() == b"slow"
        response.release()
        response = await c.post("p", url, b"", {}, timeout_s=5)
        assert await response.read() == b"2"
        response.release()
        await c.close()
    assert server.connections == 1


@run
async def test_the_connection_limit_queues_callers() -> None:
    server = RawServer(lambda n: [0.05, *ok(b"%d" % n)])
    async with server as url:
        c = Client(connect_timeout_s=2, idle_timeout_s=5, total_timeout_s=10, connections_max=2)

        async def one() -> bytes:
            response = await c.post("p", url, b"", {})
            data = await response.read()
            response.release()
            return data

        results = await asyncio.gather(*(one() for _ in range(8)))
        await c.close()
    assert sorted(results) == sorted(b"%d" % n for n in range(1, 9))
    assert server.connections == 2
