"""bench/paced_upstream.py speaks HTTP/2 with prior knowledge (h2c) and HTTP/1.1 on one port:
the script runs as bench/streams.py runs it, and a small blocking h2 client (the h2 library
over a socket) asks it for whole answers and paced streams, many streams on one connection up
to the advertised SETTINGS_MAX_CONCURRENT_STREAMS, releases held streams, resets one, drops a
connection, and reads the counters at GET /_paced/stats. Nothing here judges speed: time is
only checked as a lower bound the absolute schedule guarantees."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import TooManyStreamsError
from h2.settings import SettingCodes, Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "paced_upstream.py"
CHAT = "/v1/chat/completions"
# The script as bench/streams.py runs it, or on asyncio's own loop (uvloop made unimportable).
ASYNCIO = ("import runpy, sys; sys.modules['uvloop'] = None; sys.argv = sys.argv[1:]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


class Upstream:
    def __init__(self, loop: str = "uvloop", *args: str) -> None:
        cmd = [sys.executable, str(SCRIPT), "--port", "0", *args]
        if loop == "asyncio":
            cmd = [sys.executable, "-c", ASYNCIO, *cmd[1:]]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on " in line, line + self.proc.stderr.read() if self.proc.stderr else line
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> str:
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        assert "Traceback" not in err, err
        return out

    def http1(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request on a new connection: status, headers, body (de-chunked)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                      % (method.encode(), path.encode(), len(body), body))
            return read_http1(s)

    def stats(self) -> dict[str, int]:
        status, _, body = self.http1("GET", "/_paced/stats")
        assert status == 200
        return json.loads(body)

    def wait_stats(self, want: dict[str, int]) -> dict[str, int]:
        deadline = time.monotonic() + 30
        while True:
            stats = self.stats()
            if all(stats[k] == v for k, v in want.items()) or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)


def read_http1(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += recv(s)
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if fields.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += recv(s)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += recv(s)
            body, rest = body + rest[:size], rest[size + 2:]
            if size == 0:
                return status, fields, body
    length = int(fields["content-length"])
    while len(rest) < length:
        rest += recv(s)
    return status, fields, rest[:length]


def recv(s: socket.socket) -> bytes:
    data = s.recv(65536)
    if not data:
        raise ConnectionError("the upstream closed the connection")
    return data


class H2Client:
    """Blocking, single-connection: request() opens a stream, pump() reads and records what
    came back, each DATA frame apart."""

    def __init__(self, port: int, window: int | None = None, wait_settings: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        if window is not None:  # before initiate_connection, as what it advertises
            self.conn.local_settings = Settings(client=True, initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: window, SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        self.conn.initiate_connection()
        self.headers: dict[int, dict[str, str]] = {}
        self.frames: dict[int, list[tuple[float, bytes, bool]]] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.sent_at: dict[int, float] = {}
        self.settings = False
        self.flush()
        if wait_settings:
            self.until(lambda: self.settings)

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(self, method: str, path: str, body: dict | bytes | None = None, flush: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "127.0.0.1")]
        if raw is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(raw)))]
        self.conn.send_headers(sid, headers, end_stream=raw is None)
        self.frames[sid] = []
        self.sent_at[sid] = time.monotonic()
        if raw is not None:
            self.send_body(sid, raw)
        if flush:
            self.flush()
        return sid

    def send_body(self, sid: int, raw: bytes) -> None:
        """As much as the windows allow at a time, reading WINDOW_UPDATEs in between."""
        view = memoryview(raw)
        while True:
            n = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n == len(view):
                self.conn.send_data(sid, view.tobytes(), end_stream=True)
                return
            if n:
                self.conn.send_data(sid, view[:n].tobytes())
                view = view[n:]
            else:
                self.flush()
                self.pump()

    def pump(self) -> None:
        now = time.monotonic()
        for ev in self.conn.receive_data(recv(self.sock)):
            if isinstance(ev, ResponseReceived):
                self.headers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, DataReceived):
                self.frames[ev.stream_id].append((now, ev.data, ev.stream_ended is not None))
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, RemoteSettingsChanged):
                self.settings = True
        self.flush()

    def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.pump()

    def body(self, sid: int) -> bytes:
        return b"".join(data for _, data, _ in self.frames[sid])

    def json(self, method: str, path: str, body: dict | bytes | None = None) -> tuple[int, dict]:
        sid = self.request(method, path, body)
        self.until(lambda: sid in self.ended)
        return int(self.headers[sid][":status"]), json.loads(self.body(sid))


def events(raw: bytes) -> list[str]:
    """An SSE body's data lines."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    return [e.removeprefix(b"data: ").decode() for e in raw[:-2].split(b"\n\n")]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        if up.proc.poll() is None:
            up.stop()


