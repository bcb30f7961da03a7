#!/usr/bin/env python3
"""A paired A/B of two versions of the gateway: which one costs less CPU a request.

    bench/ab.py HEAD~1                      # HEAD~1 against the working tree
    bench/ab.py main HEAD --mode sse --rounds 12
    bench/ab.py dc237e1 --mode json,sse --connections 1 --seconds 4

On a shared or virtual host the speed of the machine drifts by tens of percent within
minutes, so two `bench/run`s minutes apart cannot show a change of a few percent. Here both
gateways run side by side on one nginx upstream, each with its own database, and wrk
alternates between them in short rounds (the order flips every round). The figure is the
gateway process's own CPU time (all its threads, from /proc/<pid>/stat) divided by the
requests wrk counted, and the verdict is the median of the per-round differences: drift
moves both members of a pair alike.

A revision is checked out with `git worktree add --detach` into the temporary directory and
run from its `src` with the repository's .venv (so dependencies must not differ between the
two); "." (the default for NEW) is the working tree. Any error answered by either gateway
fails the run (exit 1); a tool or server that cannot start exits 2. Standard library only;
the helpers (processes, nginx, wrk, the catalog) are bench/run's. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
_loader = importlib.machinery.SourceFileLoader("bench_run", str(BENCH / "run"))
_spec = importlib.util.spec_from_loader("bench_run", _loader)
assert _spec is not None
run = importlib.util.module_from_spec(_spec)
_loader.exec_module(run)

MODES = {"json": {"BENCH_MODEL": "bench/fast", "BENCH_STREAM": "0"},
         "sse": {"BENCH_MODEL": "bench/stream", "BENCH_STREAM": "1"}}


def cpu_seconds(pid: int) -> float:
    """User plus system time of the whole process (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / run.TICK


def checkout(rev: str, tmp: Path, name: str) -> tuple[Path, str]:
    """The source tree for `rev` and a label with its commit."""
    if rev == ".":
        return run.REPO / "src", "working tree"
    commit = subprocess.run(["git", "-C", str(run.REPO), "rev-parse", "--short", rev], capture_output=True,
                            text=True)
    if commit.returncode != 0:
        raise run.Failure(f"not a revision: {rev}")
    tree = tmp / name
    subprocess.run(["git", "-C", str(run.REPO), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
    return tree / "src", f"{rev} ({commit.stdout.strip()})"


def start_gateway(procs: run.Procs, tmp: Path, name: str, src: Path, up_port: int, base_env: dict[str, str]) -> dict:
    home = tmp / f"home-{name}"
    home.mkdir()
    port = run.free_port()
    env = {**base_env, "PYTHONPATH": str(src), "FAREBOX_HOME": str(home), "FAREBOX_HOST": run.HOST,
           "FAREBOX_PORT": str(port), "FAREBOX_CATALOG_PATH": str(tmp / "catalog.toml"),
           "FAREBOX_CATALOG_BUILTIN": "false", "FAREBOX_LOG_LEVEL": "warning"}
    log = tmp / f"farebox-{name}.log"
    proc = procs.start(f"farebox {name}", [str(run.PY), "-m", "farebox", "serve"], log=log, env=env)
    url = f"http://{run.HOST}:{port}"
    run.wait_ready(f"farebox {name}", proc, log, lambda: run.http("GET", f"{url}/health")[0] == 200)
    mkey = (home / "management_key").read_text().strip()

    def manage(path: str, body: object) -> dict:
        status, raw = run.http("POST", url + path, body, mkey)
        if status not in (200, 201):
            raise run.Failure(f"{name}: POST {path} answered {status}: {raw[:500]!r}")
        return json.loads(raw)

    manage("/api/v1/organizations", {"name": "ab"})
    manage("/api/v1/organizations/ab/credits", {"amount": "100000.00", "reference": "ab"})
    key = manage("/api/v1/keys", {"organization": "ab", "name": "ab"})["key"]
    return {"proc": proc, "url": f"{url}/api/v1/chat/completions", "key": key, "home": home}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="revision measured first in the first round (git rev)")
    p.add_argument("new", nargs="?", default=".", help='revision against it; "." is the working tree (default)')
    p.add_argument("--mode", default="json,sse", help="json, sse or both (json,sse; the default)")
    p.add_argument("--rounds", type=int, default=8, help="rounds, each one wrk run per gateway and mode (8)")
    p.add_argument("--seconds", type=int, default=4, help="seconds of each wrk run (4)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--upstream-port", type=int, default=9000, help="nginx's port (9000)")
    p.add_argument("--out", type=Path, help="also write every round's figures here, as JSON")
    a = p.parse_args()
    a.modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    if not a.modes or any(m not in MODES for m in a.modes):
        p.error("--mode takes json, sse or json,sse")
    if a.rounds < 1 or a.seconds < 1 or a.connections < 1:
        p.error("--rounds, --seconds and --connections must be at least 1")
    return a


def ab(args: argparse.Namespace, procs: run.Procs, tmp: Path) -> int:
    nginx, wrk_bin = run.ensure_tools()
    run.ensure_venv()
    if run.port_in_use(args.upstream_port):
        raise run.Failure(f"something already listens on {run.HOST}:{args.upstream_port}; pass --upstream-port")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FAREBOX_")}
    conf = (BENCH / "nginx-upstream.conf").read_text().replace("127.0.0.1:9000", f"{run.HOST}:{args.upstream_port}")
    (tmp / "nginx.conf").write_text(conf)
    log = tmp / "nginx.log"
    proc = procs.start("nginx", [nginx, "-e", "stderr", "-p", str(tmp), "-c", "nginx.conf"], log=log, env=base_env)
    upstream = f"http://{run.HOST}:{args.upstream_port}"
    run.wait_ready("nginx", proc, log, lambda: run.http("GET", f"{upstream}/v1/models")[0] == 200)
    (tmp / "catalog.toml").write_text(run.CATALOG.format(port=args.upstream_port))

    gateways = {}
    for name, rev in (("base", args.base), ("new", args.new)):
        src, label = checkout(rev, tmp, name)
        gateways[name] = {**start_gateway(procs, tmp, name, src, args.upstream_port, base_env), "label": label}
    run.say(f"ab: base = {gateways['base']['label']}, new = {gateways['new']['label']}; {args.rounds} rounds of "
            f"{args.seconds} s per gateway and mode ({', '.join(args.modes)}), {args.connections} connections")

    wrk = run.Wrk(wrk_bin, procs, tmp)
    failed = []

    def measure(name: str, mode: str, secs: int) -> tuple[float, float | None, float]:
        g = gateways[name]
        before = cpu_seconds(g["proc"].pid)
        out, _ = wrk.run(g["url"], args.connections, secs, {**MODES[mode], "BENCH_KEY": g["key"]})
        spent = cpu_seconds(g["proc"].pid) - before
        if out["errors"] or not out["requests"]:
            failed.append(f"{name} {mode}: {out['requests']} requests, {out['errors']} errors")
            return float("nan"), None, float("nan")
        return spent / out["requests"] * 1e6, out["p50_us"], out["requests"] / secs

    for name in gateways:           # warm both up: imports, caches, the first WAL pages
        for mode in args.modes:
            measure(name, mode, 2)
    cpu: dict[tuple[str, str], list[float]] = {(n, m): [] for n in gateways for m in args.modes}
    p50: dict[tuple[str, str], list[float]] = {(n, m): [] for n in gateways for m in args.modes}
    # Throughput as well as CPU: a change that moves work off the event loop's thread (or
    # onto it) changes req/s by more, or less, than its CPU a request suggests.
    rps: dict[tuple[str, str], list[float]] = {(n, m): [] for n in gateways for m in args.modes}
    for r in range(args.rounds):
        order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
        for mode in args.modes:
            for name in order:
                us, lat, rate = measure(name, mode, args.seconds)
                cpu[(name, mode)].append(us)
                rps[(name, mode)].append(rate)
                if lat is not None:
                    p50[(name, mode)].append(lat)
        run.say(f"ab: round {r + 1}/{args.rounds}: " + "; ".join(
            f"{m} base {cpu[('base', m)][-1]:.0f} new {cpu[('new', m)][-1]:.0f} µs CPU/req, "
            f"{rps[('base', m)][-1]:,.0f} / {rps[('new', m)][-1]:,.0f} req/s" for m in args.modes))
    if failed:
        raise run.Failure("a gateway answered errors: " + "; ".join(failed))

    run.say("")
    run.say("| mode | base µs CPU/req (median) | new µs CPU/req (median) | new - base, median of rounds | "
            "rounds new cheaper | p50 base / new | req/s new / base, median of rounds |")
    run.say("|---|---:|---:|---:|---:|---:|---:|")
    for mode in args.modes:
        b, n = cpu[("base", mode)], cpu[("new", mode)]
        diffs = [y - x for x, y in zip(b, n, strict=True)]
        cheaper = sum(d < 0 for d in diffs)
        speedup = statistics.median(y / x for x, y in zip(rps[("base", mode)], rps[("new", mode)], strict=True))
        run.say(f"| {mode} | {statistics.median(b):.1f} | {statistics.median(n):.1f} | "
                f"{statistics.median(diffs):+.1f} ({statistics.median(diffs) / statistics.median(b) * 100:+.1f}%) | "
                f"{cheaper} of {len(diffs)} | {statistics.median(p50[('base', mode)]) / 1000:.2f} / "
                f"{statistics.median(p50[('new', mode)]) / 1000:.2f} ms | {speedup:.3f} |")
    if args.out is not None:
        args.out.write_text(json.dumps({
            "base": gateways["base"]["label"], "new": gateways["new"]["label"], "connections": args.connections,
            "seconds": args.seconds, "modes": {m: {"base_us": cpu[("base", m)], "new_us": cpu[("new", m)],
                                                   "base_p50_us": p50[("base", m)], "new_p50_us": p50[("new", m)],
                                                   "base_rps": rps[("base", m)], "new_rps": rps[("new", m)]}
                                               for m in args.modes}}, indent=1))
    return 0


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, run._on_signal)
    procs = run.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="farebox-ab-"))
    try:
        return ab(args, procs, tmp)
    except run.Failure as e:
        print(f"\nab: FAILED: {e}", file=sys.stderr)
        return 1 if "answered errors" in str(e) else 2
    except KeyboardInterrupt:
        print("\nab: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        for name in ("base", "new"):
            if (tmp / name).exists():
                subprocess.run(["git", "-C", str(run.REPO), "worktree", "remove", "--force", str(tmp / name)],
                               capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
