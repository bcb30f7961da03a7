"""Long-running commands: serve, sim, demo."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
from pathlib import Path

import typer

from farebox.api.server import Server
from farebox.cli.fdlimit import raise_open_files_limit
from farebox.errors import ConfigError
from farebox.settings import Settings, load_settings

log = logging.getLogger("farebox")


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as e:
        typer.echo(f"farebox: configuration error: {e}", err=True)
        raise typer.Exit(2) from None


def _gateway(settings: Settings):  # type: ignore[no-untyped-def]
    from farebox.app import Gateway
    from farebox.store.journal import JournalError
    from farebox.store.sqlite import DatabaseInUse

    try:
        return Gateway(settings)
    except ConfigError as e:
        typer.echo(f"farebox: configuration error: {e}", err=True)
        raise typer.Exit(2) from None
    except DatabaseInUse as e:
        typer.echo(f"farebox: {e}; one server per database", err=True)
        raise typer.Exit(2) from None
    except JournalError as e:
        typer.echo(f"farebox: {e}", err=True)
        raise typer.Exit(2) from None


def _server(app: object, settings: Settings) -> Server:
    from farebox.api.server import access_log

    access_log.disabled = not settings.access_log
    return Server(app, host=settings.host, port=settings.port, backlog=4096,  # type: ignore[arg-type]
                  keepalive_s=settings.http_keepalive_s, shutdown_grace_s=settings.shutdown_grace_s)


def _bound_port(server: Server) -> int:
    return server.bound_port


def _settle_heap() -> None:
    """Once started: everything built so far (the catalog, the book, the directory) lives as
    long as the process, so move it out of the collector's sight (gc.freeze). Full
    collections then scan only what requests made, and stop pausing the loop for
    milliseconds (the p99 of issue 7). Requests make few reference cycles, so every
    generation is collected less often too: with 8,000 open streams a full collection
    stopped the loop for over a second, and CPython's defaults ran one every few seconds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# Allocations between young collections, young collections between middle ones, middle ones
# between full ones (CPython's defaults: 700, 10, 10). Under load that is a full collection
# about once a minute, never more often.
GC_THRESHOLDS = (10_000, 50, 100)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(host: str = typer.Option(None, help="Listen address (setting: host)."),
          port: int = typer.Option(None, help="Listen port (setting: port)."),
          config: Path = typer.Option(None, help="farebox.toml to read (default: FAREBOX_CONFIG, "
                                                  "else FAREBOX_HOME/farebox.toml if present).")) -> None:
    settings = _settings(config, host=host, port=port)
    _logging(settings.log_level)
    raise_open_files_limit()  # every open stream holds two sockets
    from farebox.api.router import Api

    gateway = _gateway(settings)
    server = _server(Api(gateway), settings)

    async def main() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            _settle_heap()
            print(f"farebox serving on http://{settings.host}:{_bound_port(server)} "
                  f"(database {settings.database_file}, management key {settings.management_key_file})", flush=True)
        await task

    _run(main())
    if not server.started:
        raise typer.Exit(1)


def sim(host: str = typer.Option("127.0.0.1", help="Listen address."),
        port: int = typer.Option(8090, help="Listen port.")) -> None:
    from farebox.sim.server import run as run_sim

    run_sim(host, port)


def demo(port: int = typer.Option(8080, help="Gateway port (0 picks a free one)."),
         host: str = typer.Option("127.0.0.1", help="Listen address of the gateway and the simulator."),
         sim_port: int = typer.Option(0, help="Simulator port (0 picks a free one)."),
         as_json: bool = typer.Option(False, "--json", help="Print one JSON line once ready.")) -> None:
    """The simulator and the gateway in one process, with a catalog of simulated models
    and an organization `demo` funded with $10.00. State lives in FAREBOX_HOME/demo."""
    base = _settings(None)
    home = base.home_path / "demo"
    settings = base.replace(home=str(home), host=host, port=port, database_path="", catalog_builtin=False,
                            catalog_path=str(home / "catalog.toml"))
    _logging("warning" if as_json else settings.log_level)
    _run(_demo(settings, sim_port, as_json))


