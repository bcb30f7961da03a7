"""Streaming scenarios of issue 7: time to first token through the gateway, and many
concurrent long streams held by one gateway process.

    .venv/bin/python bench/streams.py                 # 10,000 streams for 60 s; TTFT at 1 and 8 clients
    .venv/bin/python bench/streams.py --smoke         # 200 streams for 3 s; a few TTFT requests
    .venv/bin/python bench/streams.py --streams 2000 --seconds 20 --ttft-requests 0

Starts, on loopback, under a temporary FAREBOX_HOME: an upstream (bench/paced_upstream.py, or
`farebox sim` with --upstream sim), the floor proxy in front of it (TTFT only) and `farebox
serve` with a catalog of two models whose provider base URLs carry the pacing:

* `streams/ttft`: the upstream waits --ttft-ms (200) before its first token. The client
  (bench/sse_client.py, raw sockets) measures from sending a request to receiving the first
  content chunk, in turn directly against the upstream, through the floor and through the
  gateway, at each --ttft-concurrency.
* `streams/slow`: one token a second. --streams of them are opened at --ramp-rate a second
  (at most --max-pending waiting for their first event); the paced upstream keeps them all
  going until every one is open, then (POST /_paced/release) holds them together for
  --seconds and ends them over --end-spread seconds. Each must end with usage in the final
  chunk and `data: [DONE]`. The gateway's resident memory (VmRSS each second, VmHWM at the
  end), descriptors and CPU are sampled throughout.

Then the gateway's ledger must verify, and its database must hold exactly one completed
generation per completed stream. Prints a table, writes JSON (--out). Exit status: 0 all
good; 1 any request or stream failed, not all streams were open at once, the ledger did not
verify or a generation is missing; 2 a server could not start. Needs the repository's .venv (orjson, uvloop). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # the .venv's: this script runs there
from sse_client import Exchange, SseConnection, connect, request_bytes

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BIN = Path(sys.executable).parent  # the .venv this runs in: farebox is installed beside python
HOST = "127.0.0.1"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
MESSAGES = [{"role": "user", "content": "Say hello"}]
# Priced like gpt-4o-mini, as bench/run's models.
PROMPT_PRICE_NANOS, COMPLETION_PRICE_NANOS = 150, 600
RSS_TARGET_KB = 1 << 20  # issue 7: at most 1 GiB resident with 10,000 streams open
TTFT_ADDED_TARGET_US = 500  # issue 7: at most 0.5 ms added to the first token at p50

CATALOG = """\
# Written by bench/streams.py: one paced upstream as two providers, its pacing in the URL.
[providers.paced-ttft]
name = "Paced upstream: first token after {ttft_ms} ms"
dialect = "openai"
base_url = "{ttft_base}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[providers.paced-slow]
name = "Paced upstream: one token a second"
dialect = "openai"
base_url = "{slow_base}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false
http2 = {slow_http2}

[[models]]
id = "streams/ttft"
name = "Streams: slow first token"
context_length = 128000

  [[models.endpoints]]
  provider = "paced-ttft"
  model = "sim-small"
  max_completion_tokens = 16384
  supported_parameters = ["max_tokens", "temperature"]
  [models.endpoints.pricing]
  prompt = "0.00000015"
  completion = "0.0000006"

[[models]]
id = "streams/slow"
name = "Streams: one token a second"
context_length = 128000

  [[models.endpoints]]
  provider = "paced-slow"
  model = "sim-small"
  max_completion_tokens = 16384
  supported_parameters = ["max_tokens", "temperature"]
  [models.endpoints.pricing]
  prompt = "0.00000015"
  completion = "0.0000006"
"""


class Failure(Exception):
    """A server could not start or be set up (exit 2)."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


# -- processes ------------------------------------------------------------------------------

