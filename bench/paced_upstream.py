"""A paced OpenAI-compatible streaming upstream for bench/streams.py: tokens on an absolute
schedule (no drift), streams held open until released (so 10,000 can be open together for
exactly as long as wanted), and the path the floor proxy's streaming route forwards to.

    python bench/paced_upstream.py --port 0     # prints "paced upstream listening on http://..."

Standard library plus uvloop when installed. It answers POST `[/_sim/{controls}]/v1/chat/completions`
(and `.../s/v1/chat/completions`, where bench/floor_proxy.py's streaming route forwards) with the
simulator's URL controls that pace a stream (the others are refused):
`ttft_ms` (wait before the first chunk), `tokens_per_s` (0: all at once) and `output_tokens`
(default 16, capped by max_tokens / max_completion_tokens), plus one of its own:
`until_released=1` makes output_tokens a minimum: the stream goes on, a token at a time,
until `POST /_paced/release {"after_s": S, "spread_s": D}` has been called and S seconds
plus the stream's share of D have passed (or max_tokens is reached): the streams end spread
evenly over D seconds, in the order they started. bench/streams.py uses it to hold every
stream open until all are open, then for exactly the time it wants.

The stream is OpenAI's: a role chunk, then one chunk per token (the first with the role
chunk, at once after ttft_ms; then one every 1/tokens_per_s, on an absolute schedule so
delays do not add up), a finish chunk, the usage chunk when `stream_options.include_usage`
is set, and `data: [DONE]`. Each chunk has the fields a real one has. Without
`"stream": true` it answers the whole completion as JSON. HTTP/1.1 with keep-alive; one
request at a time per connection. Each stream is a chain of timer callbacks on the event
loop, not a task.
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

MAX_BODY = 16 * 1024 * 1024
PACING = {"ttft_ms": int, "tokens_per_s": float, "output_tokens": int, "until_released": int}
FLOOR_STREAM_PATH = "/s/v1/chat/completions"  # where bench/floor_proxy.py's streaming route forwards to


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
    """One answer: how many tokens it sends and its chunks, pre-encoded."""

    def __init__(self, body: dict[str, Any], ctl: dict[str, Any]) -> None:
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        self.cap = cap if isinstance(cap, int) and cap > 0 else 1 << 30
        self.want = ctl.get("output_tokens", 16)
        self.until_released = bool(ctl.get("until_released"))
        self.seq = 0  # the order it started in, for its share of the release spread
        self.sent = 0
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
        return f" word{k}"

    def chunk(self, delta: str, finish: str | None = None) -> bytes:
        end = ', "logprobs": null, "finish_reason": ' + json.dumps(finish) + "}]"
        return self._head + delta.encode() + end.encode() + self._tail

    def opening(self) -> bytes:
        return self.chunk('{"role": "assistant", "content": "", "refusal": null}')

    def content(self, k: int) -> bytes:
        return self.chunk(json.dumps({"content": self.token(k)}))

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
    """What every connection shares: counters, and when the until_released streams end:
    from `release_at` (loop.time(); None until POST /_paced/release) over `spread_s`
    seconds, the stream that started k-th of `released_of` at k/released_of of the way."""

    def __init__(self) -> None:
        self.stats = {"requests": 0, "active": 0, "completed": 0, "disconnected": 0}
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


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nx-request-id: req_paced\r\n\r\n")


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Connection(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.stats = state.stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a response is being sent; requests wait in buf
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.stats["disconnected"] += 1
            self.stats["active"] -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_BODY + 65536:
            self._reply(413, b'{"error": {"message": "body too large"}}', close=True)
            return
        self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
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
            self._handle(method, path, raw)

    def _reply(self, status: int, body: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}.get(status, "Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (status, reason.encode(), len(body), b"Connection: close\r\n" if close else b"", body))
        if close:
            self.transport.close()

    def _handle(self, method: str, path: str, raw: bytes) -> None:
        self.stats["requests"] += 1
        try:
            if method == "POST" and path == "/_paced/release":
                asked = json.loads(raw or b"{}")
                after, spread = float(asked.get("after_s", 0)), float(asked.get("spread_s", 0))
                self.state.release(asyncio.get_running_loop().time(), after, spread)
                self._reply(200, json.dumps({"released_in_s": after, "spread_s": spread,
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
            self._reply(r.status, json.dumps({"error": {"message": str(r), "type": "invalid_request_error"}}).encode())
            return
        stream = Stream(body, ctl)
        if stream.until_released:
            stream.seq = self.state.streams_started
            self.state.streams_started += 1
        self.busy = True
        self.stats["active"] += 1
        loop = asyncio.get_running_loop()
        ttft = ctl.get("ttft_ms", 0) / 1000
        if body.get("stream") is not True:
            pace = ctl.get("tokens_per_s", 0.0)
            delay = ttft + (min(stream.want, stream.cap) / pace if pace else 0.0)
            self.timer = loop.call_later(delay, self._whole, stream)
            return
        interval = 1.0 / ctl["tokens_per_s"] if ctl.get("tokens_per_s") else 0.0
        self.timer = loop.call_later(ttft, self._tick, stream, 0, interval, loop.time() + ttft)

    def _whole(self, stream: Stream) -> None:
        self.timer = None
        self._done()
        self._reply(200, stream.whole())
        self._next()

    def _tick(self, stream: Stream, k: int, interval: float, start: float) -> None:
        """Send token k (after the role chunk when k is 0), then schedule k+1, or end."""
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        out = b""
        if k == 0:
            transport.write(SSE_HEAD)
            out = stream.opening()
        if not stream.ends(k, self.state, now):
            out += stream.content(k)
            k += 1
        stream.sent = k
        if stream.ends(k, self.state, now):
            # A fixed-length stream's last token goes with its end; a released one ends at the
            # first tick after its release, with no token.
            transport.write(chunked(out + stream.closing()) + b"0\r\n\r\n")
            self._done()
            self._next()
            return
        transport.write(chunked(out))
        if interval:
            self.timer = loop.call_at(start + k * interval, self._tick, stream, k, interval, start)
        else:
            self.timer = loop.call_soon(self._tick, stream, k, interval, start)  # type: ignore[assignment]

    def _done(self) -> None:
        self.busy = False
        self.stats["active"] -= 1
        self.stats["completed"] += 1


async def serve(host: str, port: int) -> None:
    state = State()
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
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per open stream
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(a.host, a.port))
    else:
        uvloop.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
