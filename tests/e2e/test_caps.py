"""Spending caps, workspaces, projects and transfers end to end (issue 6, items 1-3), on a
real gateway in this process whose clock is a FakeClock, so every period reset is crossed
by moving time rather than waiting for it.

Every request here is REQUEST, whose hold equals its cost on a gateway with HOLD_SETTINGS
(see there): so a cap set to a whole number of request costs is spent to exactly its
limit, and the request after that finds no room at all (403), never "some room but not
enough" (402). Every 200 is checked to have cost exactly COST, so the arithmetic of every
test rests on a measured number.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.inproc import START, InProcessGateway
from tests.e2e.procs import http

ORG = "acme"
# One message "a" (1 byte) and 10 output tokens. The hold counts the prompt as its bytes
# plus hold_request_tokens plus hold_message_tokens per message: 1 + 3 + 4 = 8 tokens, and
# the simulator counts 3 + 4 + ceil(1 / 4) = 8; it answers 16 to 64 tokens, cut here to
# max_tokens, so exactly 10. Hold = cost = 8 * $0.00000015 + 10 * $0.0000006.
REQUEST: dict[str, Any] = {"model": "sim/small", "messages": [{"role": "user", "content": "a"}], "max_tokens": 10}
HOLD_SETTINGS = {"hold_request_tokens": 3, "hold_message_tokens": 4}
COST = Decimal("0.0000072")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC wall time (the FakeClock starts on Thursday 2026-01-01T00:00:00Z)."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()


# When a limit that started counting on Thursday 2026-01-01 resets: the next midnight UTC,
# the next Monday 00:00 UTC, the 1st of the next month. None (lifetime) never does.
RESETS: dict[str, float] = {"daily": utc(2026, 1, 2), "weekly": utc(2026, 1, 5), "monthly": utc(2026, 2, 1)}
LABEL = {"daily": "daily", "weekly": "weekly", "monthly": "monthly", "lifetime": "total"}


# -- helpers -------------------------------------------------------------------------------

def chat(gw: InProcessGateway, key: str, *, project: str | None = None,
         header: str | None = None) -> tuple[int, Any]:
    """One REQUEST with `key`, naming `project` in the body and/or `header` in
    X-Farebox-Project. A 200 must have cost exactly COST."""
    body = dict(REQUEST)
    if project is not None:
        body["project"] = project
    headers = {"X-Farebox-Project": header} if header is not None else None
    status, data, _ = http("POST", gw.api + "/chat/completions", body, key, headers)
    if status == 200:
        assert Decimal(data["usage"]["cost"]) == COST, data["usage"]
    return status, data


def spend(gw: InProcessGateway, key: str, n: int, log: list[tuple[float, Decimal]] | None = None,
          **where: str) -> None:
    """n requests that must all succeed; each is logged as (wall time, cost)."""
    for _ in range(n):
        status, data = chat(gw, key, **where)
        assert status == 200, data
        if log is not None:
            log.append((gw.clock.now(), COST))


def refusal(gw: InProcessGateway, key: str, status: int, limit_source: str, message: str,
            **where: str) -> dict[str, Any]:
    """The next request is refused with `status`, `limit_source` and a message containing
    `message`; returns the error."""
    got, data = chat(gw, key, **where)
    assert got == status, data
    error = data["error"]
    assert error["metadata"]["limit_source"] == limit_source, error
    assert message in error["message"], error
    return error


def windows(log: list[tuple[float, Decimal]], now: float) -> dict[str, Decimal]:
    """What `log` spent in the UTC day, week (from Monday) and month containing `now`, and
    in all: the oracle for the usage_* fields, computed independently of the gateway."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = {"daily": day, "weekly": day - dt.timedelta(days=day.weekday()), "monthly": day.replace(day=1)}
    out = {p: sum((c for t, c in log if t >= s.timestamp()), Decimal(0)) for p, s in starts.items()}
    out["lifetime"] = sum((c for _, c in log), Decimal(0))
    return out


def key_state(gw: InProcessGateway, key: str) -> dict[str, Any]:
    status, data, _ = http("GET", gw.api + "/key", None, key)
    assert status == 200, data
    return data["data"]


