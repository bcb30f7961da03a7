"""The HTTP/1.1 server (api/server.py) on real sockets, with a small ASGI app per test:
framing, keep-alive, pipelining, 100-continue, malformed input, backpressure, client
disconnects, idle connections and graceful shutdown."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from farebox.api.cycle import FLUSH
from farebox.api.server import HEADER_BYTES_MAX, Server

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


@contextmanager
def serving(app: Any, **options: Any) -> Iterator[Server]:
    server = Server(app, host="127.0.0.1", port=0, **options)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(signals=False)), daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(server.stop)
        thread.join(10)
        assert not thread.is_alive()


async def echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answers with the method, path, query and body it received."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    text = b"%s %s ?%s %s" % (scope["method"].encode(), scope["path"].encode(), scope["query_string"], body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": text})


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.bound_port), timeout=10)
    return sock


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length or chunked) from `sock`; leftover bytes stay in `buffered`."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {bytes(buffered)!r}"
        buffered += chunk
    head, _, _ = bytes(buffered).partition(b"\r\n\r\n")
    del buffered[:len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def need(n: int) -> None:
        while len(buffered) < n:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            buffered.extend(chunk)

    if "content-length" in headers:
        n = int(headers["content-length"])
        need(n)
        body = bytes(buffered[:n])
        del buffered[:n]
        return status, headers, body
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        while b"\r\n" not in buffered:
            need(len(buffered) + 1)
        size_line, _, _ = bytes(buffered).partition(b"\r\n")
        del buffered[:len(size_line) + 2]
        size = int(size_line, 16)
        need(size + 2)
        body += bytes(buffered[:size])
        del buffered[:size + 2]
        if size == 0:
            return status, headers, body


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    with serving(echo) as server, connect(server) as sock:
        buffered = bytearray()
        for i in range(5):
            body = b"x" * i
            sock.sendall(b"POST /a%%20b?q=%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body))
            status, headers, text = read_response(sock, buffered)
            assert status == 200
            assert text == b"POST /a b ?q=%d %s" % (i, body)
            assert headers["content-length"] == str(len(text))
            assert "date" in headers and "connection" not in headers


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving(echo) as server, connect(server) as sock:
        sock.sendall(b"".join(b"POST /%d HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % (i, i) for i in range(10)))
        buffered = bytearray()
        for i in range(10):
            assert read_response(sock, buffered)[2] == b"POST /%d ? %d" % (i, i)


def test_chunked_request_body_is_reassembled() -> None:
    with serving(echo) as server, connect(server) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert read_response(sock, bytearray())[2] == b"POST /c ? abcde"


def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    with serving(echo) as server, connect(server) as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        assert read_response(sock, bytearray())[2] == b"POST /e ? body"


def test_http_1_0_and_connection_close_end_the_connection() -> None:
    with serving(echo) as server:
        for request in (b"GET /old HTTP/1.0\r\n\r\n", b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
            with connect(server) as sock:
                sock.sendall(request)
                status, headers, _ = read_response(sock, bytearray())
                assert status == 200 and headers["connection"] == "close"
                assert sock.recv(10) == b""  # closed by the server


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost t\r\n\r\n",
                                     b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"])
def test_malformed_requests_get_a_json_400_and_a_closed_connection(garbage: bytes) -> None:
    with serving(echo) as server, connect(server) as sock:
        sock.sendall(garbage)
        status, headers, body = read_response(sock, bytearray())
        assert status == 400 and headers["content-type"] == "application/json"
        assert body == b'{"error":{"code":400,"message":"Invalid HTTP request"}}'
        assert sock.recv(10) == b""


def test_oversized_headers_get_431() -> None:
    with serving(echo) as server, connect(server) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (HEADER_BYTES_MAX + 10) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before it has read everything
        status, _, body = read_response(sock, bytearray())
        assert status == 431 and b"too large" in body


def test_head_gets_headers_without_a_body() -> None:
    with serving(echo) as server, connect(server) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        buffered = bytearray()
        while b"\r\n\r\n" not in buffered:
            buffered += sock.recv(1000)
        head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
        assert b"content-length: 10" in head  # the length of "HEAD /h ? ", and no body
        status, _, body = read_response(sock, bytearray(rest))
        assert status == 200 and body == b"GET /next ? "


def test_an_app_that_fails_before_responding_gets_a_500() -> None:
    async def broken(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await echo(scope, receive, send)
            return
        raise RuntimeError("boom")

    with serving(broken) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
        assert status == 500 and body == b'{"error":{"code":500,"message":"Internal error"}}'


def test_streamed_responses_are_chunked_and_a_slow_reader_holds_the_app_back() -> None:
    """Backpressure: the app's `send` waits while the client does not read, so the app
    cannot queue the whole stream in memory."""
    sent = []
    total = 400
    piece = b"z" * 65536

    async def streamer(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await echo(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(total):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent.append(1)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serving(streamer) as server, connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        previous = -1
        while len(sent) != previous:  # wait until the app stops making progress
            previous = len(sent)
            time.sleep(0.3)
        assert len(sent) < total, "send() never waited for the slow client"
        status, headers, body = read_response(sock, bytearray())
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert len(body) == total * len(piece)


def test_parts_of_a_stream_wait_for_the_end_of_the_pass_unless_one_asks_to_flush() -> None:
    """A streamed part is corked until the app yields to the loop, so parts sent together
    leave in one send; a part carrying `farebox.flush` leaves at once, with the corked parts
    before it, though the app has not yielded (the relay's first token). The app looks at
    the client's socket from inside the loop: corked bytes cannot have reached it, flushed
    bytes are already in the kernel."""
    seen: dict[str, bytes] = {}
    client: list[socket.socket] = []

    def arrived(wait_s: float) -> bytes:
        sock = client[0]
        sock.settimeout(wait_s)
        try:
            return sock.recv(65536, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError):
            return b""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await echo(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        seen["corked"] = arrived(0.2)  # the loop has not run since: nothing can have left
        await send({"type": "http.response.body", "body": b"two", "more_body": True, FLUSH: True})
        seen["flushed"] = arrived(10)
        await send({"type": "http.response.body", "body": b"three", "more_body": False})

    with serving(app) as server, connect(server) as sock:
        client.append(sock)
        sock.sendall(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 10
        while "flushed" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.settimeout(10)
        status, _, body = read_response(sock, bytearray())
    assert seen["corked"] == b""
    assert seen["flushed"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert seen["flushed"].endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n")
    assert status == 200 and body == b"onetwothree"


def test_the_app_hears_the_client_leave() -> None:
    heard = threading.Event()

    async def waiter(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await echo(scope, receive, send)
            return
        assert (await receive())["type"] == "http.request"
        if (await receive())["type"] == "http.disconnect":
            heard.set()

    with serving(waiter) as server:
        with connect(server) as sock:
            sock.sendall(b"GET /w HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.1)
        assert heard.wait(10), "the app never received http.disconnect"


def test_idle_keep_alive_connections_are_closed() -> None:
    with serving(echo, keepalive_s=0.2) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(sock, bytearray())
        sock.settimeout(10)
        assert sock.recv(10) == b"", "the idle connection was not closed"


def test_stopping_lets_a_request_in_flight_finish() -> None:
    release = threading.Event()
    started = threading.Event()

    async def slow(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await echo(scope, receive, send)
            return
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    with serving(slow) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert started.wait(10)
        server.loop.call_soon_threadsafe(server.stop)
        time.sleep(0.2)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", server.bound_port), timeout=2).close()
        release.set()
        status, headers, body = read_response(sock, bytearray())
        assert (status, body) == (200, b"done") and headers["connection"] == "close"
