"""The HTTP/2 upstream client (providers/h2client.py) against a real HTTP/2 server over a
real socket (tests/providers/h2server.py): streams sharing connections, the server's stream
limit, flow control both ways, resets, GOAWAY, timeouts and the connection limit."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable

import h2.errors
import pytest

from farebox.providers.client import Client
from farebox.providers.response import Response, TransportError
from tests.providers.h2server import H2Server


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))
    return wrapper


def client(**kw: float) -> Client:
    options = {"connect_timeout_s": 5.0, "idle_timeout_s": 5.0, "total_timeout_s": 10.0, **kw}
    return Client(**options)  # type: ignore[arg-type]


async def post(c: Client, url: str, body: bytes = b"{}", headers: dict[str, str] | None = None,
               **kw: float) -> Response:
    return await c.post("p", url, body, headers or {}, http2=True, **kw)  # type: ignore[arg-type]


async def lines(response: Response) -> list[bytes]:
    out = []
    while line := await response.readline():
        if line.strip():
            out.append(line.strip())
    response.release()
    return out


@run
async def test_a_request_carries_its_headers_lower_case_and_its_body_and_gets_json_back() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        response = await post(c, base + "/v1/json?x=1", b"abc", {"Authorization": "Bearer k",
                                                                 "Connection": "keep-alive", "X-Title": "t"})
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        assert json.loads(await response.read()) == {"n": 3}
        response.release()
        await c.close()
    head = server.requests[0]["headers"]
    assert head[":method"] == "POST" and head[":scheme"] == "http" and head[":path"] == "/v1/json?x=1"
    assert head[":authority"] == base.removeprefix("http://")
    assert head["authorization"] == "Bearer k" and head["x-title"] == "t" and head["content-length"] == "3"
    assert "connection" not in head
    assert server.requests[0]["body"] == b"abc"


@run
async def test_concurrent_requests_share_connections_up_to_the_servers_stream_limit() -> None:
    server = H2Server(max_streams=4)
    async with server as base:
        c = client()
        first = await post(c, base + "/v1/json")  # the connection, and the server's SETTINGS, come first
        await first.read()
        first.release()

        async def one() -> list[bytes]:
            return await lines(await post(c, base + "/v1/sse?k=2&ms=30"))

        results = await asyncio.gather(*(one() for _ in range(10)))
        assert results == [[b"data: 0", b"data: 1", b"data: [DONE]"]] * 10
        assert server.connections == 3  # ten streams, four to a connection
        assert server.most_open <= 4
        assert c.open_connections() == 3
        await c.close()


@run
async def test_a_body_larger_than_the_servers_window_is_sent_as_the_window_opens() -> None:
    server = H2Server(window=1000)
    async with server as base:
        c = client()
        body = bytes(range(256)) * 1200  # 300 KiB against a 1,000-byte stream window
        response = await post(c, base + "/v1/json", body)
        assert json.loads(await response.read()) == {"n": len(body)}
        response.release()
        await c.close()
    assert server.requests[0]["body"] == body


@run
async def test_an_unread_body_stops_being_acknowledged_and_arrives_whole_when_read() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        response = await post(c, base + "/v1/big?kb=4096")  # 4 MiB: more than the buffer and the stream window
        sid = next(iter(server.sent))
        await asyncio.sleep(0.3)
        held = server.sent[sid]
        assert held < 4096 * 1024  # the server waits for window updates that do not come
        data = await response.read()
        assert len(data) == 4096 * 1024 and set(data) == {ord("x")}
        response.release()
        await c.close()


@run
async def test_gzip_bodies_are_decompressed() -> None:
    async with H2Server() as base:
        c = client()
        response = await post(c, base + "/v1/gzip")
        assert json.loads(await response.read()) == {"zipped": True}
        response.release()
        await c.close()


@run
async def test_a_reset_stream_fails_alone_and_the_connection_serves_on() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        good = asyncio.ensure_future(post(c, base + "/v1/sse?k=3&ms=60"))
        reset = await post(c, base + "/v1/reset")
        assert await reset.readline() == b"data: 0\n"
        with pytest.raises(TransportError, match=r"reset the stream \(INTERNAL_ERROR\)"):
            await lines(reset)
        assert await lines(await good) == [b"data: 0", b"data: 1", b"data: 2", b"data: [DONE]"]
        assert await lines(await post(c, base + "/v1/sse?k=1&ms=1")) == [b"data: 0", b"data: [DONE]"]
        assert server.connections == 1
        await c.close()


@run
async def test_a_refused_stream_is_sent_again_and_a_server_that_keeps_refusing_is_a_transport_error() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        response = await post(c, base + "/v1/refuse-once", b"abc")
        assert json.loads(await response.read()) == {"n": 3}  # the second sending was answered
        response.release()
        assert [r["path"] for r in server.requests] == ["/v1/refuse-once"] * 2
        with pytest.raises(TransportError, match="REFUSED_STREAM"):
            await post(c, base + "/v1/refuse")
        assert len(server.requests) == 2 + 3  # sent three times in all, then given up
        assert server.connections == 1
        await c.close()


@run
async def test_goaway_lets_taken_streams_finish_and_sends_the_untaken_again_on_a_new_connection() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        taken = asyncio.ensure_future(post(c, base + "/v1/sse?k=2&ms=100"))
        await asyncio.sleep(0.05)
        # The server names the stream before this one as its last: this one goes again, elsewhere.
        response = await post(c, base + "/v1/goaway-once", b"abcd")
        assert json.loads(await response.read()) == {"n": 4}
        response.release()
        assert await lines(await taken) == [b"data: 0", b"data: 1", b"data: [DONE]"]  # below the line: finishes
        assert server.connections == 2
        assert await lines(await post(c, base + "/v1/sse?k=1&ms=1")) == [b"data: 0", b"data: [DONE]"]
        assert server.connections == 2
        with pytest.raises(TransportError, match="before taking the request"):
            await post(c, base + "/v1/goaway")  # every connection says so: given up after the resends
        await c.close()


@run
async def test_closing_a_response_resets_its_stream_and_keeps_the_connection() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        response = await post(c, base + "/v1/hang")
        response.close()
        await asyncio.sleep(0.1)
        assert server.resets == [h2.errors.ErrorCodes.CANCEL]
        assert await lines(await post(c, base + "/v1/sse?k=1&ms=1")) == [b"data: 0", b"data: [DONE]"]
        assert server.connections == 1
        await c.close()


@run
async def test_a_stream_released_after_done_is_left_to_end_not_reset() -> None:
    server = H2Server()
    async with server as base:
        c = client()
        response = await post(c, base + "/v1/sse?k=1&ms=1&end_ms=100")
        while (await response.readline()).strip() != b"data: [DONE]":
            pass
        response.release()  # END_STREAM is still 100 ms away
        await asyncio.sleep(0.3)
        assert server.resets == [] and server.ended == 1
        await c.close()


@run
async def test_silence_past_the_idle_timeout_is_a_timeout_and_resets_the_stream() -> None:
    server = H2Server()
    async with server as base:
        c = client(idle_timeout_s=0.2)
        response = await post(c, base + "/v1/hang")
        with pytest.raises(TimeoutError, match="went silent"):
            await response.read()
        await asyncio.sleep(0.05)
        assert server.resets == [h2.errors.ErrorCodes.CANCEL]
        with pytest.raises(TimeoutError):
            await post(c, base + "/v1/silent")  # no headers at all: the same bound
        await c.close()


@run
async def test_a_first_byte_bound_holds_until_started() -> None:
    async with H2Server() as base:
        c = client()
        response = await post(c, base + "/v1/sse?k=3&ms=150", first_byte_s=0.1)
        with pytest.raises(TimeoutError, match="total timeout"):
            await lines(response)
        response = await post(c, base + "/v1/sse?k=3&ms=150", first_byte_s=0.1)
        response.started()
        assert len(await lines(response)) == 4
        await c.close()


@run
async def test_the_connection_limit_makes_callers_wait_for_a_stream_slot() -> None:
    server = H2Server(max_streams=2)
    async with server as base:
        c = client(connections_max=1)
        first = await post(c, base + "/v1/json")
        await first.read()
        first.release()
        async def one() -> list[bytes]:
            return await lines(await post(c, base + "/v1/sse?k=1&ms=30"))

        results = await asyncio.gather(*(one() for _ in range(7)))
        assert results == [[b"data: 0", b"data: [DONE]"]] * 7
        assert server.connections == 1 and server.most_open <= 2
        await c.close()


@run
async def test_a_refused_connection_fails_every_caller_waiting_for_it() -> None:
    async with H2Server() as base:
        port = base.rsplit(":", 1)[1]
    c = client()
    outcomes = await asyncio.gather(*(post(c, f"http://127.0.0.1:{port}/v1/json") for _ in range(5)),
                                    return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes), outcomes
    assert c.open_connections() == 0
    await c.close()


@run
async def test_a_server_that_is_not_http2_is_a_transport_error() -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = client()
    with pytest.raises(TransportError):
        await post(c, f"http://127.0.0.1:{port}/v1/json")
    assert c.open_connections() == 0
    server.close()
    await c.close()
