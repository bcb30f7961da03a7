"""A paced OpenAI-compatible streaming upstream for bench/streams.py: tokens on an absolute
schedule (no drift), streams held open until released (so 10,000 can be open together for
exactly as long as wanted), and the path the floor proxy's streaming route forwards to.

    python bench/paced_upstream.py --port 0     # prints "paced upstream listening on http://..."

Standard library, h2 (the project's dependency) and uvloop when installed. It answers POST
`[/_sim/{controls}]/v1/chat/completions` (and `.../s/v1/chat/completions`, where
bench/floor_proxy.py's streaming route forwards) with the simulator's URL controls that pace a
stream (the others are refused):
`ttft_ms` (wait before the first chunk), `tokens_per_s` (0: all at once) and `output_tokens`
(default 16, capped by max_tokens / max_completion_tokens), plus one of its own:
`until_released=1` makes output_tokens a minimum: the stream goes on, a token at a time,
until `POST /_paced/release {"after_s": S, "spread_s": D}` has been called and S seconds
plus the stream's share of D have passed (or max_tokens is reached): the streams end spread
evenly over D seconds, in the order they started. bench/streams.py uses it to hold every
stream open until all are open, then for exactly the time it wants. `GET /_paced/stats`
answers the counters (requests, active, completed, disconnected: a stream whose client went
away first) as JSON; reading them is not counted as a request.

The stream is OpenAI's: a role chunk, then one chunk per token (the first with the role
chunk, at once after ttft_ms; then one every 1/tokens_per_s, on an absolute schedule so
delays do not add up), a finish chunk, the usage chunk when `stream_options.include_usage`
is set, and `data: [DONE]`. Each chunk has the fields a real one has. Without
`"stream": true` it answers the whole completion as JSON. Each stream is a chain of timer
callbacks on the event loop, not a task.

One port speaks both HTTP/1.1 and HTTP/2 over cleartext with prior knowledge (h2c): a
connection whose first bytes are HTTP/2's client preface is HTTP/2, any other HTTP/1.1.
HTTP/1.1 has keep-alive and one request at a time per connection (a stream holds its
connection). HTTP/2 answers many requests at once on one connection, each token a DATA
frame, up to `--h2-max-streams` concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS; default
256; a stream past it is refused with RST_STREAM REFUSED_STREAM), so a gateway's thousands of
upstream streams need only a few dozen connections (and descriptors). A client's RST_STREAM
ends its stream as a closed HTTP/1.1 connection does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import secrets
import signal
import time
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError
from h2.settings import SettingCodes, Settings

MAX_BODY = 16 * 1024 * 1024
PACING = {"ttft_ms": int, "tokens_per_s": float, "output_tokens": int, "until_released": int}
FLOOR_STREAM_PATH = "/s/v1/chat/completions"  # where bench/floor_proxy.py's streaming route forwards to
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Roughly what big providers' HTTP/2 front ends allow on one connection (100 to a few hundred).
H2_MAX_STREAMS = 256
H2_STREAM_WINDOW = 1 << 20  # what a client may send on a stream before we acknowledge it
H2_CONNECTION_WINDOW = 16 << 20  # and on the connection (its start is always 65,535: raised at once)
H2_CONFIG = H2Configuration(client_side=False, header_encoding="latin-1")
# Stream.content(k) in one step: what chunk(json.dumps({"content": token(k)})) gives.
TOKEN_CHUNK = b'%s{"content": " word%d"}, "logprobs": null, "finish_reason": null}]%s'


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def controls(path: str) -> tuple[dict[str, Any], str]:
    """The pacing controls of `/_sim/k=v,k=v/v1/...` and the path after them."""
    if not path.startswith("/_sim/"):
        return {}, path
    prefix, _, rest = path[len("/_sim/"):].partition("/")
    out: dict[str, Any] = {}
    for item in filter(None, prefix.split(",")):
        name, _, value = item.partition("=")
        if name not in PACING:
            raise Refused(400, f"paced upstream: unsupported control {name!r} (only {', '.join(PACING)})")
        try:
            out[name] = PACING[name](value)
        except ValueError:
            raise Refused(400, f"paced upstream: bad value for {name}: {value!r}") from None
    return out, "/" + rest


def prompt_tokens(messages: Any) -> int:
    """About a token per four bytes of text, plus a few per message, like real tokenizers' totals."""
    n = 3
    for m in messages if isinstance(messages, list) else ():
        content = m.get("content") if isinstance(m, dict) else None
        n += 4 + (len(content) // 4 + 1 if isinstance(content, str) else 0)
    return n


class Stream:
    """One answer: how many tokens it sends and its chunks, pre-encoded; and, while it is
    being answered, its HTTP/2 stream id (0 on HTTP/1.1) and the timer of its next step."""

    def __init__(self, body: dict[str, Any], ctl: dict[str, Any]) -> None:
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        self.cap = cap if isinstance(cap, int) and cap > 0 else 1 << 30
        self.want = ctl.get("output_tokens", 16)
        self.until_released = bool(ctl.get("until_released"))
        self.seq = 0  # the order it started in, for its share of the release spread
        self.sent = 0
        self.sid = 0
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self.prompt = prompt_tokens(body.get("messages"))
        self.model = str(body.get("model", "paced"))
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_paced"}
        head = json.dumps(base)[:-1] + ', "choices": [{"index": 0, "delta": '
        self._head = ("data: " + head).encode()
        self._tail = (', "usage": null' if self.include_usage else "").encode() + b"}\n\n"
        self._base = base

    def ends(self, sent: int, state: State, now: float) -> bool:
        """Whether the stream ends once `sent` tokens are out."""
        if sent >= self.cap:
            return True
        if self.until_released:
            return sent >= self.want and state.released(self.seq, now)
        return sent >= self.want

    @property
    def finish(self) -> str:
        return "length" if self.sent >= self.cap and (self.until_released or self.want > self.cap) else "stop"

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.sent, "total_tokens": self.prompt + self.sent,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def token(self, k: int) -> str:
        return f" word{k}"  # content() writes it too, pre-encoded

    def chunk(self, delta: str, finish: str | None = None) -> bytes:
        end = ', "logprobs": null, "finish_reason": ' + json.dumps(finish) + "}]"
        return self._head + delta.encode() + end.encode() + self._tail

    def opening(self) -> bytes:
        return self.chunk('{"role": "assistant", "content": "", "refusal": null}')

    def content(self, k: int) -> bytes:
        return TOKEN_CHUNK % (self._head, k, self._tail)

    def closing(self) -> bytes:
        out = self.chunk("{}", self.finish)
        if self.include_usage:
            out += b"data: " + json.dumps({**self._base, "choices": [], "usage": self.usage()}).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self) -> bytes:
        self.sent = min(self.want, self.cap)
        text = "".join(self.token(k) for k in range(self.sent))
        return json.dumps({"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                           "system_fingerprint": "fp_paced",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                        "logprobs": None, "finish_reason": self.finish}],
                           "usage": self.usage()}).encode()