def completion(stream: bool = False, **extra: object) -> dict:
    return {"model": "paced-test", "messages": [{"role": "user", "content": "hello"}], "stream": stream, **extra}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_h2_and_http1_on_one_port(loop: str) -> None:
    """Both protocols on one port, told apart by the first bytes even when they come a few at a
    time; the same routes and errors on both; on uvloop and on asyncio's own loop."""
    up = Upstream(loop)
    try:
        client = H2Client(up.port)
        assert client.conn.remote_settings.max_concurrent_streams == 256
        assert client.conn.remote_settings.initial_window_size >= 1 << 20
        status, answer = client.json("POST", "/_sim/output_tokens=3" + CHAT, completion())
        assert status == 200 and answer["object"] == "chat.completion", answer
        assert answer["choices"][0]["message"]["content"] == " word0 word1 word2"
        assert answer["usage"]["completion_tokens"] == 3 and answer["choices"][0]["finish_reason"] == "stop"
        sid = client.request("POST", "/_sim/tokens_per_s=0,output_tokens=2/s" + CHAT, completion(stream=True))
        client.until(lambda: sid in client.ended)
        assert client.headers[sid]["content-type"] == "text/event-stream; charset=utf-8"
        assert events(client.body(sid))[-1] == "[DONE]"
        # Refused like HTTP/1.1 refuses them, the connection still fine.
        status, answer = client.json("POST", "/_sim/temperature=2" + CHAT, completion())
        assert status == 400 and "unsupported control" in answer["error"]["message"]
        assert client.json("GET", CHAT)[0] == 404
        assert client.json("POST", CHAT, b"not json")[0] == 400
        client.close()

        status, fields, body = up.http1("POST", "/_sim/output_tokens=2" + CHAT, json.dumps(completion()).encode())
        assert status == 200 and fields["content-type"] == "application/json"
        assert json.loads(body)["choices"][0]["message"]["content"] == " word0 word1"
        status, fields, body = up.http1("POST", "/_sim/output_tokens=2" + CHAT, json.dumps(completion(True)).encode())
        assert status == 200 and fields["content-type"] == "text/event-stream; charset=utf-8"
        assert events(body)[-1] == "[DONE]"
        assert up.http1("POST", "/_sim/temperature=2" + CHAT, b"{}")[0] == 400

        # "P" could still be "PRI * HTTP/2.0...", so HTTP/1.1 waits for a byte more; a preface
        # that comes in pieces is still HTTP/2.
        with socket.create_connection(("127.0.0.1", up.port), timeout=30) as s:
            request = b"POST /_sim/output_tokens=1%s HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}" % CHAT.encode()
            for piece in (request[:1], request[1:2], request[2:]):
                s.sendall(piece)
                time.sleep(0.05)
            status, _, body = read_http1(s)
            assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == " word0"
        with socket.create_connection(("127.0.0.1", up.port), timeout=30) as s:
            conn = H2Connection(H2Configuration(client_side=True))
            conn.initiate_connection()
            out = conn.data_to_send()
            for piece in (out[:5], out[5:20], out[20:]):
                s.sendall(piece)
                time.sleep(0.05)
            assert any(isinstance(ev, RemoteSettingsChanged) for ev in conn.receive_data(recv(s)))

        assert up.stats() == {"requests": 9, "active": 0, "completed": 5, "disconnected": 0}
        assert "'requests': 9" in up.stop()  # what it prints when it stops
    finally:
        if up.proc.poll() is None:
            up.stop()


