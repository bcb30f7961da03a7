#!/usr/bin/env python3
"""Issue 7, target 6: Farebox's footprint. Idle resident memory at most 100 MB; ready to
serve within 1 s of start with a 1,000-model catalog.

    bench/footprint.py                  # 7 starts, plus the start-up and memory breakdown
    bench/footprint.py --smoke          # 2 starts, a shorter idle wait (CI)
    bench/footprint.py --starts 11 --out bench/out/footprint.json

Writes a catalog of 1,000 generated models (50 providers of all three dialects, two to four
endpoints each, with pricing, context lengths, modalities, options and variants shaped like
src/farebox/catalog/builtin.toml) plus one model served by a canned upstream this script
runs on loopback. The built-in catalog stays on, as an operator's would. Then, several times,
each with a fresh FAREBOX_HOME:

* starts `farebox serve` (the console script in .venv) and measures, from just before exec,
  the time to the first 200 from GET /health and to the first GET /api/v1/models that lists
  every generated model (both polled every 5 ms);
* reads VmRSS from /proc/<pid>/status after 3 s idle, then sends a handful of requests
  (organization, credits, key, one chat completion, the model list, a model's endpoints)
  and reads it again after 1 s idle;
* stops the server with SIGTERM.

Medians and maxima over the starts are printed and written as JSON. Then the breakdown, in
separate processes: `python -X importtime` of what `farebox serve` imports, summed by package;
a staged start-up in one process (imports, settings, catalog load, Gateway(), Api()) with the
time and RSS after each stage; and tracemalloc's view of what Python allocated, by package.

main() returns the results as a dict. Exit status: 0 when the server started every time and
answered correctly (the targets are reported, not enforced: absolute figures drift on shared
machines); 1 when it answered wrongly; 2 when it did not start. Standard library only; the
server runs in the repository's .venv. See docs/performance.md, "Footprint".
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = REPO / ".venv" / "bin" / "python"
FAREBOX = REPO / ".venv" / "bin" / "farebox"
HOST = "127.0.0.1"

READY_TARGET_S = 1.0
RSS_TARGET_MB = 100.0
MODELS = 1000
PROVIDERS = 50
POLL_S = 0.005
OTHER_CPU_MAX = 0.15  # cores used by other processes below which the machine counts as quiet

# What `farebox serve` imports before it builds the gateway (cli/main.py, then cli/run.py's serve).
SERVE_IMPORTS = "import farebox.cli.main, farebox.cli.run; import farebox.app, farebox.api.router"


class StartFailure(Exception):
    """The server did not start or did not answer (exit 2)."""


class WrongAnswer(Exception):
    """The server answered, but not what it should have (exit 1)."""


# -- the catalog ----------------------------------------------------------------------------

_AUTHORS = ("openai", "anthropic", "google", "meta-llama", "mistralai", "qwen", "deepseek", "x-ai",
            "cohere", "microsoft", "nvidia", "ai21", "amazon", "01-ai", "nousresearch", "thudm")
_TOKENIZERS = {"openai": "GPT", "anthropic": "Claude", "google": "Gemini", "meta-llama": "Llama3",
               "mistralai": "Mistral", "qwen": "Qwen3", "deepseek": "DeepSeek", "x-ai": "Grok"}
_PARAMS = {
    "openai": ["temperature", "top_p", "max_tokens", "max_completion_tokens", "frequency_penalty",
               "presence_penalty", "seed", "stop", "response_format", "structured_outputs", "tools",
               "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "logit_bias"],
    "anthropic": ["temperature", "top_p", "top_k", "max_tokens", "stop", "tools", "tool_choice",
                  "reasoning", "include_reasoning"],
    "gemini": ["temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "response_format",
               "structured_outputs", "tools", "tool_choice", "reasoning", "include_reasoning"],
}
_QUANTS = ("unknown", "fp8", "bf16", "int4", "fp16", "int8")
_OPTIONS = ('options = { max_tokens_field = "max_tokens" }',
            'options = { reasoning_field = "reasoning_content", stream_usage = "always" }',
            'options = { seed_field = "random_seed", drop_fields = ["logit_bias"] }', "")


def _dialect(p: int) -> str:
    return ("openai", "openai", "openai", "anthropic", "gemini")[p % 5]


def _price(nanos_per_mtok: int) -> str:
    """USD per token as a plain decimal string: nanos_per_mtok is USD per million tokens x 1000."""
    return f"{nanos_per_mtok / 10**9:.12f}".rstrip("0").rstrip(".") or "0"


def catalog_toml(local_upstream: str) -> str:
    """A 1,000-model catalog shaped like builtin.toml, plus provider `fp-local` (the canned
    upstream at `local_upstream`) with model `fp/local`. Keys: env:FP_KEY_<n> for most
    providers (set by provider_env()), `none` for every seventh."""
    out = ["# Written by bench/footprint.py: 1,000 generated models over 50 providers.\n"]
    for p in range(PROVIDERS):
        dialect = _dialect(p)
        api_key = "none" if p % 7 == 0 else f"env:FP_KEY_{p}"
        options = _OPTIONS[p % len(_OPTIONS)] if dialect == "openai" else (
            'options = { anthropic_beta = ["prompt-caching-2024-07-31"] }' if dialect == "anthropic" and p % 2 else "")
        out.append(f"""
