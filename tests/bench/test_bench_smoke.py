"""CI keeps `bench/run` working: a smoke run (1 s scenarios) must start nginx, the floor proxy
and the gateway, run every scenario without an error, and leave a ledger that verifies with
one generation per answered request. Nothing here judges speed: the figures of a 1 s run on
a shared machine mean nothing (docs/performance.md has the real ones)."""

from __future__ import annotations

import json
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
