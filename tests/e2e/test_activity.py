"""Activity reports end to end (issue 6, item 8): a real gateway, real chat requests through the
openai SDK, then GET /activity and /activity.csv as the operator and as members. Requests made
today are outside the 30 completed days, so the day-window arithmetic lives in
tests/billing/test_activity.py; here: today's usage left out, `meta` (balance, window, exact
amounts), the CSV's header and attachment, validation errors, and who may read."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

PASSWORD = "correct horse battery staple"
HEADERS = {
    "model": "date,model,model_permaslug,endpoint_id,provider_name,requests,prompt_tokens,completion_tokens,"
             "reasoning_tokens,usage_usd,byok_usage_inference_usd",
    "day": "date,requests,prompt_tokens,completion_tokens,reasoning_tokens,usage_usd,byok_usage_inference_usd",
    "provider": "date,provider_name,requests,prompt_tokens,completion_tokens,reasoning_tokens,usage_usd,"
                "byok_usage_inference_usd",
    "key": "date,key_hash,name,requests,prompt_tokens,completion_tokens,reasoning_tokens,usage_usd,"
           "byok_usage_inference_usd",
    "workspace": "date,workspace_id,name,requests,prompt_tokens,completion_tokens,reasoning_tokens,usage_usd,"
                 "byok_usage_inference_usd",
    "member": "date,user_id,requests,prompt_tokens,completion_tokens,reasoning_tokens,usage_usd,"
              "byok_usage_inference_usd",
    "project": "date,project_id,name,requests,prompt_tokens,completion_tokens,reasoning_tokens,usage_usd,"
               "byok_usage_inference_usd",
}


def get(gw: Gateway, path: str, token: str, **query: Any) -> tuple[int, Any, dict[str, str]]:
    qs = "&".join(f"{k}={quote(str(v))}" for k, v in query.items())
    status, body, headers = http("GET", f"{gw.api}{path}?{qs}", key=token)
    return status, body, {k.lower(): v for k, v in headers.items()}


def chat(gw: Gateway, key: str, n: int) -> None:
    for _ in range(n):
        response = client(gw, key).chat.completions.create(
            model="sim/small", messages=[{"role": "user", "content": "[[sim output_tokens=40]] go on"}])
        assert response.usage is not None and response.usage.completion_tokens == 40


def spend(gw: Gateway, key: str, output_tokens: int) -> dict[str, Any]:
    """One real chat request; its generation record as GET /generation shows it (exact amounts)."""
    gen_id = client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": f"[[sim output_tokens={output_tokens}]] go on"}]).id
    gw.wait_idle()
    status, body, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
    assert status == 200, body
    return body["data"]


def member_session(gw: Gateway, org: str, email: str, role: str, workspaces: list[int] | None = None) -> str:
    gw.admin("POST", "/organization/members", {"organization": org, "email": email, "password": PASSWORD,
                                                 "role": role, "workspaces": workspaces})
    status, body, _ = http("POST", f"{gw.api}/auth/login", {"organization": org, "email": email, "password": PASSWORD})
    assert status == 200, body
    return body["data"]["token"]


def test_operator_reads_meta_and_todays_usage_is_not_reported(gateway: Gateway, org_name: str):
    gw = gateway
    gw.org(org_name, "5.00")
    key, _ = gw.key(org_name)
    today = dt.datetime.now(dt.UTC).date()
    chat(gw, key, 3)
    gw.wait_idle()

    status, body, headers = get(gw, "/activity", gw.management_key, organization=org_name)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    meta = body["meta"]
    reported_today = dt.date.fromisoformat(meta["to"]) + dt.timedelta(days=1)
    assert dt.date.fromisoformat(meta["from"]) == reported_today - dt.timedelta(days=30)
    assert meta["group_by"] == "model"
    # The balance is the organization's credit, exactly: $5 less the three charges.
    balance = gw.balance(org_name)
    assert Decimal("0") < balance < Decimal("5")
    assert isinstance(meta["balance"], Decimal) and meta["balance"] == balance
    if reported_today == today:   # (the UTC day did not change while the test ran)
        assert body["data"] == []
        assert (meta["total_usage"], meta["average_daily_spend"], meta["projected_depletion_date"]) == (0, 0, None)
        status, body, _ = get(gw, "/activity", gw.management_key, organization=org_name, date=today.isoformat(),
                              group_by="day")
        assert status == 200 and body["data"] == [], body
    # A day of the window with no usage, under every grouping: no rows, and the same meta.
    for group_by in HEADERS:
        status, body, _ = get(gw, "/activity", gw.management_key, organization=org_name, group_by=group_by,
                              date=meta["to"])
        assert status == 200 and body["data"] == [] and body["meta"]["group_by"] == group_by, body
        assert body["meta"]["balance"] == balance


def test_csv_export_header_and_attachment(gateway: Gateway, org_name: str):
    gw = gateway
    gw.org(org_name, "1.00")
    for group_by, header in HEADERS.items():
        status, body, headers = get(gw, "/activity.csv", gw.management_key, organization=org_name,
                                    group_by=group_by)
        assert status == 200, body
        assert headers["content-type"] == "text/csv; charset=utf-8"
        assert headers["content-disposition"].startswith(f'attachment; filename="activity-{org_name}-{group_by}-')
        assert headers["content-disposition"].endswith('.csv"')
        assert body == header + "\r\n"   # the header, and no rows: nothing was spent
    status, body, headers = get(gw, "/activity.csv", gw.management_key, organization=org_name)
    assert status == 200 and body.startswith(HEADERS["model"] + "\r\n"), body   # the default grouping


def test_bad_parameters_are_400s_naming_the_field(gateway: Gateway, org_name: str):
    gw = gateway
    gw.org(org_name, "1.00")
    cases = [({"group_by": "color"}, "group_by"), ({"date": "yesterday"}, "date"), ({"date": "2026-13-01"}, "date"),
             ({"date": "20261101"}, "date"), ({"workspace_id": "abc"}, "workspace_id"),
             ({"workspace_id": "-1"}, "workspace_id"), ({"project_id": "1.5"}, "project_id")]
    for path in ("/activity", "/activity.csv"):
        for query, field in cases:
            status, body, _ = get(gw, path, gw.management_key, organization=org_name, **query)
            assert status == 400, (path, query, body)
            assert body["error"]["metadata"]["field"] == field, (path, query, body)
        status, body, _ = get(gw, path, gw.management_key)   # the operator must name the organization
        assert status == 400 and body["error"]["metadata"]["field"] == "organization", body
        status, body, _ = get(gw, path, gw.management_key, organization=org_name, workspace_id=999_999)
        assert status == 404, body


def test_api_keys_and_strangers_cannot_read(gateway: Gateway, org_name: str):
    gw = gateway
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    for path in ("/activity", "/activity.csv"):
        status, body, _ = get(gw, path, key)
        assert status == 403, body            # activity is for members and the operator
        status, body, _ = get(gw, path, "")
        assert status == 401, body


def test_members_read_their_own_organization_only(gateway: Gateway, org_name: str):
    gw = gateway
    mine, theirs = f"{org_name}-mine", f"{org_name}-theirs"
    gw.org(mine, "2.00")
    gw.org(theirs, "3.00")
    workspace = gw.admin("POST", "/keys", {"organization": mine, "name": "w"})["data"]["workspace_id"]
    viewer = member_session(gw, mine, "viewer@example.com", "viewer")
    limited = member_session(gw, mine, "limited@example.com", "member", [workspace])
    stranger = member_session(gw, theirs, "owner@example.com", "owner")

    for token in (viewer, limited):
        status, body, _ = get(gw, "/activity", token, group_by="workspace")
        assert status == 200, body
        assert body["meta"]["balance"] == Decimal("2") and body["meta"]["group_by"] == "workspace"
        status, body, _ = get(gw, "/activity", token, workspace_id=workspace)
        assert status == 200, body
    status, body, headers = get(gw, "/activity.csv", viewer)
    assert status == 200 and body == HEADERS["model"] + "\r\n", body
    assert f"activity-{mine}-model-" in headers["content-disposition"]

    # Another organization's member: naming this organization is a 404, as for one that does not exist,
    # and this organization's workspace is invisible to them.
    for path in ("/activity", "/activity.csv"):
        status, body, _ = get(gw, path, stranger, organization=mine)
        assert status == 404, body
        status, body, _ = get(gw, path, stranger, workspace_id=workspace)
        assert status == 404, body
    status, body, _ = get(gw, "/activity", stranger)   # their own: their balance, not ours
    assert status == 200 and body["meta"]["balance"] == Decimal("3"), body


def test_yesterdays_requests_are_reported_exactly(make_gateway: Callable[..., Gateway], org_name: str):
    """Real requests, then the gateway is stopped and their records are moved one day back in its
    database, as if they had been made yesterday (the server's clock cannot be set): the report
    must then show them, with the amounts and tokens GET /generation showed, exactly."""
    gw = make_gateway()
    gw.org(org_name, "1.00")
    key_a, hash_a = gw.key(org_name, name="alpha")
    key_b, hash_b = gw.key(org_name, name="beta")
    gens = [spend(gw, key_a, 40), spend(gw, key_a, 300), spend(gw, key_b, 7)]
    gw.stop()
    day_ms = 86_400_000
    with sqlite3.connect(gw.home / "farebox.db") as conn:
        moved = conn.execute("UPDATE generations SET created_at = created_at - ?, settled_at = settled_at - ?",
                             (day_ms, day_ms)).rowcount
    conn.close()
    assert moved == 3
    gw.start()

    days = {dt.date.fromisoformat(g["created_at"][:10]) - dt.timedelta(days=1) for g in gens}
    assert len(days) == 1, "the requests straddled midnight UTC"
    day = days.pop().isoformat()
    status, body, _ = get(gw, "/activity", gw.management_key, organization=org_name, group_by="key")
    assert status == 200, body

    def totals(of: list[dict[str, Any]]) -> dict[str, Any]:
        return {"requests": len(of), "prompt_tokens": sum(g["tokens_prompt"] for g in of),
                "completion_tokens": sum(g["tokens_completion"] for g in of),
                "reasoning_tokens": sum(g["native_tokens_reasoning"] for g in of),
                "usage": sum((g["usage"] for g in of), Decimal(0)), "byok_usage_inference": Decimal(0)}

    # by key: the larger spender first
    assert body["data"] == [
        {"date": day, "key_hash": hash_a, "name": "alpha", **totals(gens[:2])},
        {"date": day, "key_hash": hash_b, "name": "beta", **totals(gens[2:])},
    ]
    total = sum((g["usage"] for g in gens), Decimal(0))
    assert total > 0 and all(isinstance(g["usage"], Decimal) for g in gens)
    meta = body["meta"]
    assert meta["total_usage"] == total
    nanos = int(total * 10**9)
    assert meta["average_daily_spend"] == Decimal(nanos // 30) / 10**9
    balance = gw.balance(org_name)
    assert meta["balance"] == balance == Decimal(1) - total
    today = dt.date.fromisoformat(meta["to"]) + dt.timedelta(days=1)
    expected = today + dt.timedelta(days=int(balance * 10**9) // (nanos // 30))
    assert meta["projected_depletion_date"] == expected.isoformat()

    # by model: OpenRouter's row
    status, body, _ = get(gw, "/activity", gw.management_key, organization=org_name, date=day)
    assert status == 200, body
    [row] = body["data"]
    assert {k: row[k] for k in ("date", "model", "model_permaslug", "provider_name")} == {
        "date": day, "model": gens[0]["model"], "model_permaslug": gens[0]["model"],
        "provider_name": gens[0]["provider_name"]}
    assert row["endpoint_id"] and {k: row[k] for k in totals(gens)} == totals(gens)

    # the CSV carries the same amounts as exact decimal text
    status, text, _ = get(gw, "/activity.csv", gw.management_key, organization=org_name, group_by="day")
    assert status == 200, text
    header, line, end = text.split("\r\n")
    assert (header, end) == (HEADERS["day"], "")
    t = totals(gens)
    assert line == (f"{day},3,{t['prompt_tokens']},{t['completion_tokens']},{t['reasoning_tokens']},"
                    f"{total.normalize():f},0")
