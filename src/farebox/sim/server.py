"""App factory, routes and runners for `farebox sim`, the simulated LLM upstream."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import asdict

from aiohttp import web

from farebox.sim.anthropic import MessagesDialect
from farebox.sim.completions import CompletionsDialect
from farebox.sim.embeddings import EmbeddingsDialect
from farebox.sim.flow import handler
from farebox.sim.gemini import GenerateContentDialect
from farebox.sim.h2 import Site
from farebox.sim.openai import ChatDialect, json_response
from farebox.sim.stats import KeyCounts, Stats

_MAX_BODY = 64 * 1024 * 1024  # long prompts are a legitimate test input
_SHUTDOWN_TIMEOUT_S = 1.0  # hanging requests would otherwise hold shutdown for a minute

STATS = web.AppKey("farebox_sim_stats", Stats)
KEYS = web.AppKey("farebox_sim_keys", KeyCounts)

# Listed by GET /v1/models; chat accepts any model id, so retrieving one does too.
MODELS = ("sim-small", "sim-large", "sim-reasoner")


def _model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "farebox-sim"}


async def _list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model(m) for m in MODELS]})


async def _get_model(request: web.Request) -> web.Response:
    return json_response(_model(request.match_info["model"]))


async def _stats(request: web.Request) -> web.Response:
    return json_response(asdict(request.app[STATS]))


async def _stats_reset(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    stats.reset()
    request.app[KEYS].reset()
    return json_response(asdict(stats))


async def _keys(request: web.Request) -> web.Response:
    return json_response(request.app[KEYS].counts)


def create_app() -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY)
    stats = app[STATS] = Stats()
    keys = app[KEYS] = KeyCounts()
    routes = {
        "/v1/chat/completions": handler(ChatDialect(), stats, keys),
        "/v1/completions": handler(CompletionsDialect(), stats, keys),
        "/v1/embeddings": handler(EmbeddingsDialect(), stats, keys),
        "/v1/messages": handler(MessagesDialect(), stats, keys),
    }
    generate = handler(GenerateContentDialect(False), stats, keys)
    stream = handler(GenerateContentDialect(True), stats, keys)
    for version in ("v1beta", "v1"):  # Gemini's API lives under both; the SDKs pick one
        routes[f"/{version}/models/{{model}}:generateContent"] = generate
        routes[f"/{version}/models/{{model}}:streamGenerateContent"] = stream
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_post("/_sim/stats/reset", _stats_reset)
    app.router.add_get("/_sim/keys", _keys)
    # Every API route also lives under /_sim/{controls}/ so a provider's base URL
    # can carry its behaviour, e.g. http://127.0.0.1:8090/_sim/status=503/v1
    for prefix in ("", "/_sim/{controls}"):
        for path, handle in routes.items():
            app.router.add_post(prefix + path, handle)
        app.router.add_get(prefix + "/v1/models", _list_models)
        app.router.add_get(prefix + "/v1/models/{model:.+}", _get_model)
    return app


async def start(host: str = "127.0.0.1", port: int = 8090) -> tuple[web.AppRunner, int]:
    """Start serving in the running loop; returns the runner and the bound port."""
    runner = web.AppRunner(
        create_app(),
        # Cancel a handler as soon as its client disconnects: that is how sleeps
        # (ttft, pacing, hang) notice a gone gateway without polling.
        handler_cancellation=True,
        access_log=None,  # 10k streams would otherwise mean 10k log lines
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    # HTTP/1.1 and HTTP/2 with prior knowledge on one port; h2 requests reach the same
    # handlers through a loopback HTTP/1.1 connection (see sim/h2.py).
    site = Site(runner, host, port, max_body=_MAX_BODY, drain_s=_SHUTDOWN_TIMEOUT_S, backlog=4096)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def _raise_fd_limit() -> None:
    # Thousands of concurrent streams need thousands of sockets; lift the soft
    # limit to the hard one where the platform allows it.
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        inf = resource.RLIM_INFINITY
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != inf and (hard == inf or hard > soft):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != inf else max(soft, 65536), hard))


async def _serve(host: str, port: int) -> None:
    runner, bound = await start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no loop signal handlers
            loop.add_signal_handler(sig, stop.set)
    print(f"farebox sim listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(host: str = "127.0.0.1", port: int = 8090) -> None:
    """Blocking entry point of `farebox sim`; serves until SIGINT/SIGTERM."""
    _raise_fd_limit()
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(host, port))