async def _demo(settings: Settings, sim_port: int, as_json: bool) -> None:
    from farebox.api.router import Api
    from farebox.app import read_or_create_secret
    from farebox.catalog.simulated import SIM_MODELS, sim_catalog
    from farebox.ids import key_hash
    from farebox.sim.server import start as start_sim
    from farebox.sim.stripe import start as start_fake_stripe

    runner, bound_sim = await start_sim(settings.host, sim_port)
    # A fake Stripe stands in for the payment rail, so buying credits works in the demo too.
    stripe_runner, bound_stripe = await start_fake_stripe(settings.host, 0)
    stripe_url = f"http://{settings.host}:{bound_stripe}"
    settings = settings.replace(stripe_secret_key="sk_test_demo", stripe_webhook_secret="whsec_demo",
                                stripe_api_base=stripe_url)
    home = settings.home_path
    home.mkdir(parents=True, exist_ok=True)
    Path(settings.catalog_path).write_text(sim_catalog(f"http://{settings.host}:{bound_sim}/v1"))
    gateway = _gateway(settings)
    await gateway.start()
    directory = gateway.directory
    org = directory.orgs_by_name.get("demo") or await directory.create_org("demo")
    await gateway.ledger.grant(org.id, 10 * 10**9, "demo-welcome", "demo credit")
    key_file = home / "demo_key"
    api_key = key_file.read_text().strip() if key_file.exists() else None
    if api_key is None or key_hash(api_key) not in directory.keys:
        _, api_key = await directory.create_key(org, "demo")
        key_file.unlink(missing_ok=True)
        read_or_create_secret(key_file, lambda: api_key)
    server = _server(Api(gateway), settings)
    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if not server.started:
        await runner.cleanup()
        await stripe_runner.cleanup()
        raise typer.Exit(1)
    base_url = f"http://{settings.host}:{_bound_port(server)}/api/v1"
    await _register_stripe_webhook(stripe_url, f"{base_url}/stripe/webhook", settings.stripe_webhook_secret)
    management = settings.management_key_file.read_text().strip()
    if as_json:
        print(json.dumps({"base_url": base_url, "api_key": api_key, "management_key": management,
                          "models": list(SIM_MODELS)}), flush=True)
    else:
        print(_DEMO_TEXT.format(base_url=base_url, api_key=api_key, sim=f"http://{settings.host}:{bound_sim}/v1",
                                models=", ".join(SIM_MODELS), home=home), flush=True)
    try:
        await task
    finally:
        await runner.cleanup()
        await stripe_runner.cleanup()


async def _register_stripe_webhook(stripe_url: str, endpoint: str, secret: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(
            f"{stripe_url}/_fake/webhooks", json={"url": endpoint, "secret": secret}) as response:
        response.raise_for_status()


_DEMO_TEXT = """
Farebox demo is running.

  gateway    {base_url}
  simulator  {sim}
  models     {models}
  API key    {api_key}
  state      {home}   (organization "demo", $10.00 of credits)

Try it:

  curl {base_url}/chat/completions \\
    -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \\
    -d '{{"model": "sim/small", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  # with the openai package installed (pip install openai):
  python3 -c 'from openai import OpenAI; c = OpenAI(base_url="{base_url}", api_key="{api_key}"); \\
print(c.chat.completions.create(model="sim/small", messages=[{{"role": "user", "content": "Hello"}}]))'

  curl {base_url}/credits -H "Authorization: Bearer {api_key}"

  # buy $25 of credits (money moves need a member or the operator, not an API key):
  # open the returned "url" (a fake Stripe Checkout) and press Pay
  curl {base_url}/credits/checkout -H "Authorization: Bearer $(cat {home}/management_key)" \\
    -d '{{"organization": "demo", "amount": "25"}}'

Press Ctrl+C to stop.
"""


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass
    except SystemExit:
        raise
    finally:
        sys.stdout.flush()