class State:
    """What every connection shares: counters, the HTTP/2 stream limit, and when the
    until_released streams end: from `release_at` (loop.time(); None until POST
    /_paced/release) over `spread_s` seconds, the stream that started k-th of `released_of`
    at k/released_of of the way."""

    def __init__(self, h2_max_streams: int = H2_MAX_STREAMS) -> None:
        self.stats = {"requests": 0, "active": 0, "completed": 0, "disconnected": 0}
        self.h2_max_streams = h2_max_streams
        self.release_at: float | None = None
        self.spread_s = 0.0
        self.released_of = 1
        self.streams_started = 0

    def release(self, now: float, after_s: float, spread_s: float) -> None:
        self.release_at = now + after_s
        self.spread_s = spread_s
        self.released_of = max(1, self.streams_started)

    def released(self, seq: int, now: float) -> bool:
        if self.release_at is None:
            return False
        return now >= self.release_at + self.spread_s * min(seq, self.released_of) / self.released_of


class Pacing(asyncio.Protocol):
    """The routes and the pacing, shared by both protocols. A protocol hands over each request
    (`_handle`) and writes what comes back: `_reply(sid, status, body)` a whole JSON answer;
    `_send(stream, data, first, end)` a piece of an SSE stream (its response head before the
    first piece, its end after the last); and learns of the end of an answer by `_finished`."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.stats = state.stats
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def _reply(self, sid: int, status: int, body: bytes) -> None:
        raise NotImplementedError

    def _send(self, stream: Stream, data: bytes, first: bool, end: bool) -> None:
        raise NotImplementedError

    def _begin(self, stream: Stream) -> None:
        """An answer starts (its timer is set just after)."""

    def _finished(self, stream: Stream) -> None:
        """An answer is all written."""

    def _handle(self, sid: int, method: str, path: str, raw: bytes) -> None:
        if method == "GET" and path == "/_paced/stats":
            self._reply(sid, 200, json.dumps(self.stats).encode())
            return
        self.stats["requests"] += 1
        try:
            if method == "POST" and path == "/_paced/release":
                asked = json.loads(raw or b"{}")
                after, spread = float(asked.get("after_s", 0)), float(asked.get("spread_s", 0))
                self.state.release(self.loop.time(), after, spread)
                self._reply(sid, 200, json.dumps({"released_in_s": after, "spread_s": spread,
                                                  "active": self.stats["active"]}).encode())
                return
            ctl, rest = controls(path)
            if method != "POST" or rest not in ("/v1/chat/completions", FLOOR_STREAM_PATH):
                raise Refused(404, f"paced upstream: no route {method} {path}")
            try:
                body = json.loads(raw)
            except ValueError:
                raise Refused(400, "paced upstream: the body is not JSON") from None
            if not isinstance(body, dict):
                raise Refused(400, "paced upstream: the body is not an object")
        except Refused as r:
            self._reply(sid, r.status,
                        json.dumps({"error": {"message": str(r), "type": "invalid_request_error"}}).encode())
            return
        stream = Stream(body, ctl)
        stream.sid = sid
        if stream.until_released:
            stream.seq = self.state.streams_started
            self.state.streams_started += 1
        self.stats["active"] += 1
        self._begin(stream)
        loop = self.loop
        ttft = ctl.get("ttft_ms", 0) / 1000
        if body.get("stream") is not True:
            pace = ctl.get("tokens_per_s", 0.0)
            delay = ttft + (min(stream.want, stream.cap) / pace if pace else 0.0)
            stream.timer = loop.call_later(delay, self._whole, stream)
            return
        interval = 1.0 / ctl["tokens_per_s"] if ctl.get("tokens_per_s") else 0.0
        stream.timer = loop.call_later(ttft, self._tick, stream, 0, interval, loop.time() + ttft)

    def _whole(self, stream: Stream) -> None:
        stream.timer = None
        self._reply(stream.sid, 200, stream.whole())
        self._done(stream)

    def _tick(self, stream: Stream, k: int, interval: float, start: float) -> None:
        """Send token k (after the role chunk when k is 0), then schedule k+1, or end."""
        stream.timer = None
        if self.transport is None:
            return
        now = self.loop.time()
        first = k == 0
        out = stream.opening() if first else b""
        state = self.state
        if not stream.ends(k, state, now):
            out += stream.content(k)
            k += 1
        stream.sent = k
        if stream.ends(k, state, now):
            # A fixed-length stream's last token goes with its end; a released one ends at the
            # first tick after its release, with no token.
            self._send(stream, out + stream.closing(), first, True)
            self._done(stream)
            return
        self._send(stream, out, first, False)
        if interval:
            stream.timer = self.loop.call_at(start + k * interval, self._tick, stream, k, interval, start)
        else:
            stream.timer = self.loop.call_soon(self._tick, stream, k, interval, start)

    def _done(self, stream: Stream) -> None:
        self.stats["active"] -= 1
        self.stats["completed"] += 1
        self._finished(stream)

    def _lost(self, stream: Stream) -> None:
        """The client went away before the answer ended."""
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self.stats["disconnected"] += 1
        self.stats["active"] -= 1


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nx-request-id: req_paced\r\n\r\n")
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Payload Too Large"}


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Connection(Pacing):
    """HTTP/1.1, one request at a time; or, when its first bytes are HTTP/2's preface, hands
    the connection to an H2Protocol."""

    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.buf = bytearray()
        self.current: Stream | None = None  # the answer being sent; requests wait in buf
        self.sniffing = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current is not None:
            self._lost(self.current)
            self.current = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.sniffing:
            if len(self.buf) < len(H2_PREFACE) and H2_PREFACE.startswith(self.buf):
                return  # could still be either
            self.sniffing = False
            if self.buf.startswith(H2_PREFACE):
                self._to_h2()
                return
        if len(self.buf) > MAX_BODY + 65536:
            self._reply(0, 413, b'{"error": {"message": "body too large"}}', close=True)
            return
        self._next()

    def _to_h2(self) -> None:
        transport, seen = self.transport, bytes(self.buf)
        assert transport is not None
        self.transport, self.buf = None, bytearray()
        h2 = H2Protocol(self.state)
        transport.set_protocol(h2)
        h2.connection_made(transport)
        h2.data_received(seen)

    def _next(self) -> None:
        while self.current is None and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            fields = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            length = int(fields.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            raw = bytes(self.buf[end + 4: end + 4 + length])
            del self.buf[: end + 4 + length]
            method, path, _ = head[0].split(" ", 2)
            self._handle(0, method, path, raw)

    def _reply(self, sid: int, status: int, body: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (status, REASONS.get(status, b"Error"), len(body),
                                b"Connection: close\r\n" if close else b"", body))
        if close:
            self.transport.close()

    def _send(self, stream: Stream, data: bytes, first: bool, end: bool) -> None:
        transport = self.transport
        assert transport is not None
        if first:
            transport.write(SSE_HEAD)
        transport.write(chunked(data) + b"0\r\n\r\n" if end else chunked(data))

    def _begin(self, stream: Stream) -> None:
        self.current = stream

    def _finished(self, stream: Stream) -> None:
        self.current = None
        self._next()


SSE_HEADERS = ((b":status", b"200"), (b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-request-id", b"req_paced"))


class H2Protocol(Pacing):
    """HTTP/2 (h2c with prior knowledge): each request stream answered as an HTTP/1.1 request
    is, each SSE piece a DATA frame. What a stream's or the connection's send window cannot
    take yet waits in `pending` until the client's WINDOW_UPDATE. What data_received produces
    goes out in one write at its end; what the timers' callbacks produce, in one write at the
    end of the loop's turn (`_soon`)."""

    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.max_streams = state.h2_max_streams
        conn = H2Connection(config=H2_CONFIG)
        initial = {SettingCodes.INITIAL_WINDOW_SIZE: H2_STREAM_WINDOW,
                   SettingCodes.MAX_HEADER_LIST_SIZE: conn.local_settings.max_header_list_size}
        conn.local_settings = Settings(client=False, initial_values={
            **initial, SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.initiate_connection()  # the SETTINGS frame advertises the limit...
        # ...which this protocol enforces itself, refusing the streams past it (RFC 9113 5.1.2):
        # h2 would end the whole connection instead, e.g. when a client opens streams before
        # our SETTINGS reach it.
        conn.local_settings = Settings(client=False, initial_values=initial)
        conn.increment_flow_control_window(H2_CONNECTION_WINDOW - 65535)
        self.conn = conn
        self.requests: dict[int, tuple[str, str, bytearray]] = {}  # being received: method, path, body
        self.streams: dict[int, Stream] = {}  # being answered
        self.pending: dict[int, list[Any]] = {}  # [bytes waiting for a window, whether they end the stream]
        self.live: set[int] = set()  # the streams that count against max_streams
        self.batch = False  # inside data_received: write once at its end
        self.flush_due = False  # a write at the end of this turn of the loop is scheduled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._drop_all()

    def _drop_all(self) -> None:
        for stream in self.streams.values():
            self._lost(stream)
        self.streams.clear()
        self.requests.clear()
        self.pending.clear()
        self.live.clear()

    def _abort(self) -> None:
        transport = self.transport
        self.transport = None
        self._drop_all()
        if transport is not None:
            transport.close()

    def _write(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _soon(self) -> None:
        """Writes what this turn of the loop's callbacks produce in one go, at its end: streams
        that started together tick together, and a write (a system call) per DATA frame would
        cost more than the rest of a tick."""
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        self._write()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except ProtocolError:
            self._write()  # h2's GOAWAY
            self._abort()
            return
        gone = False
        self.batch = True
        try:
            for ev in events:
                kind = type(ev)
                if kind is DataReceived:
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    req = self.requests.get(ev.stream_id)
                    if req is not None:
                        req[2].extend(ev.data)
                        if len(req[2]) > MAX_BODY:
                            self._too_large(ev.stream_id)
                elif kind is RequestReceived:
                    self._request(ev.stream_id, ev.headers)
                elif kind is StreamEnded:
                    req = self.requests.pop(ev.stream_id, None)
                    if req is not None:
                        self._handle(ev.stream_id, req[0], req[1], bytes(req[2]))
                elif kind is StreamReset:
                    self._reset(ev.stream_id)
                elif kind is WindowUpdated:
                    if not ev.stream_id:
                        for sid in list(self.pending):
                            self._drain(sid)
                    elif ev.stream_id in self.pending:
                        self._drain(ev.stream_id)
                elif kind is RemoteSettingsChanged:
                    if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings or \
                            SettingCodes.MAX_FRAME_SIZE in ev.changed_settings:
                        for sid in list(self.pending):
                            self._drain(sid)
                elif kind is ConnectionTerminated:  # the client's GOAWAY: h2 sends nothing more
                    gone = True
                    break
        finally:
            self.batch = False
        self._write()
        if gone:
            self._abort()

    def _request(self, sid: int, headers: Any) -> None:
        if len(self.live) >= self.max_streams:
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        method = path = ""
        for name, value in headers:
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
        self.live.add(sid)
        self.requests[sid] = (method, path, bytearray())

    def _too_large(self, sid: int) -> None:
        """Answers 413 before the request ends, and asks the client to stop sending it."""
        del self.requests[sid]
        self._reply(sid, 413, b'{"error": {"message": "body too large"}}')
        if sid not in self.pending:
            self.conn.reset_stream(sid, ErrorCodes.NO_ERROR)

    def _reset(self, sid: int) -> None:
        self.requests.pop(sid, None)
        self.pending.pop(sid, None)
        self.live.discard(sid)
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._lost(stream)

    def _reply(self, sid: int, status: int, body: bytes) -> None:
        if self.transport is None:
            return
        self.conn.send_headers(sid, ((b":status", b"%d" % status), (b"content-type", b"application/json"),
                                     (b"content-length", b"%d" % len(body))))
        self._data(sid, body, True)
        if not self.batch:
            self._soon()

    def _send(self, stream: Stream, data: bytes, first: bool, end: bool) -> None:
        if first:
            self.conn.send_headers(stream.sid, SSE_HEADERS)
        self._data(stream.sid, data, end)
        if not self.batch:
            self._soon()

    def _data(self, sid: int, data: bytes, end: bool) -> None:
        held = self.pending.get(sid)
        if held is not None:
            held[0] += data
            held[1] = end
            return
        try:
            self.conn.send_data(sid, data, end_stream=end)
        except (FlowControlError, FrameTooLargeError):  # raised before h2 changes anything
            self.pending[sid] = [bytearray(data), end]
            self._drain(sid)
            return
        if end:
            self.live.discard(sid)

    def _drain(self, sid: int) -> None:
        """Sends what the windows allow of a stream's pending bytes."""
        buf, end = self.pending[sid]
        conn = self.conn
        while True:
            size = len(buf)
            n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if size <= n or not size:  # all of it (an empty end takes no window)
                del self.pending[sid]
                if size or end:
                    conn.send_data(sid, bytes(buf), end_stream=end)
                if end:
                    self.live.discard(sid)
                return
            if n <= 0:
                return
            conn.send_data(sid, bytes(buf[:n]))
            del buf[:n]

    def _begin(self, stream: Stream) -> None:
        self.streams[stream.sid] = stream

    def _finished(self, stream: Stream) -> None:
        del self.streams[stream.sid]


async def serve(host: str, port: int, h2_max_streams: int = H2_MAX_STREAMS) -> None:
    state = State(h2_max_streams)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(state), host, port, backlog=8192)
    bound = server.sockets[0].getsockname()[1]
    gc.freeze()  # what startup allocated is never collected; keeps collections short under load
    print(f"paced upstream listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(f"paced upstream: {state.stats}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--h2-max-streams", type=int, default=H2_MAX_STREAMS,
                   help="concurrent streams an HTTP/2 connection may have (SETTINGS_MAX_CONCURRENT_STREAMS; "
                        f"default {H2_MAX_STREAMS}, about what big providers' HTTP/2 front ends allow)")
    a = p.parse_args()
    if a.h2_max_streams < 1:
        p.error("--h2-max-streams must be at least 1")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per HTTP/1.1 stream
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(a.host, a.port, a.h2_max_streams))
    else:
        uvloop.run(serve(a.host, a.port, a.h2_max_streams))


if __name__ == "__main__":
    main()