# Provider {p}: a {dialect}-dialect host.
[providers.fp-{p:02d}]
name = "Footprint Provider {p}"
dialect = "{dialect}"
base_url = "https://api.provider-{p}.example/v1/"
api_key = "{api_key}"
trains_on_prompts = {str(p % 11 == 0).lower()}
retains_prompts = {str(p % 3 != 0).lower()}
{options}
""")
    out.append(f"""
[providers.fp-local]
name = "Footprint canned upstream"
dialect = "openai"
base_url = "{local_upstream}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "fp/local"
name = "Footprint: Local"
context_length = 128000

  [[models.endpoints]]
  provider = "fp-local"
  model = "canned"
  max_completion_tokens = 16384
  supported_parameters = ["temperature", "max_tokens"]
  [models.endpoints.pricing]
  prompt = "0.00000015"
  completion = "0.0000006"
""")
    for m in range(MODELS):
        author = _AUTHORS[m % len(_AUTHORS)]
        variant = ":thinking" if m % 25 == 24 else (":free" if m % 40 == 39 else "")
        model_id = f"{author}/model-{m:04d}{variant}"
        context = (8192, 32768, 131072, 200000, 1048576)[m % 5]
        inputs = ('["text"]', '["text", "image"]', '["text", "image", "file"]',
                  '["text", "image", "audio", "video"]')[m % 4]
        outputs = '["embeddings"]' if m % 50 == 17 else '["text"]'
        defaults = "default_parameters = { reasoning = { max_tokens = 2048 } }\n" if variant == ":thinking" else ""
        out.append(f"""