class Procs:
    """The servers this script starts, each in its own session, stopped in reverse order:
    SIGTERM to the process group, SIGKILL after a grace."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str],
              cwd: Path | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.running.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for name, proc in reversed(self.running):
            try:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(5)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired) as e:
                print(f"streams: could not stop {name} (pid {proc.pid}): {e}", file=sys.stderr)
        self.running.clear()


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_line(name: str, proc: subprocess.Popen, log: Path, marker: str, timeout: float = 60.0) -> str:
    """The URL a server prints once it listens (`... on http://host:port`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line.split(marker, 1)[1].split()[0]
        if proc.poll() is not None:
            raise Failure(f"{name} exited with status {proc.returncode}; its log:\n{tail(log)}")
        time.sleep(0.05)
    raise Failure(f"{name} did not start within {timeout:.0f} s; its log:\n{tail(log)}")


def http(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with NO_PROXY.open(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raise_fd_limit(want: int) -> int:
    """Lift this process's open-files limit (inherited by the servers it starts) to `want`:
    the hard limit too when privileged (root), else the soft limit to the hard. Returns the
    soft limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            pass  # only a privileged process may raise its hard limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- /proc -----------------------------------------------------------------------------------

def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def self_ticks() -> int:
    t = os.times()
    return round((t.user + t.system) * TICK)


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of each process onto `cpus` (a process's affinity is per thread, and the
    gateway's writer thread already runs)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except (ProcessLookupError, FileNotFoundError):
                pass  # a thread that has just ended


def pin_for_ttft(servers: list[int], others: list[int]) -> tuple[str, Callable[[], None]]:
    """The servers under test (the gateway, the floor) on the first CPU this script may use,
    the client (this process) and the upstream on the rest; returns what was done and how to
    undo it. Unpinned, this VM's scheduler often wakes the client or the upstream on the CPU
    the server is still running on, so its first write waits for the server's next sleep
    (the rest of the upstream's read, the settlement) rather than for the bytes: that
    measures the scheduler, not what the server adds. Pinning is the usual way to keep a
    load generator off the server under test; the unpinned figure is kept by --no-pin."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)", lambda: None
    everything = set(cpus)
    pin(servers, {cpus[0]})
    pin(others + [os.getpid()], set(cpus[1:]))

    def undo() -> None:
        pin(servers + others + [os.getpid()], everything)
    rest = f"{cpus[1]}" if len(cpus) == 2 else f"{cpus[1]}-{cpus[-1]}"
    return f"servers under test pinned to CPU {cpus[0]}, client and upstream to CPU {rest}", undo


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak resident) and open descriptors of a process, in kB / count."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# -- the scenarios -------------------------------------------------------------------------------

class Target:
    """Where one path's requests go: a host, a port, a path and the body and headers to send."""

    def __init__(self, name: str, url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        host_port = url.split("://", 1)[1].split("/", 1)[0]
        self.name = name
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.raw = request_bytes(self.host, self.port, path, orjson.dumps(body), headers)


async def ttft_run(targets: list[Target], conns: int, per_path: int, warmup: int) -> dict[str, Any]:
    """`per_path` requests to each target from `conns` concurrent clients, in turn: request i
    goes to targets[i % len(targets)], so every path sees the same machine at the same time.
    Each client keeps one keep-alive connection per target. targets[0] is the upstream
    itself: the others' rows get the time they add to it."""
    results: dict[str, list[Exchange]] = {t.name: [] for t in targets}
    jobs = iter(range(len(targets) * (per_path + warmup)))

    async def client() -> None:
        conns_by_target: dict[str, SseConnection] = {}
        try:
            for i in jobs:
                target = targets[i % len(targets)]
                conn = conns_by_target.get(target.name)
                if conn is None or conn.closed:
                    conn = conns_by_target[target.name] = await connect(target.host, target.port)
                answer = conn.request(target.raw)
                try:
                    ex = await asyncio.wait_for(asyncio.shield(answer), 60)
                except TimeoutError:
                    conn.abort("timeout: the response did not end within 60 s")
                    ex = await answer
                if not ex.keep_alive:
                    conn.close()
                if i >= len(targets) * warmup:
                    results[target.name].append(ex)
        finally:
            for conn in conns_by_target.values():
                conn.close()

    await asyncio.gather(*(client() for _ in range(conns)))
    rows: dict[str, Any] = {"connections": conns}
    for name, exchanges in results.items():
        ttft = [ex.first_token_at - ex.sent_at for ex in exchanges if ex.ok and ex.first_token_at is not None]
        errors = collections.Counter((ex.problem() or "no content token")[:120] for ex in exchanges
                                     if not ex.ok or ex.first_token_at is None)
        rows[name] = {"path": name, "connections": conns, "requests": len(exchanges), "ok": len(ttft),
                      "errors": sum(errors.values()), "error_kinds": dict(errors),
                      "p50_ms": ms(pct(ttft, 50)), "p90_ms": ms(pct(ttft, 90)), "p99_ms": ms(pct(ttft, 99)),
                      "max_ms": ms(max(ttft) if ttft else None), "min_ms": ms(min(ttft) if ttft else None)}
    base = rows[targets[0].name]
    for t in targets[1:]:
        row = rows[t.name]
        for key in ("p50", "p90", "p99"):
            ok = base[f"{key}_ms"] is not None and row[f"{key}_ms"] is not None
            row[f"added_{key}_ms"] = round(row[f"{key}_ms"] - base[f"{key}_ms"], 3) if ok else None
    return rows


def machine_busy_ticks() -> int:
    """CPU ticks the whole machine spent busy (user, nice, system, steal; interrupts left
    out, as bench/run does: they are mostly our own loopback traffic)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, f.readline().split()[1:9])
    return user + nice + system + steal


class Sampler:
    """Once a second: the gateway's RSS and descriptors; CPU ticks of the gateway, the
    upstream, this process (the client) and the whole machine; the stream counts."""

    def __init__(self, gw_pid: int, up_pid: int, counts: dict[str, int]) -> None:
        self.gw_pid, self.up_pid, self.counts = gw_pid, up_pid, counts
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()  # the scenario's start; sample times are relative to it

    def sample(self) -> dict[str, Any]:
        mem = memory_kb(self.gw_pid)
        row = {"t": round(time.perf_counter() - self.t0, 2), "rss_kb": mem.get("VmRSS"), "hwm_kb": mem.get("VmHWM"),
               "fds": mem.get("fds"), "gw_ticks": cpu_ticks(self.gw_pid), "up_ticks": cpu_ticks(self.up_pid),
               "client_ticks": self_ticks(), "busy_ticks": machine_busy_ticks(),
               "events": SseConnection.events_total, **self.counts}
        self.samples.append(row)
        return row

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    def cores(self, start: float, end: float) -> dict[str, float] | None:
        """Cores used between the first and last samples within [start, end] (seconds since
        t0): by the gateway, the upstream, the client, and `other`, the rest of the machine."""
        inside = [s for s in self.samples if start <= s["t"] <= end]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        span = (b["t"] - a["t"]) * TICK
        if span <= 0:
            return None
        used = {who: (b[f"{who}_ticks"] - a[f"{who}_ticks"]) / span for who in ("gw", "up", "client")}
        used["other"] = max(0.0, (b["busy_ticks"] - a["busy_ticks"]) / span - sum(used.values()))
        return {k: round(v, 3) for k, v in used.items()}


async def open_streams(target: Target, n: int, seconds: int, min_tokens: int, rate: float, max_pending: int,
                       sampler: Sampler, release: Callable[[], Awaitable[None]] | None) -> dict[str, Any]:
    """Open `n` streams at up to `rate` a second (at most `max_pending` waiting for their first
    event), hold them, and judge every one. With `release` (the paced upstream) the streams
    go on until every one is open, then `release()` ends them all `seconds` later; without,
    each ends on its own after `min_tokens` tokens, and all are open together only if the
    ramp was shorter than a stream."""
    counts = sampler.counts
    pending = asyncio.Semaphore(max_pending)
    exchanges: list[Exchange | None] = [None] * n
    conns: list[SseConnection | None] = [None] * n
    connect_errors: collections.Counter[str] = collections.Counter()
    t_start = sampler.t0 = time.perf_counter()

    def first_event(ex: Exchange) -> None:
        counts["open"] += 1
        counts["peak_open"] = max(counts["peak_open"], counts["open"])
        pending.release()

    async def one(i: int) -> None:
        try:
            conn = conns[i] = await connect(target.host, target.port, first_event)
        except OSError as e:
            connect_errors[f"connect: {type(e).__name__}: {e}"[:120]] += 1
            counts["ended"] += 1
            pending.release()
            return
        ex = await conn.request(target.raw)
        exchanges[i] = ex
        conn.close()
        if ex.first_event_at is None:
            pending.release()
        else:
            counts["open"] -= 1
        counts["ended"] += 1

    def progress(what: str) -> None:
        rss = (sampler.samples[-1]["rss_kb"] or 0) / 1024 if sampler.samples else 0
        say(f"streams:   t={time.perf_counter() - t_start:6.1f} s  {what:<22} open {counts['open']:,}  "
            f"ended {counts['ended']:,}  gateway RSS {rss:,.0f} MiB")

    tasks: list[asyncio.Future[None]] = []
    sampler_task = asyncio.get_running_loop().create_task(sampler.run())
    say(f"streams: opening {n:,} streams at up to {rate:,.0f}/s (at most {max_pending:,} waiting for their first "
        f"event), one token a second, " + (f"held {seconds} s once all are open" if release else
                                            f"{min_tokens} tokens each"))
    last_say = time.monotonic()
    all_open = released = None
    try:
        for i in range(n):
            delay = t_start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await pending.acquire()
            tasks.append(asyncio.ensure_future(one(i)))
            if time.monotonic() - last_say >= 5:
                last_say = time.monotonic()
                progress(f"{i + 1:,} started")
        launched = time.perf_counter()
        # Every stream open (or failed): the ramp is over.
        open_by = time.monotonic() + 120
        while counts["open"] + counts["ended"] < n and time.monotonic() < open_by:
            await asyncio.sleep(0.05)
            if time.monotonic() - last_say >= 5:
                last_say = time.monotonic()
                progress("waiting for the last")
        all_open = time.perf_counter()
        progress("all open" if counts["open"] + counts["ended"] >= n else "gave up waiting")
        if release is not None:
            await release()
            released = time.perf_counter()
        # Streams end `seconds` after the last opened (or after the release); give them as long again.
        end_by = time.monotonic() + seconds + max(30.0, seconds)
        waiting = set(tasks)
        while waiting and time.monotonic() < end_by:
            _, waiting = await asyncio.wait(waiting, timeout=min(5.0, max(0.01, end_by - time.monotonic())))
            progress("holding" if counts["ended"] == 0 else "ending")
        for i, conn in enumerate(conns):
            if conn is not None and exchanges[i] is None:
                conn.abort(f"timeout: not ended {seconds + max(30, seconds)} s after every stream was open")
        if waiting:
            await asyncio.wait(waiting, timeout=10)
    finally:
        sampler.sample()
        sampler_task.cancel()
        for task in tasks:
            task.cancel()
    t_end = time.perf_counter()

    done = [ex for ex in exchanges if ex is not None]
    problems: collections.Counter[str] = collections.Counter(connect_errors)
    completed = 0
    durations, ttfb, gaps, token_counts = [], [], [], []
    gap_ends: collections.Counter[int] = collections.Counter()  # second of the scenario each stream's longest gap ended
    for ex in done:
        problem = ex.problem()
        reported = (ex.usage or {}).get("completion_tokens")
        if problem is None and (ex.tokens < min_tokens or (release is None and ex.tokens != min_tokens)):
            problem = f"{ex.tokens} content chunks, expected {'at least ' if release else ''}{min_tokens}"
        if problem is None and reported != ex.tokens:
            problem = f"usage.completion_tokens {reported} for {ex.tokens} content chunks received"
        if problem is not None:
            problems[problem[:120]] += 1
            continue
        completed += 1
        assert ex.done_at is not None and ex.first_event_at is not None
        durations.append(ex.done_at - ex.sent_at)
        ttfb.append(ex.first_event_at - ex.sent_at)
        gaps.append(ex.max_gap)
        token_counts.append(ex.tokens)
        if ex.max_gap_end is not None:
            gap_ends[int(ex.max_gap_end - t_start)] += 1
    opened = sum(1 for ex in done if ex.first_event_at is not None)
    ramp_s = all_open - t_start
    held_from = ramp_s
    held_to = (released - t_start + seconds) if released else min(
        (ex.ended_at for ex in done if ex.ended_at), default=t_end) - t_start
    samples = sampler.samples
    round2 = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {
        "streams": n, "seconds": seconds, "min_tokens": min_tokens, "released": release is not None,
        "ramp_rate": rate, "max_pending": max_pending,
        "opened": opened, "completed": completed, "errors": sum(problems.values()), "error_kinds": dict(problems),
        "peak_open": counts["peak_open"],
        "ramp_s": round(ramp_s, 2), "launch_s": round(launched - t_start, 2), "wall_s": round(t_end - t_start, 2),
        "held_s": round(held_to - held_from, 2),
        "duration_min_s": round2(min(durations, default=None)), "duration_p50_s": round2(pct(durations, 50)),
        "duration_max_s": round2(max(durations, default=None)),
        "tokens_min": min(token_counts, default=None), "tokens_max": max(token_counts, default=None),
        "first_event_p50_ms": ms(pct(ttfb, 50)), "first_event_p99_ms": ms(pct(ttfb, 99)),
        "first_event_max_ms": ms(max(ttfb, default=None)),
        "max_gap_p50_s": round2(pct(gaps, 50)), "max_gap_p99_s": round2(pct(gaps, 99)),
        "max_gap_max_s": round2(max(gaps, default=None)),
        "max_gap_end_seconds": dict(sorted(gap_ends.items())),
        "gateway_rss_peak_kb": max((s["hwm_kb"] or 0 for s in samples), default=0),
        "gateway_rss_peak_sampled_kb": max((s["rss_kb"] or 0 for s in samples), default=0),
        "gateway_rss_before_kb": samples[0]["rss_kb"] if samples else None,
        "gateway_fds_peak": max((s["fds"] or 0 for s in samples), default=0),
        "rss_target_kb": RSS_TARGET_KB,
        "cpu_cores": {"ramp": sampler.cores(0, ramp_s + 1), "held": sampler.cores(held_from + 1, held_to - 1),
                      "whole": sampler.cores(0, t_end - t_start)},
        "samples": [{k: v for k, v in s.items() if k != "peak_open"} for s in samples],
    }


# -- the run ---------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/streams.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="200 streams for 3 s and 6 TTFT requests per path (CI)")
    p.add_argument("--streams", type=int, default=None, help="concurrent streams (default 10000, 200 with --smoke; 0 skips)")
    p.add_argument("--seconds", type=int, default=None, help="each stream lasts at least this long (default 60, 3 with --smoke)")
    p.add_argument("--ramp-rate", type=float, default=2000.0, help="streams opened per second (default 2000)")
    p.add_argument("--max-pending", type=int, default=1000,
                   help="most streams opened and still waiting for their first event (default 1000)")
    p.add_argument("--ttft-requests", type=int, default=None,
                   help="measured TTFT requests per path and concurrency (default 200, 6 with --smoke; 0 skips)")
    p.add_argument("--ttft-concurrency", default="1,8", help="comma-separated concurrent TTFT clients (default 1,8)")
    p.add_argument("--ttft-ms", type=int, default=200, help="the upstream's wait before its first token (default 200)")
    p.add_argument("--upstream", choices=("sim", "paced"), default="paced",
                   help="the upstream: bench/paced_upstream.py (default; holds streams until all are open) or "
                        "`farebox sim` (streams end on their own)")
    p.add_argument("--slow-http", choices=("1.1", "2"), default=None,
                   help="how the gateway reaches the upstream of the many streams: HTTP/2, its streams "
                        "sharing connections (default with the paced upstream), or HTTP/1.1, a connection "
                        "each (default with the sim, whose HTTP/2 relays each stream over a connection of its own)")
    p.add_argument("--end-spread", type=float, default=None,
                   help="after the hold, the streams end spread over this many seconds, in the order they "
                        "started, rather than all in the same second (default 10, 1 with --smoke)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each scenario, wait up to this many seconds for other processes to use at most "
                        f"{OTHER_CPU_MAX} cores (default 60, 0 with --smoke)")
    p.add_argument("--no-floor", action="store_true",
                   help="no floor-proxy row in the TTFT table (it needs the paced upstream and Starlette)")
    p.add_argument("--pin", choices=("both", "yes", "no"), default="both",
                   help="TTFT with the servers under test on one CPU and the client and upstream on the others "
                        "(yes), with every process free to run anywhere (no), or each in turn (both, the default)")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "streams.json", help="JSON results file")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory (logs, database)")
    a = p.parse_args()
    a.streams = (200 if a.smoke else 10_000) if a.streams is None else a.streams
    a.seconds = (3 if a.smoke else 60) if a.seconds is None else a.seconds
    a.ttft_requests = (6 if a.smoke else 200) if a.ttft_requests is None else a.ttft_requests
    a.quiet_wait = (0 if a.smoke else 60) if a.quiet_wait is None else a.quiet_wait
    a.end_spread = (1.0 if a.smoke else 10.0) if a.end_spread is None else a.end_spread
    a.slow_http = ("2" if a.upstream == "paced" else "1.1") if a.slow_http is None else a.slow_http
    try:
        a.ttft_conns = [int(c) for c in a.ttft_concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--ttft-concurrency: expected comma-separated integers, e.g. 1,8")
    if a.streams < 0 or a.seconds < 1 or a.ramp_rate <= 0 or a.max_pending < 1 or a.ttft_requests < 0 \
            or any(c < 1 for c in a.ttft_conns):
        p.error("--streams and --ttft-requests must be >= 0, --seconds, --max-pending and concurrencies >= 1")
    return a


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="farebox-streams-"))
    try:
        return run(args, procs, tmp)
    except Failure as e:
        print(f"\nstreams: FAILED: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstreams: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_temp:
            print(f"streams: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


OTHER_CPU_MAX = 0.15  # cores other processes may use for the machine to count as quiet (as bench/run)


def wait_quiet(limit_s: float) -> None:
    """Wait, up to limit_s, until processes other than this one use at most OTHER_CPU_MAX
    cores over a second (the servers it started are idle now): the machine may be shared."""
    deadline = time.monotonic() + limit_s
    said = False
    while True:
        busy, own, t0 = machine_busy_ticks(), self_ticks(), time.monotonic()
        time.sleep(1.0)
        other = ((machine_busy_ticks() - busy) - (self_ticks() - own)) / TICK / (time.monotonic() - t0)
        if other <= OTHER_CPU_MAX:
            return
        if time.monotonic() >= deadline:
            say(f"streams: machine still busy (other processes use {other:.2f} cores); measuring anyway")
            return
        if not said:
            say(f"streams: other processes use {other:.2f} cores; waiting up to {limit_s:.0f} s for a quiet machine")
            said = True


def start_floor(args: argparse.Namespace, procs: Procs, tmp: Path, env: dict[str, str],
                upstream: str) -> tuple[subprocess.Popen, str] | None:
    """bench/floor_proxy.py (a bare Starlette + aiohttp pass-through) in front of the TTFT
    upstream, as the least any Python proxy adds; only the paced upstream serves the path its
    streaming route forwards to. Its process and URL; None when not wanted or not installed."""
    if args.no_floor or not args.ttft_requests or args.upstream != "paced":
        return None
    try:
        import starlette  # noqa: F401 - the bench extra; only the floor needs it
        import uvicorn  # noqa: F401
    except ImportError:
        say("streams: no floor row (pip install -e '.[bench]' for Starlette)")
        return None
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    log = tmp / "floor.log"
    proc = procs.start("floor proxy", [sys.executable, "-m", "uvicorn", "floor_proxy:app", "--host", HOST, "--port",
                                       str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                                       "--log-level", "warning"], log, {**env, "UPSTREAM": upstream}, cwd=BENCH)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"the floor proxy exited with status {proc.returncode}; its log:\n{tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return proc, f"http://{HOST}:{port}"
        time.sleep(0.05)
    raise Failure(f"the floor proxy did not listen within 30 s; its log:\n{tail(log)}")


PATHS = ("direct", "floor", "gateway")  # the TTFT rows, in the order they are shown


def start_upstream(args: argparse.Namespace, procs: Procs, tmp: Path, env: dict[str, str]
                   ) -> tuple[subprocess.Popen, str]:
    log = tmp / "upstream.log"
    if args.upstream == "sim":
        proc = procs.start("farebox sim", [str(BIN / "farebox"), "sim", "--host", HOST, "--port", "0"], log, env)
        return proc, wait_for_line("farebox sim", proc, log, "listening on ")
    proc = procs.start("paced upstream", [sys.executable, str(BENCH / "paced_upstream.py"), "--host", HOST,
                                          "--port", "0"], log, env)
    return proc, wait_for_line("paced upstream", proc, log, "listening on ")


def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> int:
    command = "bench/streams.py" + "".join(f" {a}" for a in sys.argv[1:])
    # Each open stream holds a socket in the client and one in the upstream; in the gateway its
    # client's, and over HTTP/1.1 an upstream one too (over HTTP/2 a few hundred share one).
    per_stream = 2 if args.slow_http == "1.1" else 1
    fd_limit = raise_fd_limit(max(65536, 2 * args.streams + 4096))
    if fd_limit < per_stream * args.streams + 256:
        say(f"streams: WARNING: the open-files limit is {fd_limit}; the gateway needs about {per_stream} per stream "
            f"({per_stream * args.streams + 256} for {args.streams}). Raise the hard limit (ulimit -Hn) or run as root.")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAREBOX_")}
    up_proc, up_url = start_upstream(args, procs, tmp, env)
    tokens = args.seconds + 1  # the first token comes at once, then one a second
    ttft_prefix = f"/_sim/ttft_ms={args.ttft_ms}"
    # The paced upstream holds each stream open past its tokens until released (see open_streams).
    slow_prefix = f"/_sim/tokens_per_s=1,output_tokens={tokens}" + (",until_released=1" if args.upstream == "paced" else "")
    home = tmp / "home"
    home.mkdir()
    (tmp / "catalog.toml").write_text(CATALOG.format(ttft_ms=args.ttft_ms, ttft_base=f"{up_url}{ttft_prefix}/v1",
                                                     slow_base=f"{up_url}{slow_prefix}/v1",
                                                     slow_http2=str(args.slow_http == "2").lower()))
    gw_env = {**env, "FAREBOX_HOME": str(home), "FAREBOX_HOST": HOST, "FAREBOX_PORT": "0",
              "FAREBOX_CATALOG_PATH": str(tmp / "catalog.toml"), "FAREBOX_CATALOG_BUILTIN": "false",
              "FAREBOX_LOG_LEVEL": "warning",
              # 0, the default, means no cap on connections per provider; said here so the run
              # shows what it measured with.
              "FAREBOX_UPSTREAM_CONNECTIONS_MAX": "0"}
    log = tmp / "farebox.log"
    gw_proc = procs.start("farebox serve", [str(BIN / "farebox"), "serve"], log, gw_env)
    gateway = wait_for_line("farebox serve", gw_proc, log, "serving on ")
    gw_limit = _proc_nofile(gw_proc.pid)
    say(f"streams: upstream ({args.upstream}, the many streams over HTTP/{args.slow_http}) {up_url}, gateway {gateway} (pid {gw_proc.pid}, open-files limit "
        f"{gw_limit}); this client's limit {fd_limit}")
    mkey = (home / "management_key").read_text().strip()

    def manage(method: str, path: str, body: object = None) -> dict:
        status, raw = http(method, f"{gateway}/api/v1{path}", body, mkey)
        if status not in (200, 201):
            raise Failure(f"{method} {path} answered {status}: {raw[:500]!r}")
        return json.loads(raw)

    manage("POST", "/organizations", {"name": "streams"})
    manage("POST", "/organizations/streams/credits", {"amount": "100000.00", "reference": "streams"})
    api_key = manage("POST", "/keys", {"organization": "streams", "name": "streams"})["key"]
    auth = {"Authorization": f"Bearer {api_key}"}

    direct = Target("direct", up_url, f"{ttft_prefix}/v1/chat/completions",
                    {"model": "sim-small", "messages": MESSAGES, "max_tokens": 16, "stream": True,
                     "stream_options": {"include_usage": True}}, {})
    through = Target("gateway", gateway, "/api/v1/chat/completions",
                     {"model": "streams/ttft", "messages": MESSAGES, "max_tokens": 16, "stream": True}, auth)
    targets = [direct, through]
    floor = start_floor(args, procs, tmp, env, f"{up_url}{ttft_prefix}")
    floor_proc = floor[0] if floor is not None else None
    if floor is not None:
        floor_url = floor[1]
        # Same body as direct: the floor forwards it untouched to the same upstream path.
        targets.insert(1, Target("floor", floor_url, "/s/v1/chat/completions",
                                 {"model": "sim-small", "messages": MESSAGES, "max_tokens": 16, "stream": True,
                                  "stream_options": {"include_usage": True}}, {}))
    slow = Target("gateway", gateway, "/api/v1/chat/completions",
                  {"model": "streams/slow", "messages": MESSAGES, "stream": True,
                   # released streams run until told; this cap (4.5 hours) is only a backstop
                   "max_tokens": 16384 if args.upstream == "paced" else tokens + 16}, auth)

    report: dict[str, Any] = {"ttft": [], "open_streams": None}
    status = 0
    counts = {"open": 0, "ended": 0, "peak_open": 0}
    warmup = 2

    async def ttft_rows(pinned: bool) -> None:
        servers = [gw_proc.pid] + ([floor_proc.pid] if floor_proc is not None else [])
        how, unpin = pin_for_ttft(servers, [up_proc.pid]) if pinned else ("not pinned", lambda: None)
        try:
            for conns in args.ttft_conns:
                if args.quiet_wait:
                    await asyncio.to_thread(wait_quiet, args.quiet_wait)
                say(f"streams: TTFT, {conns} client(s), {args.ttft_requests} requests per path, in turn to "
                    f"{', '.join(t.name for t in targets)} (upstream waits {args.ttft_ms} ms); {how}")
                t0 = time.monotonic()
                row = await ttft_run(targets, conns, args.ttft_requests, warmup)
                row["wall_s"] = round(time.monotonic() - t0, 2)
                row["pinned"], row["pinning"] = not how.startswith("not pinned"), how
                report["ttft"].append(row)
        finally:
            unpin()

    async def scenarios() -> None:
        if args.ttft_requests:
            modes = {"both": (True, False), "yes": (True,), "no": (False,)}[args.pin]
            for pinned in modes if len(os.sched_getaffinity(0)) > 1 else (False,):
                await ttft_rows(pinned)
        if args.streams:
            n = fitting_streams(args.streams, gw_proc.pid, args.slow_http)
            if args.quiet_wait:
                await asyncio.to_thread(wait_quiet, args.quiet_wait)
            sampler = Sampler(gw_proc.pid, up_proc.pid, counts)

            async def release() -> None:
                status, raw = await asyncio.to_thread(http, "POST", f"{up_url}/_paced/release",
                                                      {"after_s": args.seconds, "spread_s": args.end_spread})
                if status != 200:
                    raise Failure(f"POST /_paced/release answered {status}: {raw[:300]!r}")

            report["open_streams"] = await open_streams(slow, n, args.seconds, tokens, args.ramp_rate, args.max_pending,
                                                        sampler, release if args.upstream == "paced" else None)
            report["open_streams"]["streams_requested"] = args.streams

    _run_loop(scenarios())

    # The ledger, and one completed generation per completed stream.
    ledger = manage("GET", "/ledger/verify")["data"]
    org = manage("GET", "/organizations/streams")["data"]
    gens = generations(home / "farebox.db")
    ttft_expected = sum(r["gateway"]["requests"] + warmup for r in report["ttft"])  # warm-ups are billed too
    slow_done = report["open_streams"]["completed"] if report["open_streams"] else 0
    checks = {
        "ledger_ok": bool(ledger.get("ok")),
        "ttft_generations": gens.get(("streams/ttft", False), 0),
        "ttft_requests": ttft_expected,
        "stream_generations": gens.get(("streams/slow", False), 0),
        "stream_generations_cancelled": gens.get(("streams/slow", True), 0),
        "streams_completed": slow_done,
    }
    report["ledger"] = {"ok": ledger.get("ok"), "checks": ledger.get("checks"), "violations": ledger.get("violations"),
                        "counts": ledger.get("counts"), "total_usage_usd": str(org.get("total_usage")),
                        "generations": {f"{m}{' (cancelled)' if c else ''}": n for (m, c), n in gens.items()}}
    report["checks"] = checks

    say()
    say(render(report, args))
    failures = []
    for row in report["ttft"]:
        for side in PATHS:
            if side in row and row[side]["errors"]:
                failures.append(f"TTFT c={row['connections']} {'pinned' if row['pinned'] else 'unpinned'} {side}: "
                                f"{row[side]['errors']} errors "
                                f"{row[side]['error_kinds']}")
    s = report["open_streams"]
    if s is not None and (s["errors"] or s["completed"] != s["streams"]):
        failures.append(f"open streams: {s['completed']:,} of {s['streams']:,} completed; errors {s['error_kinds']}")
    if s is not None and s["peak_open"] != s["streams"]:
        failures.append(f"open streams: at most {s['peak_open']:,} of {s['streams']:,} were open at once (the ramp "
                        f"took {s['ramp_s']} s; with --upstream sim a stream lasts only {args.seconds} s)")
    if not checks["ledger_ok"]:
        failures.append(f"ledger verify failed: {ledger.get('violations')}")
    if checks["stream_generations"] != slow_done:
        failures.append(f"{checks['stream_generations']} completed generations of streams/slow recorded for "
                        f"{slow_done} completed streams")
    if checks["ttft_generations"] != ttft_expected:
        failures.append(f"{checks['ttft_generations']} generations of streams/ttft recorded for {ttft_expected} "
                        "requests through the gateway")
    for f in failures:
        say(f"streams: FAILED: {f}")
    if failures:
        status = 1

    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command,
              "commit": git_commit(), "settings": {"streams": args.streams, "seconds": args.seconds, "ramp_rate": args.ramp_rate,
                           "max_pending": args.max_pending, "end_spread_s": args.end_spread,
                           "ttft_requests": args.ttft_requests, "quiet_wait_s": args.quiet_wait,
                           "ttft_concurrency": args.ttft_conns, "ttft_ms": args.ttft_ms, "upstream": args.upstream,
                           "slow_http": args.slow_http,
                           "smoke": args.smoke, "open_files_limit": fd_limit, "gateway_open_files_limit": gw_limit},
              **report, "failures": failures, "ok": status == 0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"streams: wrote {args.out}")
    return status


def fitting_streams(want: int, gw_pid: int, http: str) -> int:
    """`want`, or fewer when the gateway's open-files limit cannot hold that many streams:
    over HTTP/1.1 each takes two descriptors there (its client's socket and its upstream's),
    over HTTP/2 its client's and a share of an upstream connection (at least 100 streams
    each), on top of those already open. Running into the limit would measure the limit,
    not the gateway."""
    limit, in_use = _proc_nofile(gw_pid), memory_kb(gw_pid).get("fds")
    if limit is None or in_use is None:
        return want
    free = limit - in_use - FD_SPARE
    room = free // 2 if http == "1.1" else free * 100 // 101
    if want <= room:
        return want
    bar = "!" * 78
    say(f"\n{bar}\n!! the gateway's open-files limit is {limit:,} ({in_use} in use): it can hold at most "
        f"{room:,} streams, not {want:,}.\n!! Running {room:,}. Raise the hard limit (ulimit -Hn, which needs "
        f"CAP_SYS_RESOURCE) to run {want:,}.\n{bar}")
    return room


FD_SPARE = 32  # descriptors left free in the gateway beside the streams' (database, logs, pool churn)


def git_commit() -> str | None:
    """The checked-out commit, read from .git without running git (as bench/run does)."""
    try:
        git = REPO / ".git"
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def _proc_nofile(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError):
        pass
    return None


def _run_loop(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def generations(db: Path) -> dict[tuple[str, bool], int]:
    """Generations by (model, cancelled), read from the gateway's database (WAL: safe beside
    the running server)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT model, cancelled, COUNT(*) FROM generations GROUP BY 1, 2").fetchall()
    finally:
        conn.close()
    return {(m, bool(c)): n for m, c, n in rows}


def fmt_ms(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}ms" if signed else f"{v:.2f}ms"


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    out = []
    if report["ttft"]:
        out.append(f"Time to first token (upstream waits {args.ttft_ms} ms; from sending the request to the first "
                   "content chunk; +p50/+p99: added over direct, the upstream alone; pinned: " +
                   "; ".join(sorted({row["pinning"] for row in report["ttft"]})) + "):")
        head = ["path", "pinned", "conns", "requests", "errors", "min", "p50", "p90", "p99", "max", "+p50", "+p99"]
        body = []
        for row in report["ttft"]:
            for side in PATHS:
                if side not in row:
                    continue
                r = row[side]
                body.append([side, "yes" if row["pinned"] else "no", str(row["connections"]), str(r["requests"]), str(r["errors"]), fmt_ms(r["min_ms"]),
                             fmt_ms(r["p50_ms"]), fmt_ms(r["p90_ms"]), fmt_ms(r["p99_ms"]), fmt_ms(r["max_ms"]),
                             fmt_ms(r.get("added_p50_ms"), True) if side != "direct" else "-",
                             fmt_ms(r.get("added_p99_ms"), True) if side != "direct" else "-"])
        out.append(_table(head, body))
        for pinned in (True, False):
            rows = [row for row in report["ttft"] if row["pinned"] == pinned]
            if rows:
                worst = max((row["gateway"].get("added_p50_ms") or 0) for row in rows)
                out.append(f"TTFT added at p50, {'pinned' if pinned else 'not pinned'}: at most {worst * 1000:+.0f} µs "
                           f"(target +{TTFT_ADDED_TARGET_US} µs): "
                           f"{'met' if worst * 1000 <= TTFT_ADDED_TARGET_US else 'NOT MET'}")
        out.append("")
    s = report["open_streams"]
    if s is not None:
        how = (f"held together {s['held_s']} s once all were open" if s["released"]
               else f"{s['min_tokens']} tokens each")
        out.append(f"Open streams ({s['streams']:,} streams through one gateway process, one token a second, {how}; "
                   f"gateway to upstream over HTTP/{args.slow_http}):")
        head = ["streams", "opened", "completed", "errors", "peak open", "ramp", "held", "duration min/p50/max",
                "tokens min/max", "longest gap p99/max", "gw RSS before", "gw RSS peak", "gw fds peak"]
        body = [[f"{s['streams']:,}", f"{s['opened']:,}", f"{s['completed']:,}", str(s["errors"]), f"{s['peak_open']:,}",
                 f"{s['ramp_s']} s", f"{s['held_s']} s",
                 f"{s['duration_min_s']}/{s['duration_p50_s']}/{s['duration_max_s']} s",
                 f"{s['tokens_min']}/{s['tokens_max']}", f"{s['max_gap_p99_s']}/{s['max_gap_max_s']} s",
                 f"{(s['gateway_rss_before_kb'] or 0) / 1024:,.0f} MiB", f"{s['gateway_rss_peak_kb'] / 1024:,.0f} MiB",
                 f"{s['gateway_fds_peak']:,}"]]
        out.append(_table(head, body))
        out.append("CPU, in cores (the gateway is one event loop plus its writer thread):")
        cpu_rows = [[phase] + (["-"] * 4 if not c else [f"{c[w]:.2f}" for w in ("gw", "up", "client", "other")])
                    for phase, c in s["cpu_cores"].items()]
        out.append(_table(["phase", "gateway", "upstream", "client", "other processes"], cpu_rows))
        if s["error_kinds"]:
            out.append(f"errors: {s['error_kinds']}")
        out.append(f"gateway peak RSS (VmHWM) {s['gateway_rss_peak_kb'] / 1024:,.0f} MiB (target at most "
                   f"{RSS_TARGET_KB / 1024:,.0f} MiB): {'met' if s['gateway_rss_peak_kb'] <= RSS_TARGET_KB else 'NOT MET'}")
        out.append("")
    c = report["checks"]
    out.append(f"ledger verify: {'ok' if c['ledger_ok'] else 'NOT OK'}; generations: streams/slow "
               f"{c['stream_generations']:,} completed (+{c['stream_generations_cancelled']} cancelled) for "
               f"{c['streams_completed']:,} completed streams; streams/ttft {c['ttft_generations']} for "
               f"{c['ttft_requests']} requests")
    return "\n".join(out)


def _table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *map(line, body)])


if __name__ == "__main__":
    sys.exit(main())
