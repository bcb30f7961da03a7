"""CI keeps `bench/run` working: a smoke run (1 s scenarios) must start nginx, the floor proxy
and the gateway, run every scenario without an error, and leave a ledger that verifies with
one generation per answered request; its bench/streams.py section (a few hundred streams held
open together, a few time-to-first-token requests) must end every stream properly; its
bench/writer.py section must commit every settlement into a ledger that verifies; its
bench/footprint.py section must start the gateway with a 1,000-model catalog and read its
memory; and every target of issue 7 must have a row in the summary. Nothing
here judges speed: the figures of a 1 s run on a shared machine mean nothing
(docs/performance.md has the real ones)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {("upstream", 1), ("upstream", 64), ("floor", 1), ("floor", 64), ("farebox", 1), ("farebox", 64),
             ("upstream-sse", 64), ("floor-sse", 64), ("farebox-sse", 64)}


def test_bench_run_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "run"), "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["gateway_errors"] == []
    seen = {(s["scenario"], s["connections"]) for s in report["scenarios"]}
    assert seen >= SCENARIOS, SCENARIOS - seen
    for scenario in report["scenarios"]:
        assert scenario["requests"] > 0 and scenario["errors"] == 0 and scenario["non_2xx"] == 0, scenario
    ledger = report["ledger"]
    assert ledger["ok"] is True and ledger["violations"] == [], ledger
    # Every request the gateway answered left exactly one generation record (up to those in
    # flight when a wrk run stopped, which bench/run itself bounds).
    assert 0 <= ledger["generations"] - ledger["requests_answered"] <= ledger["cutoff_slack"], ledger
    # Item 3's ratio comes from the gateway's JSON and SSE runs back to back (one round here).
    (pair,) = report["sse_pairs"]
    for mode in ("json", "sse"):
        assert pair[mode]["rps"] > 0 and pair[mode]["errors"] == 0 and pair[mode]["cpu_us_per_request"] > 0, pair
    assert pair["ratio"] == pair["sse"]["rps"] / pair["json"]["rps"]
    sse_target = next(t for t in report["targets"] if t["item"].startswith("3 SSE"))
    assert "median of 1 back-to-back rounds" in sse_target["measured"], sse_target
    assert_streams(report["streams"])
    assert_writer(report["writer"])
    assert_footprint(report["footprint"])
    items = [t["item"] for t in report["targets"]]
    for prefix in ("1 ", "2 p50", "2 p99", "3 SSE", "3 TTFT", "4 ", "5 ", "6 ready", "6 idle"):
        assert any(item.startswith(prefix) for item in items), (prefix, items)
    assert all(t["met"] in (True, False) for t in report["targets"]), report["targets"]


def assert_writer(writer: dict) -> None:
    """bench/writer.py's smoke: every settlement committed, the row counts and balances exact,
    and `ledger verify`'s checks all zero."""
    assert writer["ok"] is True and writer["count"] == 5_000, writer
    (result,) = writer["results"]
    verify = result["verify"]
    assert verify["ok"] is True and verify["mismatches"] == {} and verify["violations"] == [], verify
    assert verify["counts"]["generations"] == 5_000 and verify["counts"]["entries"] == 5_001, verify
    assert writer["charges_per_s"] > 0 and result["batches"] >= 1


def assert_footprint(footprint: dict) -> None:
    """bench/footprint.py's smoke: the gateway started with the generated catalog every time,
    listed all its models, answered the requests, and its memory was read."""
    assert footprint["ok"] is True and footprint["exit"] == 0, footprint.get("error")
    assert footprint["catalog"]["models"] >= 1_000
    assert footprint["runs"] and all(r["ready_models_s"] > 0 and r["rss_idle_mb"] > 0 for r in footprint["runs"])


def assert_streams(streams: dict) -> None:
    """bench/streams.py's smoke: every stream opened, was open with all the others, and
    completed with its usage and [DONE]; every TTFT request was answered; one completed
    generation per stream and per TTFT request through the gateway; the ledger verifies."""
    assert streams["ok"] is True and streams["failures"] == [], streams["failures"]
    held = streams["open_streams"]
    assert held["streams"] > 0 and held["errors"] == 0 and held["error_kinds"] == {}, held["error_kinds"]
    assert held["opened"] == held["completed"] == held["peak_open"] == held["streams"], held
    checks = streams["checks"]
    assert checks["ledger_ok"] is True and streams["ledger"]["violations"] == [], streams["ledger"]
    assert checks["stream_generations"] == held["completed"] and checks["stream_generations_cancelled"] == 0, checks
    assert streams["ttft"], "no time-to-first-token rows"
    # Pinned (servers under test on their own CPU) and not, where there is more than one CPU.
    both = len(os.sched_getaffinity(0)) > 1
    assert {row["pinned"] for row in streams["ttft"]} == ({True, False} if both else {False})
    for row in streams["ttft"]:
        for path in ("direct", "gateway"):
            answered = row[path]
            assert answered["requests"] > 0 and answered["errors"] == 0, answered
            assert answered["ok"] == answered["requests"] and answered["p50_ms"] is not None, answered
    assert checks["ttft_generations"] == checks["ttft_requests"] > 0, checks


def test_bench_ab_smoke(tmp_path: Path) -> None:
    """bench/ab.py's smoke: two gateways (HEAD's worktree and the working tree) on one nginx,
    one round of each mode without an error, figures for both, and its worktrees removed."""
    out = tmp_path / "ab.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "ab.py"), "HEAD", "--rounds", "1", "--seconds", "1",
                          "--connections", "2", "--upstream-port", str(port), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["new"] == "working tree" and report["base"].startswith("HEAD (")
    for mode in ("json", "sse"):
        figures = report["modes"][mode]
        for side in ("base_us", "new_us", "base_p50_us", "new_p50_us"):
            assert len(figures[side]) == 1 and figures[side][0] > 0, (mode, side, figures)
    assert "| sse |" in run.stdout and "| json |" in run.stdout
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "farebox-ab-" not in worktrees