def test_h2_stream_is_paced_in_data_frames(upstream: Upstream) -> None:
    """One DATA frame per token on the absolute schedule: the role chunk with the first token,
    the last token with the finish chunk, the usage chunk and [DONE], and END_STREAM."""
    client = H2Client(upstream.port)
    sid = client.request("POST", "/_sim/tokens_per_s=50,output_tokens=5" + CHAT,
                         completion(stream=True, stream_options={"include_usage": True}))
    client.until(lambda: sid in client.ended)
    headers = client.headers[sid]
    assert headers[":status"] == "200" and headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["x-request-id"] == "req_paced"
    frames = client.frames[sid]
    assert len(frames) == 5, [data for _, data, _ in frames]
    assert [end for _, _, end in frames] == [False] * 4 + [True]
    # The 5th token is due 4 intervals (80 ms) after the stream started, never sooner.
    assert frames[-1][0] - client.sent_at[sid] >= 0.06
    chunks = [json.loads(e) for e in events(client.body(sid))[:-1]]
    assert events(client.body(sid))[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == " word0 word1 word2 word3 word4"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    for k, (_, data, _) in enumerate(frames):
        assert b'"content": " word%d"' % k in data  # each token in a frame of its own
    client.close()


def test_h2_max_concurrent_streams(upstream: Upstream) -> None:
    """256 streams at once on one connection, held together until released, all complete; the
    257th is over the advertised limit (h2 itself will not open it)."""
    client = H2Client(upstream.port)
    assert client.conn.remote_settings.max_concurrent_streams == 256
    body = completion(stream=True, max_tokens=16384)
    sids = [client.request("POST", "/_sim/tokens_per_s=20,until_released=1" + CHAT, body, flush=False)
            for _ in range(256)]
    with pytest.raises(TooManyStreamsError):
        client.request("POST", "/_sim/tokens_per_s=20,until_released=1" + CHAT, body)
    client.flush()
    client.until(lambda: all(client.frames[sid] for sid in sids))  # every one has begun
    assert client.ended.isdisjoint(sids)
    assert upstream.stats()["active"] == 256
    status, _, raw = upstream.http1("POST", "/_paced/release", b'{"after_s": 0, "spread_s": 0}')
    assert status == 200 and json.loads(raw)["active"] == 256
    client.until(lambda: client.ended.issuperset(sids))
    for sid in sids:
        assert events(client.body(sid))[-1] == "[DONE]" and client.frames[sid][-1][2] is True
    assert upstream.stats() == {"requests": 257, "active": 0, "completed": 256, "disconnected": 0}
    client.close()


def test_h2_streams_past_the_limit_are_refused(upstream: Upstream) -> None:
    """A client that opens streams before the server's SETTINGS reach it gets the ones past the
    limit refused (RST_STREAM REFUSED_STREAM, safe to retry), not its connection closed."""
    client = H2Client(upstream.port, wait_settings=False)
    body = completion(stream=True)
    # A second or more each, so none ends before the last of the 300 has been read.
    sids = [client.request("POST", "/_sim/tokens_per_s=1,output_tokens=2" + CHAT, body, flush=False)
            for _ in range(300)]
    client.flush()
    client.until(lambda: len(client.ended) + len(client.resets) == 300)
    assert set(client.resets.values()) == {ErrorCodes.REFUSED_STREAM} and len(client.resets) == 300 - 256
    assert all(events(client.body(sid))[-1] == "[DONE]" for sid in sids if sid in client.ended)
    assert client.json("POST", "/_sim/output_tokens=1" + CHAT, completion())[0] == 200  # the connection lives on
    client.close()


def test_h2_until_released(upstream: Upstream) -> None:
    """A held stream goes on past output_tokens until POST /_paced/release (here over HTTP/2 too)."""
    client = H2Client(upstream.port)
    sid = client.request("POST", "/_sim/tokens_per_s=50,output_tokens=2,until_released=1" + CHAT,
                         completion(stream=True))
    client.until(lambda: len(client.frames[sid]) >= 5)
    assert sid not in client.ended
    status, answer = client.json("POST", "/_paced/release", {"after_s": 0, "spread_s": 0})
    assert status == 200 and answer["active"] == 1
    client.until(lambda: sid in client.ended)
    chunks = [json.loads(e) for e in events(client.body(sid))[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) >= 5
    client.close()


def test_h2_reset_and_lost_connection_are_disconnects(upstream: Upstream) -> None:
    """A client's RST_STREAM ends that stream's timer and counts as disconnected, the others on
    the connection go on; a connection that goes away does that for all its streams."""
    client = H2Client(upstream.port)
    path = "/_sim/tokens_per_s=50,until_released=1" + CHAT
    first, second = (client.request("POST", path, completion(stream=True)) for _ in range(2))
    client.until(lambda: bool(client.frames[first] and client.frames[second]))
    client.conn.reset_stream(first, ErrorCodes.CANCEL)
    client.flush()
    stats = upstream.wait_stats({"disconnected": 1})
    assert stats == {"requests": 2, "active": 1, "completed": 0, "disconnected": 1}
    seen = len(client.frames[second])
    client.until(lambda: len(client.frames[second]) > seen + 2)  # the other stream still ticks
    status, answer = client.json("GET", "/_paced/stats")
    assert status == 200 and answer["disconnected"] == 1 and answer["active"] == 1

    other = H2Client(upstream.port)
    for _ in range(3):
        other.request("POST", path, completion(stream=True))
    other.until(lambda: all(other.frames.values()))
    assert upstream.stats()["active"] == 4
    other.close()
    stats = upstream.wait_stats({"disconnected": 4})
    assert stats == {"requests": 5, "active": 1, "completed": 0, "disconnected": 4}
    client.close()
    assert upstream.wait_stats({"disconnected": 5})["active"] == 0


def test_h2_flow_control_and_big_bodies(upstream: Upstream) -> None:
    """With a stream window smaller than a chunk, the bytes wait for the client's WINDOW_UPDATEs
    and arrive whole, in order; a request body far over the default windows is read (its
    DATA acknowledged as it comes); an answer bigger than a frame comes in several."""
    client = H2Client(upstream.port, window=100)
    sid = client.request("POST", "/_sim/tokens_per_s=0,output_tokens=40" + CHAT,
                         completion(stream=True, stream_options={"include_usage": True}))
    client.until(lambda: sid in client.ended)
    assert all(len(data) <= 100 for _, data, _ in client.frames[sid])
    chunks = [json.loads(e) for e in events(client.body(sid))[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(f" word{k}" for k in range(40)) and chunks[-1]["usage"]["completion_tokens"] == 40
    client.close()

    client = H2Client(upstream.port)
    big = completion(messages=[{"role": "user", "content": "x" * (3 << 20)}], max_tokens=5000)
    status, answer = client.json("POST", "/_sim/output_tokens=5000" + CHAT, big)
    assert status == 200 and answer["usage"]["prompt_tokens"] > 3 << 18
    assert len(client.frames[max(client.frames)]) > 1  # ~45 KB of JSON: more than one 16 KB frame
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == 5000
    client.close()


def test_h2_max_streams_flag() -> None:
    """--h2-max-streams sets what SETTINGS advertises and what a connection may have at once."""
    up = Upstream("uvloop", "--h2-max-streams", "3")
    try:
        client = H2Client(up.port)
        assert client.conn.remote_settings.max_concurrent_streams == 3
        sids = [client.request("POST", "/_sim/tokens_per_s=50,output_tokens=3" + CHAT, completion(stream=True))
                for _ in range(3)]
        with pytest.raises(TooManyStreamsError):
            client.request("POST", CHAT, completion())
        client.until(lambda: client.ended.issuperset(sids))
        assert client.json("POST", "/_sim/output_tokens=1" + CHAT, completion())[0] == 200  # room again
        client.close()
    finally:
        up.stop()