[[models]]
id = "{model_id}"
name = "{author.title()}: Model {m}{variant}"
description = "Generated model {m} of the footprint benchmark, with a one-sentence description of realistic length."
created = {1700000000 + m * 86400}
context_length = {context}
input_modalities = {inputs}
output_modalities = {outputs}
tokenizer = "{_TOKENIZERS.get(author, 'Other')}"
{'instruct_type = "llama3"' if author == "meta-llama" else ""}
{f'hugging_face_id = "{author}/Model-{m}"' if m % 3 == 0 else ""}
{defaults}""")
        for e in range(2 + m % 3):
            p = (m * 7 + e * 13) % PROVIDERS
            params = _PARAMS[_dialect(p)][: 6 + (m + e) % 8]
            if variant == ":thinking" and "reasoning" not in params:
                params = [*params, "reasoning"]
            prompt = 50 + (m * 37 + e * 11) % 5000
            cache = f'input_cache_read = "{_price(prompt // 10)}"\n  ' if e % 2 == 0 else ""
            reasoning = f'internal_reasoning = "{_price(prompt * 3)}"\n  ' if variant == ":thinking" else ""
            ep_context = context if e == 0 else context // 2
            max_out = "" if outputs == '["embeddings"]' else f"max_completion_tokens = {min(ep_context, 16384)}\n  "
            free = variant == ":free"
            out.append(f"""
  [[models.endpoints]]
  provider = "fp-{p:02d}"
  model = "upstream-model-{m}-{e}"
  context_length = {ep_context}
  {max_out}quantization = "{_QUANTS[(m + e) % len(_QUANTS)]}"
  supported_parameters = {json.dumps(params)}
  [models.endpoints.pricing]
  prompt = "{'0' if free else _price(prompt)}"
  completion = "{'0' if free else _price(prompt * 4)}"
  {cache if not free else ''}{reasoning if not free else ''}""")
    return "".join(out)


def provider_env() -> dict[str, str]:
    return {f"FP_KEY_{p}": f"sk-footprint-{p}" for p in range(PROVIDERS) if p % 7}


def generated_ids() -> set[str]:
    ids = set()
    for m in range(MODELS):
        variant = ":thinking" if m % 25 == 24 else (":free" if m % 40 == 39 else "")
        ids.add(f"{_AUTHORS[m % len(_AUTHORS)]}/model-{m:04d}{variant}")
    return ids


# -- the canned upstream --------------------------------------------------------------------

_COMPLETION = json.dumps({
    "id": "chatcmpl-fp", "object": "chat.completion", "created": 1700000000, "model": "canned",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}).encode()


class _Canned(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(_COMPLETION)))
        self.end_headers()
        self.wfile.write(_COMPLETION)

    def log_message(self, *args: object) -> None:
        pass


# -- HTTP and processes ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: object = None, token: str | None = None,
            timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (10**6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, kb = line.split()[:2]
            values[name] = int(kb) * 1024 / 10**6
    return values["VmRSS:"], values["VmHWM:"]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used: steadier than wall time on a busy host."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def server_env(base: dict[str, str], tmp: Path, home: Path, catalog: Path, port: int) -> dict[str, str]:
    """The server's environment. Bytecode is cached under tmp/pycache, whatever the caller's
    PYTHONDONTWRITEBYTECODE says: the first start compiles everything (even what already has
    a __pycache__, so it is a truly cold start), later starts run from the cache as an
    installed server would."""
    env = {k: v for k, v in base.items() if not k.startswith("FAREBOX_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **provider_env(), "PYTHONPYCACHEPREFIX": str(tmp / "pycache"), "FAREBOX_HOME": str(home),
            "FAREBOX_HOST": HOST, "FAREBOX_PORT": str(port), "FAREBOX_CATALOG_PATH": str(catalog),
            "FAREBOX_LOG_LEVEL": "warning"}


# -- one start ------------------------------------------------------------------------------

def busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, steal included, idle and
    I/O wait not), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit_s: float, cores: float = OTHER_CPU_MAX) -> None:
    """Wait up to limit_s until the machine (other engineers, test runs) uses at most
    `cores` CPUs over a second: start-up times on a busy 2-CPU host mean little."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = busy_s()
        time.sleep(1.0)
        if busy_s() - before <= cores:
            return


