#!/usr/bin/env python3
"""The ledger writer alone: how many settled charges per second the group-commit writer
commits, and what CPU each costs the writer thread (CPU the gateway's event loop competes
with for the GIL).

A fresh SQLite file goes through the real `Store` (every migration). One organization
with a workspace and a key gets a wallet funded by one grant, large enough that the
balance never falls below zero. Then `--count` settlements are submitted from an asyncio
event loop (uvloop, as `farebox serve` runs) through the real `GroupWriter`, as
`Ledger.commit` does: each is a `SettleOp` of one charge entry (wallet -> system:revenue,
with its reference, key hash and generation id) and a full generation record shaped like
`generation.generation_record`'s. `--inflight` requests wait at once, each a task that
submits its settlement and awaits the future. The WAL checkpointer runs beside the writer
as in the gateway.

Measured from the first submit until the last future has resolved on the loop: settled
charges per second, the writer's batches and mean batch size, and CPU per charge of the
writer thread (`time.thread_time()` read inside the writer, by an op submitted before and
after), of the event loop's thread and of the whole process.

Afterwards `farebox ledger verify`'s checks run on the file (every one must be zero), and
the row counts and balances must be exact. Exit status 1 when any of that fails.

    .venv/bin/python bench/writer.py                 # 200,000 settlements
    .venv/bin/python bench/writer.py --smoke         # 5,000: checks it works (CI)
    .venv/bin/python bench/writer.py --runs 3 --out bench/out/writer.json

`main(argv)` returns the results as a JSON-able dict (`ok` says whether every check
passed), so bench/run can import it or run the script and read `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from farebox.clock import Clock, FakeClock
from farebox.ids import Ids
from farebox.ledger.entries import GRANTS, REVENUE, Entry, wallet
from farebox.ledger.verify import verify_store
from farebox.settings import Settings
from farebox.store import sqlite as ops
from farebox.store.checkpoint import Checkpointer
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

ORG_ID = 1
WORKSPACE_ID = 1
KEY_HASH = "0ef48a0f824ed81a544e60647752455b68d497d8d2a6e2c35cecd9f911c1fc89"
WALLET = wallet(ORG_ID)
# What bench/run's `bench/fast` request costs: 12 prompt tokens at $0.15/M and 9 completion
# tokens at $0.60/M.
CHARGE_NANOS = 12 * 150 + 9 * 600


def generation(gid: str, now_ms: int) -> dict[str, Any]:
    """A generation record with every field `generation.generation_record` writes, valued as
    for a completed non-streaming `bench/fast` request."""
    return {
        "id": gid, "org_id": ORG_ID, "workspace_id": WORKSPACE_ID, "key_hash": KEY_HASH,
        "project_id": None, "settled_at_ms": now_ms,
        "created_at_ms": now_ms - 1, "model": "bench/fast", "provider_name": "bench",
        "endpoint_id": "bench/bench-fast", "upstream_id": "chatcmpl-2961f5ec761e08bf758a995e", "streamed": False,
        "cancelled": False, "latency_ms": 1, "generation_time_ms": 0,
        "finish_reason": "stop", "native_finish_reason": "stop",
        "tokens_prompt": 12, "tokens_completion": 9,
        "native_tokens_reasoning": 0, "native_tokens_cached": 0,
        "native_tokens_cache_write": 0, "usage_estimated": False,
        "num_media_prompt": 0, "total_cost_nanos": CHARGE_NANOS,
        "charged_nanos": CHARGE_NANOS, "overrun_nanos": 0, "hold_nanos": 21_600,
        "cost_items_attos": {"prompt": "1800000000000", "cache_read": "0", "cache_write": "0",
                             "completion": "5400000000000", "reasoning": "0", "request": "0", "image": "0"},
        "cache_discount_attos": "0",
        "provider_responses": [{"id": "chatcmpl-2961f5ec761e08bf758a995e", "endpoint_id": "bench/bench-fast",
                                "model_permaslug": "bench/fast", "provider_name": "bench", "status": 200,
                                "latency": 1, "is_byok": False, "routed_service_tier": None}],
        "http_referer": None, "app_title": None,
        "user_agent": "wrk", "external_user": None,
        "session_id": None,
        "requested_model": "bench/fast", "api_type": "completions",
        "is_byok": False, "byok_cost_nanos": CHARGE_NANOS, "logged": False,
    }


class Settlements:
    """The requests' settlements, as `Ledger.commit` submits them. Ids and times come from a
    clock that advances 1/`rate` seconds per request, so each second holds `rate` generation
    ids, made by `Ids` as the gateway makes them, whatever speed this machine reaches: the id
    indexes see the same inserts run after run. Built cheaply (records copied from a
    template) so that the event loop's own cost stays small beside the writer's."""

    def __init__(self, rate: int) -> None:
        self._clock = FakeClock(Clock().now())
        self._step = 1 / rate
        self._ids = Ids()
        self._template = generation("", 0)
        # The gateway's records have exactly these keys, and only those are stored short
        # (store/sqlite.py): a template of another shape would measure the whole-record path.
        assert list(self._template) == list(ops.RECORD_KEYS), "generation() differs from the gateway's record"

    def next(self) -> ops.SettleOp:
        self._clock.advance(self._step)
        now_ms = self._clock.now_ms()
        gid = self._ids.generation_id(now_ms)
        record = self._template.copy()
        record["id"], record["created_at_ms"], record["settled_at_ms"] = gid, now_ms - 1, now_ms
        entry = Entry("charge", WALLET, REVENUE, CHARGE_NANOS, f"charge:{gid}", now_ms, ORG_ID, KEY_HASH, gid)
        return ops.SettleOp([entry], record, None)


def setup(store: Store, count: int) -> int:
    """The organization, its workspace, key and wallet, and a grant that covers every charge
    plus a margin. Returns the amount granted."""
    amount = count * CHARGE_NANOS + 10**9

    now_ms = Clock().now_ms()

    def op(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, 'bench', ?)", (ORG_ID, now_ms))
        conn.execute("INSERT INTO workspaces (id, org_id, name, created_at) VALUES (?, ?, 'default', ?)",
                     (WORKSPACE_ID, ORG_ID, now_ms))
        conn.execute("INSERT INTO keys (hash, kind, org_id, workspace_id, name, label, created_at)"
                     " VALUES (?, 'api', ?, ?, 'bench', 'sk-fb-v1-0ef...fc89', ?)",
                     (KEY_HASH, ORG_ID, WORKSPACE_ID, now_ms))
        ops.ensure_account(conn, WALLET, ORG_ID, "wallet")
        ops.grant(conn, Entry("grant", GRANTS, WALLET, amount, "grant:bench", now_ms, ORG_ID), None)

    GroupWriter(store.writer_conn).run_sync(op)
    return amount


def _host_busy_s() -> float:
    """CPU seconds every process on the host has used since boot (/proc/stat: all but idle
    and iowait), so a run can say how much of the machine others took meanwhile."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    busy = sum(fields[:8]) - fields[3] - fields[4]   # user..steal, less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


