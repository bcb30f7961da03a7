"""No cap overshoots under concurrency (issue 6, item 10): hundreds of requests at once
against a key limit, a project cap, a workspace budget, and all of them with a small pool,
on a real `farebox serve` process.

The requests are test_caps.REQUEST, whose hold equals its cost on a gateway with
HOLD_SETTINGS: a cap of N request costs then admits exactly N requests however they
interleave (fewer would mean a refusal while there was room, more an overshoot). One test
also uses a request whose hold is larger than its cost, the usual case, where the cap must
hold and end with less room than one more hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.procs import Gateway, http
from tests.e2e.test_caps import COST, HOLD_SETTINGS, REQUEST

REQUESTS = 300
THREADS = 64
# The simulator's `sim` body control (passed upstream like any field the gateway does not
# know) delays each answer by 20 ms, so that admitted requests keep their holds open while
# the others arrive: the cap is reached with dozens of holds open, not one at a time.
SLOW = {"sim": {"ttft_ms": 20}}
EXACT_REQUEST: dict[str, Any] = {**REQUEST, **SLOW}
# "hi" and up to 50 tokens: the hold counts 2 + 3 + 4 prompt tokens and 50 output tokens
# ($0.00003135), the simulator answers 8 and 26 ($0.0000168).
LOOSE_REQUEST: dict[str, Any] = {"model": "sim/small", "messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 50, **SLOW}
LOOSE_HOLD = Decimal("0.00003135")


@dataclass(frozen=True)
class Shot:
    """One request to fire: its key, the project it names (and how) and its body."""
    key: str
    tag: str                       # which group of requests it belongs to, for the tallies
    project: str | None = None
    by_header: bool = False
    body: dict[str, Any] = field(default_factory=lambda: EXACT_REQUEST)


@dataclass
class Tally:
    costs: list[Decimal] = field(default_factory=list)          # usage.cost of every 200
    refusals: list[tuple[int, str]] = field(default_factory=list)  # (status, limit_source)

    @property
    def charged(self) -> Decimal:
        return sum(self.costs, Decimal(0))


def fire(gw: Gateway, shots: list[Shot]) -> dict[str, Tally]:
    """Send every shot at once (THREADS at a time); tally the answers per tag. Any answer but
    a 200 or a 402/403 refusal fails the test."""
    def one(shot: Shot) -> tuple[Shot, int, Any]:
        body = dict(shot.body)
        headers = None
        if shot.project is not None and shot.by_header:
            headers = {"X-Farebox-Project": shot.project}
        elif shot.project is not None:
            body["project"] = shot.project
        status, data, _ = http("POST", gw.api + "/chat/completions", body, shot.key, headers)
        return shot, status, data

    tallies: dict[str, Tally] = {}
    with ThreadPoolExecutor(THREADS) as pool:
        for shot, status, data in pool.map(one, shots):
            tally = tallies.setdefault(shot.tag, Tally())
            if status == 200:
                tally.costs.append(Decimal(data["usage"]["cost"]))
            else:
                assert status in (402, 403), (status, data)
                tally.refusals.append((status, data["error"]["metadata"]["limit_source"]))
    return tallies


def usage(gw: Gateway, org: str, path: str) -> Decimal:
    data = gw.admin("GET", f"{path}?organization={org}")["data"]
    return Decimal(data["usage"])


def create(gw: Gateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return gw.admin("POST", path, body)["data"]


@pytest.fixture(scope="module")
def caps_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {f"FAREBOX_{k.upper()}": str(v) for k, v in HOLD_SETTINGS.items()}
    gw = Gateway(tmp_path_factory.mktemp("caps"), sim_url, env).start()
    yield gw
    gw.stop()


@pytest.fixture
def gw(caps_gateway: Gateway) -> Iterator[Gateway]:
    yield caps_gateway
    caps_gateway.wait_idle()
    report = caps_gateway.verify()
    assert report["ok"], report


_orgs = iter(range(10**6))


@pytest.fixture
def org(gw: Gateway) -> str:
    return gw.org(f"conc{next(_orgs)}", "1.00")


def test_a_key_limit_admits_exactly_what_it_allows(gw: Gateway, org: str) -> None:
    key, khash = gw.key(org, limit=str(40 * COST))
    tally = fire(gw, [Shot(key, "key")] * REQUESTS)["key"]
    assert tally.costs == [COST] * 40
    assert tally.charged == usage(gw, org, f"/keys/{khash}") == 40 * COST
    assert set(tally.refusals) == {(403, "key")}   # the room is always a whole number of holds: none or some
    assert len(tally.refusals) == REQUESTS - 40


def test_a_key_limit_holds_when_holds_exceed_costs(gw: Gateway, org: str) -> None:
    limit = Decimal("0.0012")
    key, khash = gw.key(org, limit=str(limit))
    tally = fire(gw, [Shot(key, "key", body=LOOSE_REQUEST)] * REQUESTS)["key"]
    assert tally.costs and tally.refusals
    assert tally.charged == usage(gw, org, f"/keys/{khash}") <= limit
    assert limit - tally.charged < LOOSE_HOLD   # it bound: not one more request would fit
    assert {source for _, source in tally.refusals} == {"key"}
    assert {status for status, _ in tally.refusals} <= {402, 403}


def test_a_project_cap_admits_exactly_what_it_allows(gw: Gateway, org: str) -> None:
    keys = [gw.key(org, name=f"k{i}")[0] for i in range(4)]
    project = create(gw, "/projects", {"organization": org, "name": "search", "budgets": {"daily": str(40 * COST)}})
    shots = [Shot(keys[i % 4], "project", "search", by_header=i % 2 == 0) for i in range(REQUESTS)]
    tally = fire(gw, shots)["project"]
    assert tally.costs == [COST] * 40
    assert tally.charged == usage(gw, org, f"/projects/{project['id']}") == 40 * COST
    assert set(tally.refusals) == {(403, "project")}


def test_a_workspace_budget_admits_exactly_what_it_allows(gw: Gateway, org: str) -> None:
    team = create(gw, "/workspaces", {"organization": org, "name": "team", "budgets": {"weekly": str(40 * COST)}})
    keys = [gw.key(org, name=f"k{i}", workspace_id=team["id"])[0] for i in range(4)]
    tally = fire(gw, [Shot(keys[i % 4], "workspace") for i in range(REQUESTS)])["workspace"]
    assert tally.costs == [COST] * 40
    assert tally.charged == usage(gw, org, f"/workspaces/{team['id']}") == 40 * COST
    assert set(tally.refusals) == {(403, "workspace")}


def test_every_cap_and_a_small_pool_at_once(gw: Gateway, org: str) -> None:
    """A pooled workspace with 80 request costs in its pool and a budget of 100; in it key A
    limited to 30, key B naming a project capped at 25, and key C limited by nothing of its
    own. Together they ask for 300: the pool runs dry at exactly 80, and no cap goes over."""
    team = create(gw, "/workspaces", {"organization": org, "name": "team", "pooled": True,
                                      "budgets": {"monthly": str(100 * COST)}})
    wid = team["id"]
    create(gw, "/transfers", {"organization": org, "from": "organization", "to": wid, "amount": str(80 * COST),
                              "reference": "fund"})
    a, ahash = gw.key(org, name="a", workspace_id=wid, limit=str(30 * COST), limit_reset="daily")
    b, bhash = gw.key(org, name="b", workspace_id=wid)
    c, chash = gw.key(org, name="c", workspace_id=wid)
    project = create(gw, "/projects", {"organization": org, "name": "search", "workspace_id": wid,
                                       "budgets": {"lifetime": str(25 * COST)}})
    balance_before = gw.balance(org)
    makes: list[Callable[[int], Shot]] = [lambda i: Shot(a, "a"), lambda i: Shot(b, "b", "search", i % 2 == 0),
                                          lambda i: Shot(c, "c")]
    tallies = fire(gw, [makes[i % 3](i) for i in range(REQUESTS)])
    charged = {tag: t.charged for tag, t in tallies.items()}
    assert all(cost == COST for t in tallies.values() for cost in t.costs)

    assert charged["a"] == usage(gw, org, f"/keys/{ahash}") <= 30 * COST
    assert charged["b"] == usage(gw, org, f"/projects/{project['id']}") == usage(gw, org, f"/keys/{bhash}")
    assert charged["b"] <= 25 * COST
    assert charged["c"] == usage(gw, org, f"/keys/{chash}")
    total = sum(charged.values(), Decimal(0))
    assert total == usage(gw, org, f"/workspaces/{wid}") == 80 * COST   # the pool, spent exactly
    workspace = gw.admin("GET", f"/workspaces/{wid}?organization={org}")["data"]
    assert workspace["balance"] == 0 and workspace["budgets"]["monthly"]["usage"] == 80 * COST
    assert gw.balance(org) == balance_before   # the organization's wallet never paid

    # Each refusal names a cap that applies to its request.
    allowed = {"a": {"key", "wallet"}, "b": {"project", "wallet"}, "c": {"wallet"}}
    for tag, tally in tallies.items():
        assert tally.refusals, tag
        assert {source for _, source in tally.refusals} <= allowed[tag], (tag, tally.refusals)
        assert {status for status, _ in tally.refusals} <= {402, 403}