def one_start(tmp: Path, n: int, catalog: Path, expected: set[str], idle_s: float) -> dict[str, float]:
    home = tmp / f"home-{n}"
    home.mkdir()
    port = free_port()
    log = tmp / f"serve-{n}.log"
    env = server_env(dict(os.environ), tmp, home, catalog, port)
    mine = time.process_time()
    with open(log, "wb") as out:
        busy0, t0 = busy_s(), time.monotonic()
        proc = subprocess.Popen([str(FAREBOX), "serve"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        health_s = _poll(proc, log, t0, lambda: request(port, "GET", "/health", timeout=2)[0] == 200)
        models_s = _poll(proc, log, t0, lambda: _lists_all(port, expected))
        cpu_ready = cpu_s(proc.pid)
        # Cores used by everything but the server and this script while the server started.
        other = max(0.0, busy_s() - busy0 - cpu_ready - (time.process_time() - mine)) / models_s
        rss_ready = rss_mb(proc.pid)[0]
        time.sleep(idle_s)
        rss_idle = rss_mb(proc.pid)[0]
        _exercise(port, home)
        time.sleep(1.0)
        rss_used, hwm = rss_mb(proc.pid)
        return {"ready_health_s": health_s, "ready_models_s": models_s, "cpu_at_ready_s": cpu_ready,
                "cpu_other_cores": round(other, 2), "rss_ready_mb": rss_ready, "rss_idle_mb": rss_idle,
                "rss_after_requests_mb": rss_used, "rss_peak_mb": hwm}
    finally:
        stop(proc)


def _poll(proc: subprocess.Popen, log: Path, t0: float, probe: Any, timeout: float = 30.0) -> float:
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise StartFailure(f"farebox serve exited with status {proc.returncode}; its log:\n{tail(log)}")
        try:
            if probe():
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(POLL_S)
    raise StartFailure(f"farebox serve not ready after {timeout:.0f} s; its log:\n{tail(log)}")


def _lists_all(port: int, expected: set[str]) -> bool:
    status, raw = request(port, "GET", "/api/v1/models")
    if status != 200:
        return False
    listed = {m["id"] for m in json.loads(raw)["data"]}
    missing = expected - listed
    if missing:
        raise WrongAnswer(f"/api/v1/models lacks {len(missing)} generated models, e.g. {sorted(missing)[:3]}")
    return True


def _exercise(port: int, home: Path) -> None:
    """A handful of requests of the kinds a fresh server sees first."""
    mkey = (home / "management_key").read_text().strip()

    def call(method: str, path: str, body: object = None, token: str | None = mkey, want: int = 200) -> Any:
        status, raw = request(port, method, path, body, token)
        if status not in (want, 201):
            raise WrongAnswer(f"{method} {path} answered {status}: {raw[:400]!r}")
        return json.loads(raw)

    call("POST", "/api/v1/organizations", {"name": "fp"})
    call("POST", "/api/v1/organizations/fp/credits", {"amount": "10.00", "reference": "fp"})
    key = call("POST", "/api/v1/keys", {"organization": "fp", "name": "fp"})["key"]
    reply = call("POST", "/api/v1/chat/completions",
                 {"model": "fp/local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}, key)
    if reply["choices"][0]["message"]["content"] != "ok":
        raise WrongAnswer(f"chat completion answered {reply!r}")
    call("GET", "/api/v1/key", token=key)
    call("GET", "/api/v1/credits", token=key)
    for _ in range(3):
        call("GET", "/api/v1/models", token=None)
    call("GET", "/api/v1/models/qwen/model-0005/endpoints", token=None)


# -- the breakdown --------------------------------------------------------------------------

def import_times(env: dict[str, str]) -> dict[str, Any]:
    """`python -X importtime` of what serve imports: the total and the top packages by self time."""
    proc = subprocess.run([str(PY), "-X", "importtime", "-c", SERVE_IMPORTS], capture_output=True, text=True,
                          env=env, check=True)
    by_package: dict[str, int] = {}
    farebox: dict[str, int] = {}
    total = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, indented = line[len("import time:"):].split("|")
        name = indented.strip()
        top = name.split(".")[0]
        by_package[top] = by_package.get(top, 0) + int(self_us)
        if top == "farebox":
            farebox[name] = int(cumulative)
        if indented[1:2] != " ":  # a top-level import (one space after the bar)
            total += int(cumulative)
    top = sorted(by_package.items(), key=lambda kv: -kv[1])[:15]
    return {"total_ms": total / 1000, "top_packages_self_ms": {k: v / 1000 for k, v in top},
            "farebox_modules_cumulative_ms": {k: v / 1000 for k, v in
                                              sorted(farebox.items(), key=lambda kv: -kv[1])[:12]}}


# Runs inside the .venv python: each stage of serve's start-up, timed, with RSS after it.
_STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
def mem():
    values = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line[:5]] = int(line.split()[1]) * 1024 / 1e6
    return values["VmRSS"], values["VmHWM"]
stages = [("interpreter", 0.0, 0.0, *mem())]
def stage(name, t, c):
    stages.append((name, time.perf_counter() - t, time.process_time() - c, *mem()))
def clocks():
    return time.perf_counter(), time.process_time()
trace = sys.argv[1] == "trace"
if trace:
    import tracemalloc
    tracemalloc.start()
t, c = clocks(); import farebox.cli.main, farebox.cli.run; stage("import farebox.cli.main, farebox.cli.run", t, c)
t, c = clocks(); import farebox.app, farebox.api.router; stage("import farebox.app, farebox.api.router", t, c)
t, c = clocks()
from farebox.settings import load_settings
settings = load_settings(None)
stage("load_settings()", t, c)
t, c = clocks()
from farebox.catalog.load import load_catalog
catalog = load_catalog(builtin=settings.catalog_builtin, extra_path=settings.catalog_path)
stage(f"load_catalog() ({len(catalog.models)} models)", t, c)
t, c = clocks(); gw = farebox.app.Gateway(settings, catalog=catalog); stage("Gateway(catalog=) (the rest)", t, c)
t, c = clocks(); api = farebox.api.router.Api(gw); stage("Api() (renders /models)", t, c)
out = {"stages": [{"stage": n, "ms": round(s * 1000, 1), "cpu_ms": round(c * 1000, 1), "rss_mb": round(r, 1),
                   "hwm_mb": round(h, 1)} for n, s, c, r, h in stages],
       "modules": len(sys.modules)}
if trace:
    snap = tracemalloc.take_snapshot()
    by = {}
    for stat in snap.statistics("filename"):
        f = stat.traceback[0].filename
        if "/site-packages/" in f:
            key = f.split("/site-packages/")[1].split("/")[0].removesuffix(".py")
        elif "/src/farebox/" in f:
            key = "farebox." + f.split("/src/farebox/")[1].removesuffix(".py").replace("/", ".")
        elif f.startswith("<"):
            key = f
        else:
            key = "stdlib:" + f.rsplit("/", 1)[-1]
        by[key] = by.get(key, 0) + stat.size
    out["traced_mb"] = round(sum(by.values()) / 1e6, 2)
    out["traced_top_mb"] = {k: round(v / 1e6, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:20]}
print(json.dumps(out))
"""


def staged(env: dict[str, str], home: Path, trace: bool) -> dict[str, Any]:
    home.mkdir()
    proc = subprocess.run([str(PY), "-c", _STAGES, "trace" if trace else "plain"], capture_output=True,
                          text=True, env={**env, "FAREBOX_HOME": str(home)})
    if proc.returncode != 0:
        raise StartFailure(f"the staged start-up failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


# -- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="2 starts, 1 s idle wait, no breakdown")
    ap.add_argument("--starts", type=int, default=None, help="server starts to measure (default 7; 2 with --smoke)")
    ap.add_argument("--idle", type=float, default=None, help="seconds idle before the idle RSS (default 3)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help=f"before each start, wait up to S seconds until other processes use at most "
                         f"{OTHER_CPU_MAX} CPUs (default 30; 0 with --smoke)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip importtime, stages and tracemalloc")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    ap.add_argument("--keep-temp", action="store_true", help="keep the temp dir (catalog, logs, homes)")
    return ap.parse_args(argv)


def _summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"median": round(statistics.median(r[key] for r in runs), 4),
                  "max": round(max(r[key] for r in runs), 4)} for key in runs[0]}


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    starts = args.starts or (2 if args.smoke else 7)
    idle = args.idle if args.idle is not None else (1.0 if args.smoke else 3.0)
    quiet = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.smoke else 30.0)
    upstream = http.server.ThreadingHTTPServer((HOST, 0), _Canned)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        catalog = tmp / "catalog.toml"
        catalog.write_text(catalog_toml(f"http://{HOST}:{upstream.server_address[1]}/v1"))
        expected = generated_ids() | {"fp/local"}
        runs = []
        for n in range(starts + 1):
            wait_quiet(quiet)
            runs.append(one_start(tmp, n, catalog, expected, idle))
            r = runs[-1]
            what = "cold start (no bytecode cache)" if n == 0 else f"start {n}/{starts}"
            print(f"footprint: {what}: /health {r['ready_health_s'] * 1000:.0f} ms, "
                  f"/models {r['ready_models_s'] * 1000:.0f} ms (CPU {r['cpu_at_ready_s'] * 1000:.0f} ms, "
                  f"other load {r['cpu_other_cores']:.2f} cores); RSS ready {r['rss_ready_mb']:.1f} MB, "
                  f"idle {r['rss_idle_mb']:.1f} MB, after requests {r['rss_after_requests_mb']:.1f} MB",
                  flush=True)
        result: dict[str, Any] = {
            "ok": True, "catalog": {"models": MODELS + 1, "providers": PROVIDERS + 1, "builtin": True,
                                    "bytes": catalog.stat().st_size},
            "starts": starts, "idle_s": idle, "cold": runs[0], "runs": runs[1:], "summary": _summary(runs[1:])}
        s = result["summary"]
        result["targets"] = {
            # Ready time is judged by its median (one start can meet a busy neighbour); resident
            # memory by its worst start, which noise does not raise.
            "ready_s": {"target": READY_TARGET_S, "median": s["ready_models_s"]["median"],
                        "max": s["ready_models_s"]["max"], "met": s["ready_models_s"]["median"] <= READY_TARGET_S},
            "idle_rss_mb": {"target": RSS_TARGET_MB, "median": s["rss_after_requests_mb"]["median"],
                            "max": s["rss_after_requests_mb"]["max"],
                            "met": s["rss_after_requests_mb"]["max"] <= RSS_TARGET_MB},
        }
        if not (args.smoke or args.no_breakdown):
            env = server_env(dict(os.environ), tmp, tmp / "unused", catalog, 0)
            result["import_time"] = import_times(env)
            result["stages"] = staged(env, tmp / "home-stages", trace=False)
            result["tracemalloc"] = staged(env, tmp / "home-trace", trace=True)
        return result
    finally:
        upstream.shutdown()
        upstream.server_close()


def report(result: dict[str, Any]) -> None:
    s, t = result["summary"], result["targets"]
    print(f"\nfootprint: {result['starts']} starts, catalog of {result['catalog']['models']} models "
          f"(+ built-in), {result['catalog']['bytes'] / 1e6:.2f} MB of TOML")
    print(f"  {'measure':28} {'median':>9} {'max':>9}")
    for key, unit, scale in (("ready_health_s", "ms", 1000), ("ready_models_s", "ms", 1000),
                             ("cpu_at_ready_s", "ms", 1000), ("cpu_other_cores", "  ", 100),
                             ("rss_ready_mb", "MB", 1), ("rss_idle_mb", "MB", 1),
                             ("rss_after_requests_mb", "MB", 1), ("rss_peak_mb", "MB", 1)):
        if scale == 100:   # cores, two decimals
            print(f"  {key:28} {s[key]['median']:>7.2f}{unit} {s[key]['max']:>7.2f}{unit}")
            continue
        print(f"  {key:28} {s[key]['median'] * scale:>7.1f}{unit} {s[key]['max'] * scale:>7.1f}{unit}")
    c = result["cold"]
    print(f"  cold start (no bytecode cache): /models {c['ready_models_s'] * 1000:.0f} ms, "
          f"idle RSS {c['rss_idle_mb']:.1f} MB")
    for name, v in t.items():
        print(f"  target {name}: <= {v['target']}: {'met' if v['met'] else 'MISSED'} (median {v['median']}, max {v['max']})")
    if "import_time" in result:
        it = result["import_time"]
        print(f"\n  imports ({SERVE_IMPORTS!r}): {it['total_ms']:.0f} ms under -X importtime; self time by package:")
        print("    " + ", ".join(f"{k} {v:.0f}" for k, v in it["top_packages_self_ms"].items()))
        print(f"  start-up stages in one process ({result['stages']['modules']} modules imported):")
        print(f"    {'stage':46} {'wall':>9} {'CPU':>9} {'RSS after':>10} {'peak':>9}")
        for st in result["stages"]["stages"]:
            print(f"    {st['stage']:46} {st['ms']:>6.1f} ms {st['cpu_ms']:>6.1f} ms {st['rss_mb']:>7.1f} MB"
                  f" {st['hwm_mb']:>6.1f} MB")
        tm = result["tracemalloc"]
        print(f"  tracemalloc after Api(): {tm['traced_mb']} MB traced; by package/module:")
        print("    " + ", ".join(f"{k} {v}" for k, v in list(tm["traced_top_mb"].items())[:14]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the footprint benchmark; the results as a JSON-able dict. `error` and `exit` are
    set when the server did not start (exit 2) or answered wrongly (exit 1)."""
    args = parse_args(argv)
    if not FAREBOX.exists():
        return {"ok": False, "exit": 2, "error": f"{FAREBOX} not found; run bench/run once or pip install -e ."}
    tmp = Path(tempfile.mkdtemp(prefix="farebox-footprint-"))
    try:
        result = measure(args, tmp)
        result["exit"] = 0
        report(result)
    except StartFailure as e:
        result = {"ok": False, "exit": 2, "error": str(e)}
    except WrongAnswer as e:
        result = {"ok": False, "exit": 1, "error": str(e)}
    finally:
        if args.keep_temp:
            print(f"footprint: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if "error" in result:
        print(f"footprint: FAILED: {result['error']}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main()["exit"])