async def load(writer: GroupWriter, count: int, inflight: int, rate: int) -> dict[str, Any]:
    """Submit `count` settlements, `inflight` waiting at once, each from its own task. The
    settlements are made before the clock starts: making one (its id, its record) is the
    request's work, done in the gateway whether or not a writer waits for it, and here it
    would only compete with the writer for the GIL."""
    settlements = Settlements(rate)
    pending = [settlements.next() for _ in range(count)]
    pending.reverse()   # popped from the end, in the order made
    # In the gateway these would be requests not yet arrived; here they are a million objects
    # the cyclic GC walks in every full collection, whichever thread (often the writer's)
    # happens to trigger it. Frozen, the collector skips them (0.9 µs a charge of the
    # writer's CPU went to that).
    gc.freeze()
    done_at = 0.0

    async def request() -> None:
        nonlocal done_at
        while pending:
            await writer.submit(pending.pop())
        done_at = time.perf_counter()

    thread_cpu = lambda conn: time.thread_time()  # noqa: E731 (runs in the writer thread)
    writer_cpu0 = await writer.submit(thread_cpu)
    batches0, ops0 = writer.batches, writer.ops
    loop_cpu0, process_cpu0, host0 = time.thread_time(), time.process_time(), _host_busy_s()
    started = time.perf_counter()
    await asyncio.gather(*(request() for _ in range(min(inflight, count))))
    elapsed = done_at - started
    loop_cpu, process_cpu = time.thread_time() - loop_cpu0, time.process_time() - process_cpu0
    other = (_host_busy_s() - host0 - process_cpu) / elapsed
    batches, ops_ = writer.batches - batches0, writer.ops - ops0
    writer_cpu = await writer.submit(thread_cpu) - writer_cpu0
    gc.unfreeze()
    return {"seconds": round(elapsed, 3), "charges_per_s": round(count / elapsed),
            "batches": batches, "mean_batch": round(ops_ / batches, 1),
            "writer_cpu_us_per_charge": round(writer_cpu / count * 1e6, 2),
            "loop_cpu_us_per_charge": round(loop_cpu / count * 1e6, 2),
            "process_cpu_us_per_charge": round(process_cpu / count * 1e6, 2),
            "cpu_other": round(max(other, 0.0), 2)}


