"""Fixtures: one simulator and one gateway per test session (fresh organizations per
test), plus `make_gateway` for tests that need their own settings. Every gateway's
ledger is verified when the test that used it ends."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.inproc import InProcessGateway
from tests.e2e.procs import Gateway, start_sim

_names = itertools.count()


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    proc, url = start_sim()
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def shared_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"), sim_url).start()
    yield gw
    gw.stop()


@pytest.fixture
def gateway(shared_gateway: Gateway) -> Iterator[Gateway]:
    yield shared_gateway
    report = shared_gateway.verify()
    assert report["ok"], report


@pytest.fixture
def make_gateway(sim_url: str, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(catalog_extra: str = "", **settings: object) -> Gateway:
        env = {f"FAREBOX_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}
        gw = Gateway(tmp_path / f"gw{len(started)}", sim_url, env, catalog_extra).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        if gw.proc is not None and gw.proc.popen.poll() is None:
            report = gw.verify()
            assert report["ok"], report
        gw.stop()


@pytest.fixture
def org_name() -> str:
    return f"org{next(_names)}"


@pytest.fixture
def funded(gateway: Gateway, org_name: str) -> tuple[Gateway, str, str]:
    """(gateway, organization, API key) with $5.00 of credits."""
    gateway.org(org_name, "5.00")
    key, _ = gateway.key(org_name)
    return gateway, org_name, key


def client(gw: Gateway, key: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=key, max_retries=0, **kw)  # type: ignore[arg-type]


@pytest.fixture
def make_fake_clock_gateway(sim_url: str, tmp_path: Path) -> Iterator[Callable[..., InProcessGateway]]:
    """Gateways of their own, served in this process with a FakeClock (`gw.clock`,
    `gw.advance`) starting Thursday 2026-01-01T00:00:00Z; settings as for make_gateway. Each
    one still running when the test ends has its ledger verified."""
    started: list[InProcessGateway] = []

    def make(wrap: Callable[[Any], Any] | None = None, **settings: object) -> InProcessGateway:
        env = {f"FAREBOX_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}
        gw = InProcessGateway(tmp_path / f"inproc{len(started)}", sim_url, env, wrap=wrap).start()
        started.append(gw)
        return gw

    yield make
    reports = []
    for gw in started:
        try:
            if gw.running:
                reports.append(gw.verify())
        finally:
            gw.stop()   # every one, even after a failed check: each holds a thread and a database
    for report in reports:
        assert report["ok"], report


@pytest.fixture
def fake_clock_gateway(make_fake_clock_gateway: Callable[..., InProcessGateway]) -> InProcessGateway:
    """One in-process gateway with a FakeClock and default settings (see make_fake_clock_gateway)."""
    return make_fake_clock_gateway()