def check_key(gw: InProcessGateway, key: str, limit: Decimal, period: str,
              log: list[tuple[float, Decimal]]) -> None:
    """GET /key reports exactly what `log` spent per window, and the limit's room."""
    spent = windows(log, gw.clock.now())
    data = key_state(gw, key)
    assert Decimal(data["limit"]) == limit
    assert Decimal(data["limit_remaining"]) == limit - spent[period]
    assert Decimal(data["usage"]) == spent["lifetime"]
    for window in ("daily", "weekly", "monthly"):
        assert Decimal(data[f"usage_{window}"]) == spent[window], (window, data)


def admin(gw: InProcessGateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A management call with the operator's key, acting on ORG."""
    if body is None and method == "GET":
        sep = "&" if "?" in path else "?"
        path = f"{path}{sep}organization={ORG}"
    elif isinstance(body, dict):
        body = {"organization": ORG, **body}
    else:
        path = f"{path}?organization={ORG}"
    status, data, _ = http(method, gw.api + path, body, gw.management_key)
    return status, data


def ok(gw: InProcessGateway, method: str, path: str, body: Any = None, status: int = 200) -> dict[str, Any]:
    got, data = admin(gw, method, path, body)
    assert got == status, (method, path, got, data)
    return data.get("data", data)   # a DELETE answers {"deleted": true}


def workspace(gw: InProcessGateway, name: str, **fields: Any) -> dict[str, Any]:
    return ok(gw, "POST", "/workspaces", {"name": name, **fields}, 201)


def usd(value: Decimal) -> str:
    return str(value)


@pytest.fixture
def gw(make_fake_clock_gateway: Callable[..., InProcessGateway]) -> InProcessGateway:
    gateway = make_fake_clock_gateway(**HOLD_SETTINGS)
    gateway.org(ORG, "1.00")
    return gateway


# -- the request every test relies on ------------------------------------------------------

def test_the_request_costs_exactly_its_hold(gw: InProcessGateway) -> None:
    key, _ = gw.key(ORG)
    status, data = chat(gw, key)
    assert status == 200, data
    assert data["usage"]["prompt_tokens"] == 8 and data["usage"]["completion_tokens"] == 10
    status, record, _ = http("GET", f"{gw.api}/generation?id={data['id']}", None, key)
    assert status == 200, record
    assert Decimal(record["data"]["hold"]) == Decimal(record["data"]["usage"]) == COST
    assert dt.datetime.fromtimestamp(START, dt.UTC).weekday() == 3   # the resets below assume a Thursday


# -- key limits ----------------------------------------------------------------------------

@pytest.mark.parametrize("period", ["daily", "weekly", "monthly", "lifetime"])
def test_key_limit_is_spent_exactly_then_refused_until_it_resets(gw: InProcessGateway, period: str) -> None:
    limit = 3 * COST
    key, _ = gw.key(ORG, limit=usd(limit), limit_reset=None if period == "lifetime" else period)
    log: list[tuple[float, Decimal]] = []
    gw.advance(3600)   # 01:00: a window is counted from its calendar start, not from the first request
    check_key(gw, key, limit, period, log)
    spend(gw, key, 3, log)
    check_key(gw, key, limit, period, log)
    message = f"Key limit exceeded ({LABEL[period]} limit)"
    refusal(gw, key, 403, "key", message)
    if period == "lifetime":
        gw.advance_to(utc(2027, 3, 1))   # past every day, week, month and year boundary
        refusal(gw, key, 403, "key", message)
        check_key(gw, key, limit, period, log)
        return
    reset = RESETS[period]
    gw.advance_to(reset - 1)
    refusal(gw, key, 403, "key", message)
    check_key(gw, key, limit, period, log)
    gw.advance_to(reset)
    check_key(gw, key, limit, period, log)   # the whole limit is back
    spend(gw, key, 1, log)
    check_key(gw, key, limit, period, log)
    assert Decimal(key_state(gw, key)["limit_remaining"]) == 2 * COST


def test_key_limit_with_room_below_the_hold_answers_402(gw: InProcessGateway) -> None:
    key, khash = gw.key(ORG, limit=usd(COST + COST / 2), limit_reset="daily")
    spend(gw, key, 1)
    error = refusal(gw, key, 402, "key", "raise this key's limit")
    assert error["metadata"]["requested_tokens"] == 10
    assert error["metadata"]["affordable_tokens"] < 10
    assert Decimal(key_state(gw, key)["limit_remaining"]) == COST / 2
    # Raising the limit with the key API makes room at once.
    ok(gw, "PATCH", f"/keys/{khash}", {"limit": usd(2 * COST)})
    spend(gw, key, 1)
    refusal(gw, key, 403, "key", "Key limit exceeded (daily limit)")


def test_an_expired_key_answers_401(gw: InProcessGateway) -> None:
    expires = START + 2 * 3600
    key, _ = gw.key(ORG, expires_at="2026-01-01T02:00:00Z")
    assert key_state(gw, key)["expires_at"].startswith("2026-01-01T02:00:00")
    spend(gw, key, 1)
    gw.advance_to(expires - 1)
    spend(gw, key, 1)
    gw.advance_to(expires)
    status, data = chat(gw, key)
    assert status == 401 and "expired" in data["error"]["message"], data
    status, data, _ = http("GET", gw.api + "/key", None, key)
    assert status == 401, data


# -- workspace budgets ---------------------------------------------------------------------

@pytest.mark.parametrize("period", ["daily", "weekly", "monthly", "lifetime"])
def test_workspace_budget_is_spent_exactly_then_refused_until_it_resets(gw: InProcessGateway, period: str) -> None:
    budget = 3 * COST
    team = workspace(gw, "team", budgets={period: usd(budget)})
    assert team["budgets"] == {period: {"limit": budget, "usage": 0, "remaining": budget}}
    first, _ = gw.key(ORG, workspace_id=team["id"], name="first")
    second, _ = gw.key(ORG, workspace_id=team["id"], name="second")
    outside, _ = gw.key(ORG, name="outside")   # the default workspace: no budget
    log: list[tuple[float, Decimal]] = []
    gw.advance(3600)
    spend(gw, first, 2, log)
    spend(gw, second, 1, log)   # the budget is the workspace's, whichever key spends it
    data = ok(gw, "GET", f"/workspaces/{team['id']}")
    assert data["budgets"][period] == {"limit": budget, "usage": budget, "remaining": 0}
    spent = windows(log, gw.clock.now())
    assert Decimal(data["usage"]) == spent["lifetime"]
    for window in ("daily", "weekly", "monthly"):
        assert Decimal(data[f"usage_{window}"]) == spent[window]
    message = f"Workspace budget exceeded ({LABEL[period]} budget) for workspace 'team'"
    for key in (first, second):
        error = refusal(gw, key, 403, "workspace", message)
        assert error["metadata"]["workspace"] == "team" and error["metadata"]["period"] == LABEL[period]
    spend(gw, outside, 1)
    if period == "lifetime":
        gw.advance_to(utc(2027, 3, 1))
        refusal(gw, first, 403, "workspace", message)
        return
    gw.advance_to(RESETS[period] - 1)
    refusal(gw, first, 403, "workspace", message)
    gw.advance_to(RESETS[period])
    data = ok(gw, "GET", f"/workspaces/{team['id']}")
    assert data["budgets"][period] == {"limit": budget, "usage": 0, "remaining": budget}
    spend(gw, second, 1, log)
    data = ok(gw, "GET", f"/workspaces/{team['id']}")
    assert data["budgets"][period] == {"limit": budget, "usage": COST, "remaining": 2 * COST}
    assert Decimal(data["usage"]) == 4 * COST


def test_budgets_must_grow_with_their_period(gw: InProcessGateway) -> None:
    team = workspace(gw, "team")
    base = f"/workspaces/{team['id']}/budgets"
    ok(gw, "PUT", f"{base}/daily", {"amount": "5"})
    for amount in ("4", "5"):   # below the daily budget, and equal to it
        status, data = admin(gw, "PUT", f"{base}/weekly", {"amount": amount})
        assert status == 400, data
        assert "daily budget must be less than the weekly" in data["error"]["message"], data
    ok(gw, "PUT", f"{base}/weekly", {"amount": "6"})
    status, data = admin(gw, "PUT", f"{base}/monthly", {"amount": "5.5"})   # above daily, below weekly
    assert status == 400, data
    status, data = admin(gw, "PUT", f"{base}/lifetime", {"amount": "6"})
    assert status == 400, data
    status, data = admin(gw, "PUT", f"{base}/yearly", {"amount": "60"})
    assert status == 400 and data["error"]["metadata"]["field"] == "period", data
    budgets = ok(gw, "GET", f"/workspaces/{team['id']}")["budgets"]
    assert {p: b["limit"] for p, b in budgets.items()} == {"daily": 5, "weekly": 6}   # refusals changed nothing
    ok(gw, "DELETE", f"{base}/weekly")
    ok(gw, "PUT", f"{base}/monthly", {"amount": "5.5"})   # fits now that weekly is gone
    budgets = ok(gw, "GET", f"/workspaces/{team['id']}")["budgets"]
    assert {p: b["limit"] for p, b in budgets.items()} == {"daily": 5, "monthly": Decimal("5.5")}
    # Projects follow the same rule.
    project = ok(gw, "POST", "/projects", {"name": "search", "budgets": {"daily": "1"}}, 201)
    status, data = admin(gw, "PUT", f"/projects/{project['id']}/budgets/weekly", {"amount": "0.5"})
    assert status == 400, data


def test_a_create_refused_for_its_budgets_creates_nothing(gw: InProcessGateway) -> None:
    status, data = admin(gw, "POST", "/workspaces", {"name": "team", "budgets": {"daily": "2", "weekly": "1"}})
    assert status == 400, data
    status, data = admin(gw, "POST", "/projects", {"name": "search", "budgets": {"daily": "2", "weekly": "1"}})
    assert status == 400, data
    assert [w["name"] for w in ok(gw, "GET", "/workspaces")] == ["default"]
    assert ok(gw, "GET", "/projects") == []


# -- project caps --------------------------------------------------------------------------

def test_requests_naming_a_project_are_attributed_and_capped(gw: InProcessGateway) -> None:
    key, khash = gw.key(ORG)
    project = ok(gw, "POST", "/projects", {"name": "search", "budgets": {"daily": usd(4 * COST)}}, 201)
    pid = project["id"]
    gw.advance(3600)
    spend(gw, key, 2, project="search")        # the body field
    spend(gw, key, 2, header="search")         # the header
    spend(gw, key, 1)                          # no project: not the project's
    data = ok(gw, "GET", f"/projects/{pid}")
    assert Decimal(data["usage"]) == Decimal(data["usage_daily"]) == 4 * COST
    assert data["budgets"]["daily"] == {"limit": 4 * COST, "usage": 4 * COST, "remaining": 0}
    message = "Project budget exceeded (daily budget) for project 'search'"
    for where in ({"project": "search"}, {"header": "search"}):
        error = refusal(gw, key, 403, "project", message, **where)
        assert error["metadata"]["project"] == "search"
    spend(gw, key, 1)   # the key and the workspace still have room
    assert Decimal(key_state(gw, key)["usage"]) == 6 * COST
    assert Decimal(ok(gw, "GET", f"/keys/{khash}")["usage"]) == 6 * COST
    gw.advance_to(utc(2026, 1, 2))
    spend(gw, key, 1, header="search")
    data = ok(gw, "GET", f"/projects/{pid}")
    assert Decimal(data["usage"]) == 5 * COST and Decimal(data["usage_daily"]) == COST


def test_unknown_and_foreign_projects_are_400(gw: InProcessGateway) -> None:
    key, _ = gw.key(ORG)   # in the default workspace
    other = workspace(gw, "other")
    other_key, _ = gw.key(ORG, workspace_id=other["id"], name="other")
    elsewhere = ok(gw, "POST", "/projects", {"name": "elsewhere", "workspace_id": other["id"]}, 201)
    gone = ok(gw, "POST", "/projects", {"name": "gone"}, 201)
    ok(gw, "DELETE", f"/projects/{gone['id']}")
    for where in ({"project": "nope"}, {"header": "nope"}, {"project": "elsewhere"}, {"header": "elsewhere"},
                  {"project": "gone"}, {"project": ""}):
        status, data = chat(gw, key, **where)   # type: ignore[arg-type]
        assert status == 400, (where, data)
        assert data["error"]["metadata"]["field"] == "project", data
    spend(gw, other_key, 1, project="elsewhere")   # in its own workspace it is known
    assert Decimal(ok(gw, "GET", f"/projects/{elsewhere['id']}")["usage"]) == COST
    # Nothing the refusals did was charged.
    assert Decimal(ok(gw, "GET", f"/organizations/{ORG}")["total_usage"]) == COST


# The `project` body field is taken out of the body before it is forwarded (api/inference.py
# project_of). It cannot be observed from here: the simulator accepts and ignores unknown
# fields and does not report the bodies it receives, so that check is left out.


# -- pools and transfers -------------------------------------------------------------------

def balances(gw: InProcessGateway, *pools: int) -> tuple[Decimal, ...]:
    """(the organization's wallet, then each pool's balance), exactly."""
    org = Decimal(ok(gw, "GET", f"/organizations/{ORG}")["balance"])
    return (org, *(Decimal(ok(gw, "GET", f"/workspaces/{p}")["balance"]) for p in pools))


def transfer(gw: InProcessGateway, source: Any, target: Any, amount: Decimal, reference: str) -> tuple[int, Any]:
    return admin(gw, "POST", "/transfers", {"from": source, "to": target, "amount": usd(amount),
                                            "reference": reference})


def test_pools_and_transfers_are_exact(gw: InProcessGateway) -> None:
    pool = workspace(gw, "pool", pooled=True)["id"]
    other = workspace(gw, "other", pooled=True)["id"]
    plain = workspace(gw, "plain")["id"]
    key, khash = gw.key(ORG, workspace_id=pool)
    one = Decimal(1)

    refusal(gw, key, 402, "wallet", "transfer credits to workspace 'pool'")   # an empty pool
    status, data = transfer(gw, "organization", pool, 10 * COST, "fund-1")
    assert status == 201, data
    assert data["data"] == {**data["data"], "from": "organization", "to": pool, "amount": 10 * COST,
                            "reference": "fund-1", "replayed": False}
    assert balances(gw, pool, other) == (one - 10 * COST, 10 * COST, 0)

    status, data = transfer(gw, "organization", pool, 10 * COST, "fund-1")   # a replay moves nothing
    assert status == 200 and data["data"]["replayed"] is True, data
    status, data = transfer(gw, "organization", pool, 11 * COST, "fund-1")   # the same reference, other terms
    assert status == 409, data
    assert balances(gw, pool, other) == (one - 10 * COST, 10 * COST, 0)

    spend(gw, key, 3)   # from the pool: the organization's wallet does not move
    assert balances(gw, pool, other) == (one - 10 * COST, 7 * COST, 0)
    assert Decimal(ok(gw, "GET", f"/workspaces/{pool}")["usage"]) == 3 * COST

    status, data = transfer(gw, pool, other, 2 * COST, "move-1")
    assert status == 201 and data["data"]["from"] == pool and data["data"]["to"] == other, data
    status, data = transfer(gw, other, "organization", COST, "back-1")
    assert status == 201, data
    assert balances(gw, pool, other) == (one - 9 * COST, 5 * COST, COST)

    status, data = transfer(gw, pool, "organization", 6 * COST, "too-much")   # more than the pool has
    assert status == 402 and Decimal(data["error"]["metadata"]["available"]) == 5 * COST, data
    for source, target in ((plain, "organization"), ("organization", plain)):   # plain has no pool
        status, data = transfer(gw, source, target, COST, f"plain-{source}")
        assert status == 400, data
    status, data = transfer(gw, pool, pool, COST, "self")
    assert status == 400, data
    assert balances(gw, pool, other) == (one - 9 * COST, 5 * COST, COST)

    spend(gw, key, 5)   # the pool to exactly zero, then "transfer credits" again
    assert balances(gw, pool, other) == (one - 9 * COST, 0, COST)
    refusal(gw, key, 402, "wallet", "transfer credits to workspace 'pool'")

    org = ok(gw, "GET", f"/organizations/{ORG}")
    assert Decimal(org["total_balance"]) == one - 8 * COST == sum(balances(gw, pool, other))
    assert Decimal(org["total_usage"]) == 8 * COST and Decimal(org["total_credits"]) == one
    listed = ok(gw, "GET", "/transfers")
    assert [(t["reference"], t["from"], t["to"], t["amount"]) for t in listed] == [
        ("fund-1", "organization", pool, 10 * COST), ("move-1", pool, other, 2 * COST),
        ("back-1", other, "organization", COST)]

    # A pool holding credit cannot be deleted (its keys go first, whatever the pool holds).
    status, data = admin(gw, "DELETE", f"/workspaces/{other}")
    assert status == 409 and "pool" in data["error"]["message"], data
    ok(gw, "DELETE", f"/keys/{khash}")
    status, data = transfer(gw, other, "organization", COST, "empty-other")
    assert status == 201, data
    ok(gw, "DELETE", f"/workspaces/{other}")
    ok(gw, "DELETE", f"/workspaces/{pool}")   # spent to zero: nothing to give back
    assert [w["name"] for w in ok(gw, "GET", "/workspaces")] == ["default", "plain"]
    assert balances(gw) == (one - 8 * COST,)


def test_credits_total_counts_every_wallet(gw: InProcessGateway) -> None:
    pool = workspace(gw, "pool", pooled=True)["id"]
    key, _ = gw.key(ORG, workspace_id=pool)
    assert transfer(gw, "organization", pool, 10 * COST, "fund")[0] == 201
    spend(gw, key, 2)
    credits = ok(gw, "GET", "/credits")
    assert Decimal(credits["total_credits"]) == Decimal(1)   # a transfer is not credit leaving
    assert Decimal(credits["total_credits"]) - Decimal(credits["total_usage"]) == sum(balances(gw, pool))


# -- a restart -----------------------------------------------------------------------------

def test_usage_and_pools_survive_a_restart(gw: InProcessGateway) -> None:
    pool = workspace(gw, "pool", pooled=True, budgets={"daily": usd(5 * COST), "weekly": usd(50 * COST)})["id"]
    key, khash = gw.key(ORG, workspace_id=pool, limit=usd(3 * COST), limit_reset="daily")
    other, ohash = gw.key(ORG, workspace_id=pool, name="other")
    project = ok(gw, "POST", "/projects", {"name": "search", "workspace_id": pool,
                                           "budgets": {"weekly": usd(3 * COST)}}, 201)["id"]
    assert transfer(gw, "organization", pool, 20 * COST, "fund")[0] == 201
    gw.advance(3600)
    spend(gw, key, 3, project="search")   # the key's daily limit and the project's weekly budget, used up
    spend(gw, other, 2)                   # the workspace's daily budget, used up

    def snapshot() -> list[Any]:
        return [key_state(gw, key), key_state(gw, other), ok(gw, "GET", f"/keys/{khash}"),
                ok(gw, "GET", f"/keys/{ohash}"), ok(gw, "GET", f"/workspaces/{pool}"),
                ok(gw, "GET", f"/projects/{project}"), ok(gw, "GET", f"/organizations/{ORG}"),
                ok(gw, "GET", "/transfers")]

    before = snapshot()
    assert Decimal(before[4]["balance"]) == 15 * COST
    gw.stop()
    gw.start()
    assert snapshot() == before
    refusal(gw, key, 403, "key", "Key limit exceeded (daily limit)")
    refusal(gw, other, 403, "workspace", "(daily budget) for workspace 'pool'")
    # The next day the daily caps are back, the project's weekly budget is not (it was
    # seeded with the right window, not just a total).
    gw.advance_to(utc(2026, 1, 2))
    refusal(gw, other, 403, "project", "(weekly budget) for project 'search'", project="search")
    spend(gw, key, 3)
    refusal(gw, key, 403, "key", "Key limit exceeded (daily limit)")
    assert Decimal(ok(gw, "GET", f"/workspaces/{pool}")["balance"]) == 12 * COST