def check(path: Path, count: int, granted: int) -> dict[str, Any]:
    """The ledger's own verify, then the exact row counts and balances."""
    conn = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    try:
        report = verify_store(conn)
        seconds = time.perf_counter() - started
        balances = dict(conn.execute("SELECT id, balance FROM accounts"))
    finally:
        conn.close()
    expected = {"entries": count + 1, "generations": count,
                WALLET: granted - count * CHARGE_NANOS, REVENUE: count * CHARGE_NANOS}
    found = {"entries": report.counts["entries"], "generations": report.counts["generations"],
             WALLET: balances.get(WALLET), REVENUE: balances.get(REVENUE)}
    mismatches = {k: {"expected": v, "found": found[k]} for k, v in expected.items() if found[k] != v}
    return {"ok": report.ok and not mismatches, "checks": report.checks, "violations": report.violations[:5],
            "mismatches": mismatches, "counts": found, "seconds": round(seconds, 2)}


def run_once(count: int, *, inflight: int, batch_max: int, rate: int, directory: Path) -> dict[str, Any]:
    """One run on a fresh database in `directory`."""
    path = directory / "farebox.db"
    store = Store(path)
    try:
        granted = setup(store, count)
        writer = GroupWriter(store.writer_conn, batch_max)
        checkpointer = Checkpointer(path, Settings().sqlite_checkpoint_interval_s,   # as the gateway runs it
                                    finish=writer.finish_checkpoint)
        writer.start()
        checkpointer.start()
        try:
            result = _run_loop(load(writer, count, inflight, rate))
        finally:
            writer.stop()
            checkpointer.stop()
    finally:
        store.close()
    result["database_bytes"] = path.stat().st_size
    result["verify"] = check(path, count, granted)
    return result


def _run_loop(coro: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # the gateway runs on uvloop; without it, asyncio's own loop
        return asyncio.run(coro)
    return uvloop.run(coro)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="settlements per run (default 200,000)")
    parser.add_argument("--smoke", action="store_true", help="5,000 settlements, one run: checks it works")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh database (default 1)")
    parser.add_argument("--inflight", type=int, default=1024, help="requests waiting on the writer at once")
    parser.add_argument("--batch-max", type=int, default=2048, help="the writer's batch_max (writer_batch_max)")
    parser.add_argument("--id-rate", type=int, default=50_000,
                        help="charges per second of record time: generation ids are stamped as if they came at"
                             " this rate (default 50,000, the target)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    count, runs = (5_000, 1) if args.smoke else (args.count, args.runs)

    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="farebox-writer-") as tmp:
            results.append(run_once(count, inflight=args.inflight, batch_max=args.batch_max, rate=args.id_rate,
                                    directory=Path(tmp)))
    median = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
    summary = {
        "count": count, "runs": runs, "inflight": args.inflight, "batch_max": args.batch_max,
        "id_rate": args.id_rate, "sqlite": sqlite3.sqlite_version, "python": sys.version.split()[0],
        "charges_per_s": round(median("charges_per_s")),
        "best_charges_per_s": max(r["charges_per_s"] for r in results),
        "writer_cpu_us_per_charge": median("writer_cpu_us_per_charge"),
        "loop_cpu_us_per_charge": median("loop_cpu_us_per_charge"),
        "process_cpu_us_per_charge": median("process_cpu_us_per_charge"),
        "mean_batch": median("mean_batch"),
        "cpu_other": median("cpu_other"),
        "ok": all(r["verify"]["ok"] for r in results),
        "results": results,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _report(summary: dict[str, Any]) -> None:
    for i, r in enumerate(summary["results"], 1):
        v = r["verify"]
        print(f"run {i}: {summary['count']:,} charges in {r['seconds']:.2f} s = {r['charges_per_s']:,}/s;"
              f" {r['batches']:,} batches (mean {r['mean_batch']}); CPU µs/charge: writer"
              f" {r['writer_cpu_us_per_charge']}, loop {r['loop_cpu_us_per_charge']},"
              f" process {r['process_cpu_us_per_charge']}; CPU other {r['cpu_other']};"
              f" {r['database_bytes'] / 2**20:.0f} MiB; verify {'ok' if v['ok'] else 'FAILED'} ({v['seconds']} s)")
        if not v["ok"]:
            print(json.dumps({k: v[k] for k in ("checks", "violations", "mismatches")}, indent=2))
    print(f"median: {summary['charges_per_s']:,} charges/s (best {summary['best_charges_per_s']:,}); µs CPU per"
          f" charge: writer {summary['writer_cpu_us_per_charge']}, loop {summary['loop_cpu_us_per_charge']},"
          f" process {summary['process_cpu_us_per_charge']}; CPU other {summary['cpu_other']}")


if __name__ == "__main__":
    outcome = main()
    _report(outcome)
    sys.exit(0 if outcome["ok"] else 1)
