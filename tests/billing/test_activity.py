"""Activity reports over a real SQLite store: the window of 30 completed UTC days (today and
the 31st day back left out, to the millisecond), every grouping, every filter, the workspace
restriction, other organizations' rows, the CSV (header, exact amounts, formula guard), and
the summary's exact arithmetic and depletion date."""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farebox.billing.activity import DAY_MS, GROUPINGS, Row, activity, header, summary, to_csv
from farebox.ledger.entries import wallet
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

TODAY = dt.date(2026, 3, 15)
FIRST = dt.date(2026, 2, 13)     # the 30th completed day back: the window's first day
LAST = dt.date(2026, 3, 14)      # yesterday: the window's last day
BEFORE = dt.date(2026, 2, 12)    # the 31st day back: outside
HOUR = 3_600_000
ORG, OTHER = 1, 2
WS_DEFAULT, WS_RESEARCH, WS_OTHER = 10, 11, 20
PROJECT = 100


def ms(day: dt.date, offset: int = 0) -> int:
    return (day - dt.date(1970, 1, 1)).days * DAY_MS + offset


def setup(conn: sqlite3.Connection) -> None:
    for oid in (ORG, OTHER):
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (oid, f"org{oid}"))
        ops.ensure_account(conn, wallet(oid), oid, "wallet")
    conn.executemany("INSERT INTO workspaces (id, org_id, name, created_at) VALUES (?, ?, ?, 0)",
                     [(WS_DEFAULT, ORG, "default"), (WS_RESEARCH, ORG, "research"), (WS_OTHER, OTHER, "default")])
    conn.executemany(
        "INSERT INTO keys (hash, kind, org_id, workspace_id, name, label, creator_user_id, created_at)"
        " VALUES (?, 'api', ?, ?, ?, 'sk-or-v1-x...y', ?, 0)",
        [("ka", ORG, WS_DEFAULT, "prod", "user_a"), ("kb", ORG, WS_RESEARCH, "=HYPERLINK(1)", "user_b"),
         ("kc", ORG, WS_DEFAULT, "batch", None), ("kz", OTHER, WS_OTHER, "theirs", "user_z")])
    conn.execute("INSERT INTO projects (id, org_id, workspace_id, name, created_at) VALUES (?, ?, ?, 'alpha', 0)",
                 (PROJECT, ORG, WS_RESEARCH))


_ids = iter(range(10**6))


def gen(at_ms: int, key: str = "ka", *, charged: int = 1_000, byok: int = 0, model: str = "acme/chat",
        provider: str = "Acme", endpoint: str = "acme/chat@acme", prompt: int = 10, completion: int = 5,
        reasoning: int = 0, project: int | None = None) -> dict[str, Any]:
    org, ws = {"ka": (ORG, WS_DEFAULT), "kb": (ORG, WS_RESEARCH), "kc": (ORG, WS_DEFAULT),
               "kz": (OTHER, WS_OTHER)}[key]
    return {"id": f"gen-{next(_ids)}", "org_id": org, "workspace_id": ws, "key_hash": key, "created_at_ms": at_ms,
            "model": model, "provider_name": provider, "total_cost_nanos": charged, "charged_nanos": charged,
            "tokens_prompt": prompt, "tokens_completion": completion, "streamed": False, "cancelled": False,
            "finish_reason": "stop", "project_id": project, "endpoint_id": endpoint,
            "native_tokens_reasoning": reasoning, "is_byok": byok > 0, "byok_cost_nanos": byok,
            "settled_at_ms": at_ms + 1}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "activity.db")
    GroupWriter(s.writer_conn).run_sync(setup)
    yield s
    s.close()


def insert(store: Store, *generations: dict[str, Any]) -> None:
    def op(conn: sqlite3.Connection) -> None:
        for g in generations:
            ops.insert_generation(conn, g)
    GroupWriter(store.writer_conn).run_sync(op)


def report(store: Store, **kw: Any) -> list[Row]:
    return store.read_sync(lambda conn: activity(conn, ORG, today=TODAY, **kw))


def flat(rows: list[Row]) -> list[tuple[Any, ...]]:
    return [(r.date, *r.group.values(), r.requests, r.prompt_tokens, r.completion_tokens, r.reasoning_tokens,
             r.usage, r.byok_usage_inference) for r in rows]


# -- the window --------------------------------------------------------------------------------

def test_the_window_is_the_30_completed_days_to_the_millisecond(store: Store) -> None:
    insert(store,
           gen(ms(BEFORE, DAY_MS - 1), charged=1),       # the 31st day back's last millisecond: out
           gen(ms(FIRST), charged=2),                    # the first day's first millisecond: in
           gen(ms(FIRST, DAY_MS - 1), charged=4),
           gen(ms(LAST, DAY_MS - 1), charged=8),         # yesterday's last millisecond: in
           gen(ms(TODAY), charged=16),                   # today: out (not completed)
           gen(ms(TODAY, 5 * HOUR), charged=32))
    assert flat(report(store, group_by="day")) == [
        ("2026-02-13", 2, 20, 10, 0, 6, 0),
        ("2026-03-14", 1, 10, 5, 0, 8, 0),
    ]


def test_a_date_narrows_to_one_day_of_the_window_and_outside_it_there_is_nothing(store: Store) -> None:
    insert(store, gen(ms(FIRST, HOUR), charged=3), gen(ms(LAST, HOUR), charged=5), gen(ms(TODAY, HOUR), charged=7),
           gen(ms(BEFORE, HOUR), charged=11))
    assert [(r.date, r.usage) for r in report(store, group_by="day", date=LAST)] == [("2026-03-14", 5)]
    assert [(r.date, r.usage) for r in report(store, group_by="day", date=FIRST)] == [("2026-02-13", 3)]
    assert report(store, group_by="day", date=TODAY) == []
    assert report(store, group_by="day", date=BEFORE) == []
    assert report(store, group_by="day", date=dt.date(2026, 3, 1)) == []   # in the window, no usage


def test_nothing_recorded_means_no_rows(store: Store) -> None:
    for group_by in GROUPINGS:
        assert report(store, group_by=group_by) == []


def test_an_unknown_grouping_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="group_by"):
        report(store, group_by="color")


# -- groupings ---------------------------------------------------------------------------------

@pytest.fixture
def filled(store: Store) -> Store:
    d1, d2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    insert(store,
           # day 1: two endpoints of one model, another model, BYOK, a project, three keys
           gen(ms(d1, 1 * HOUR), "ka", charged=1_000, prompt=100, completion=10, reasoning=3),
           gen(ms(d1, 2 * HOUR), "ka", charged=2_000, prompt=200, completion=20, endpoint="acme/chat@acme-eu"),
           gen(ms(d1, 3 * HOUR), "kb", charged=50, byok=1_000, model="beta/think", provider="Beta",
               endpoint="beta/think@beta", reasoning=7, project=PROJECT),
           gen(ms(d1, 4 * HOUR), "kc", charged=123_456_789, prompt=1, completion=1),
           # day 2
           gen(ms(d2, 1 * HOUR), "kb", charged=7, project=PROJECT),
           gen(ms(d2, 2 * HOUR), "ka", charged=1),
           # another organization, same days: never in org 1's report
           gen(ms(d1, 1 * HOUR), "kz", charged=999_999),
           gen(ms(d2, 1 * HOUR), "kz", charged=999_999))
    return store


def test_by_model_one_row_per_day_model_endpoint_and_provider(filled: Store) -> None:
    rows = report(filled)   # "model" is the default, as OpenRouter's
    assert rows[0].group == {"model": "acme/chat", "model_permaslug": "acme/chat",
                                          "endpoint_id": "acme/chat@acme", "provider_name": "Acme"}
    assert flat(rows) == [
        ("2026-03-01", "acme/chat", "acme/chat", "acme/chat@acme", "Acme", 2, 101, 11, 3, 123_457_789, 0),
        ("2026-03-01", "acme/chat", "acme/chat", "acme/chat@acme-eu", "Acme", 1, 200, 20, 0, 2_000, 0),
        ("2026-03-01", "beta/think", "beta/think", "beta/think@beta", "Beta", 1, 10, 5, 7, 50, 1_000),
        ("2026-03-02", "acme/chat", "acme/chat", "acme/chat@acme", "Acme", 2, 20, 10, 0, 8, 0),
    ]


def test_by_day(filled: Store) -> None:
    assert flat(report(filled, group_by="day")) == [
        ("2026-03-01", 4, 311, 36, 10, 123_459_839, 1_000),
        ("2026-03-02", 2, 20, 10, 0, 8, 0),
    ]


def test_by_provider(filled: Store) -> None:
    assert flat(report(filled, group_by="provider")) == [
        ("2026-03-01", "Acme", 3, 301, 31, 3, 123_459_789, 0),
        ("2026-03-01", "Beta", 1, 10, 5, 7, 50, 1_000),
        ("2026-03-02", "Acme", 2, 20, 10, 0, 8, 0),
    ]


def test_by_key_with_its_name(filled: Store) -> None:
    assert flat(report(filled, group_by="key")) == [
        ("2026-03-01", "kc", "batch", 1, 1, 1, 0, 123_456_789, 0),
        ("2026-03-01", "ka", "prod", 2, 300, 30, 3, 3_000, 0),
        ("2026-03-01", "kb", "=HYPERLINK(1)", 1, 10, 5, 7, 50, 1_000),
        ("2026-03-02", "kb", "=HYPERLINK(1)", 1, 10, 5, 0, 7, 0),
        ("2026-03-02", "ka", "prod", 1, 10, 5, 0, 1, 0),
    ]


def test_by_workspace_with_its_name(filled: Store) -> None:
    assert flat(report(filled, group_by="workspace")) == [
        ("2026-03-01", WS_DEFAULT, "default", 3, 301, 31, 3, 123_459_789, 0),
        ("2026-03-01", WS_RESEARCH, "research", 1, 10, 5, 7, 50, 1_000),
        ("2026-03-02", WS_RESEARCH, "research", 1, 10, 5, 0, 7, 0),
        ("2026-03-02", WS_DEFAULT, "default", 1, 10, 5, 0, 1, 0),
    ]


def test_by_member_the_keys_creator(filled: Store) -> None:
    # kc has no creator: its usage is a row with no user rather than lost
    assert flat(report(filled, group_by="member")) == [
        ("2026-03-01", None, 1, 1, 1, 0, 123_456_789, 0),
        ("2026-03-01", "user_a", 2, 300, 30, 3, 3_000, 0),
        ("2026-03-01", "user_b", 1, 10, 5, 7, 50, 1_000),
        ("2026-03-02", "user_b", 1, 10, 5, 0, 7, 0),
        ("2026-03-02", "user_a", 1, 10, 5, 0, 1, 0),
    ]


def test_by_project_with_its_name(filled: Store) -> None:
    assert flat(report(filled, group_by="project")) == [
        ("2026-03-01", None, None, 3, 301, 31, 3, 123_459_789, 0),
        ("2026-03-01", PROJECT, "alpha", 1, 10, 5, 7, 50, 1_000),
        ("2026-03-02", PROJECT, "alpha", 1, 10, 5, 0, 7, 0),
        ("2026-03-02", None, None, 1, 10, 5, 0, 1, 0),
    ]


def test_a_renamed_key_stays_one_row(filled: Store) -> None:
    GroupWriter(filled.writer_conn).run_sync(lambda conn: conn.execute("UPDATE keys SET name = 'p' WHERE hash='ka'"))
    rows = [r for r in report(filled, group_by="key") if r.group["key_hash"] == "ka"]
    assert [(r.date, r.group["name"], r.requests) for r in rows] == [("2026-03-01", "p", 2), ("2026-03-02", "p", 1)]


# -- filters -----------------------------------------------------------------------------------

def test_filter_by_key(filled: Store) -> None:
    assert flat(report(filled, group_by="day", key_hash="kb")) == [
        ("2026-03-01", 1, 10, 5, 7, 50, 1_000), ("2026-03-02", 1, 10, 5, 0, 7, 0)]
    assert report(filled, key_hash="kz") == []   # another organization's key


def test_filter_by_member(filled: Store) -> None:
    assert flat(report(filled, group_by="day", member_id="user_a")) == [
        ("2026-03-01", 2, 300, 30, 3, 3_000, 0), ("2026-03-02", 1, 10, 5, 0, 1, 0)]
    assert report(filled, member_id="user_z") == []
    assert report(filled, member_id="user_nobody") == []


def test_filter_by_workspace(filled: Store) -> None:
    assert flat(report(filled, group_by="day", workspace_id=WS_DEFAULT)) == [
        ("2026-03-01", 3, 301, 31, 3, 123_459_789, 0), ("2026-03-02", 1, 10, 5, 0, 1, 0)]
    assert report(filled, workspace_id=WS_OTHER) == []


def test_filter_by_project(filled: Store) -> None:
    assert flat(report(filled, group_by="project", project_id=PROJECT)) == [
        ("2026-03-01", PROJECT, "alpha", 1, 10, 5, 7, 50, 1_000), ("2026-03-02", PROJECT, "alpha", 1, 10, 5, 0, 7, 0)]


def test_filters_combine(filled: Store) -> None:
    assert flat(report(filled, group_by="key", workspace_id=WS_DEFAULT, member_id="user_a",
                       date=dt.date(2026, 3, 2))) == [("2026-03-02", "ka", "prod", 1, 10, 5, 0, 1, 0)]
    assert report(filled, workspace_id=WS_DEFAULT, key_hash="kb") == []


def test_workspace_restriction_leaves_out_other_workspaces(filled: Store) -> None:
    rows = report(filled, group_by="workspace", workspaces={WS_RESEARCH})
    assert {r.group["workspace_id"] for r in rows} == {WS_RESEARCH}
    assert sum(r.usage for r in rows) == 57
    # a filter cannot reach past the restriction
    assert report(filled, workspaces={WS_RESEARCH}, workspace_id=WS_DEFAULT) == []
    assert report(filled, workspaces={WS_RESEARCH}, key_hash="ka") == []
    # limited to no workspace: nothing; to every workspace: everything
    assert report(filled, workspaces=set()) == []
    assert flat(report(filled, workspaces={WS_DEFAULT, WS_RESEARCH})) == flat(report(filled))


# -- CSV ---------------------------------------------------------------------------------------

def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_csv_header_per_grouping() -> None:
    assert header("model") == ["date", "model", "model_permaslug", "endpoint_id", "provider_name", "requests",
                               "prompt_tokens", "completion_tokens", "reasoning_tokens", "usage_usd",
                               "byok_usage_inference_usd"]
    assert header("day")[:2] == ["date", "requests"]
    assert header("key")[:3] == ["date", "key_hash", "name"]
    assert header("member")[:2] == ["date", "user_id"]
    assert to_csv([], "workspace") == ("date,workspace_id,name,requests,prompt_tokens,completion_tokens,"
                                       "reasoning_tokens,usage_usd,byok_usage_inference_usd\r\n")


def test_csv_amounts_are_exact_and_names_cannot_run_as_formulas(filled: Store) -> None:
    rows = parse(to_csv(report(filled, group_by="key"), "key"))
    assert rows == [
        header("key"),
        ["2026-03-01", "kc", "batch", "1", "1", "1", "0", "0.123456789", "0"],
        ["2026-03-01", "ka", "prod", "2", "300", "30", "3", "0.000003", "0"],
        ["2026-03-01", "kb", "'=HYPERLINK(1)", "1", "10", "5", "7", "0.00000005", "0.000001"],
        ["2026-03-02", "kb", "'=HYPERLINK(1)", "1", "10", "5", "0", "0.000000007", "0"],
        ["2026-03-02", "ka", "prod", "1", "10", "5", "0", "0.000000001", "0"],
    ]
    project = parse(to_csv(report(filled, group_by="project"), "project"))
    assert project[1][:3] == ["2026-03-01", "", ""]   # no project: empty cells, not "None"


# -- summary -----------------------------------------------------------------------------------

def summarize(store: Store, balance: int, **kw: Any) -> dict[str, Any]:
    return store.read_sync(lambda conn: summary(conn, ORG, today=TODAY, balance_nanos=balance, **kw))


def test_summary_average_is_the_total_over_30_days_rounded_down(store: Store) -> None:
    # 1_000_000_019 nano-dollars over the window: 33_333_333.966... a day -> 33_333_333
    insert(store, gen(ms(FIRST), charged=600_000_000), gen(ms(LAST, DAY_MS - 1), charged=400_000_019),
           gen(ms(TODAY), charged=10**12), gen(ms(BEFORE, DAY_MS - 1), charged=10**12),   # outside
           gen(ms(LAST), "kz", charged=10**12))                                            # another org
    s = summarize(store, balance=10**9)
    assert s["total_usage"] == 1_000_000_019
    assert s["average_daily_spend"] == 33_333_333
    # 10**9 // 33_333_333 = 30 days (30.0000003): 2026-03-15 + 30 days
    assert s["projected_depletion_date"] == "2026-04-14"
    assert (s["from"], s["to"], s["balance"]) == ("2026-02-13", "2026-03-14", 10**9)


def test_depletion_date_rounds_down_to_whole_days(store: Store) -> None:
    insert(store, gen(ms(LAST), charged=30 * 7))        # average exactly 7 nano-dollars a day
    assert summarize(store, balance=20)["projected_depletion_date"] == "2026-03-17"   # 20 // 7 = 2
    assert summarize(store, balance=21)["projected_depletion_date"] == "2026-03-18"   # 21 // 7 = 3
    assert summarize(store, balance=6)["projected_depletion_date"] == "2026-03-15"    # runs out today
    assert summarize(store, balance=0)["projected_depletion_date"] == "2026-03-15"


def test_no_spending_means_no_depletion_date(store: Store) -> None:
    s = summarize(store, balance=10**9)
    assert (s["total_usage"], s["average_daily_spend"], s["projected_depletion_date"]) == (0, 0, None)
    # spent, but less than a nano-dollar a day on average: still no date rather than a division by zero
    insert(store, gen(ms(LAST), charged=29), gen(ms(TODAY), charged=10**9))
    s = summarize(store, balance=10**9)
    assert (s["total_usage"], s["average_daily_spend"], s["projected_depletion_date"]) == (29, 0, None)


def test_a_balance_outlasting_the_calendar_has_no_depletion_date(store: Store) -> None:
    insert(store, gen(ms(LAST), charged=30))            # 1 nano-dollar a day
    last_day = (dt.date.max - TODAY).days               # days from today to 9999-12-31
    assert summarize(store, balance=last_day)["projected_depletion_date"] == "9999-12-31"
    assert summarize(store, balance=last_day + 1)["projected_depletion_date"] is None
    assert summarize(store, balance=10**15)["projected_depletion_date"] is None


def test_summary_over_other_windows_and_workspaces(store: Store) -> None:
    insert(store, gen(ms(LAST), "ka", charged=70), gen(ms(LAST), "kb", charged=700),
           gen(ms(TODAY - dt.timedelta(days=8)), "ka", charged=7_000))
    week = summarize(store, balance=7_700, days=7)
    assert (week["from"], week["total_usage"], week["average_daily_spend"]) == ("2026-03-08", 770, 110)
    assert week["projected_depletion_date"] == "2026-05-24"    # 7_700 // 110 = 70 days
    assert summarize(store, balance=0, workspaces={WS_RESEARCH})["total_usage"] == 700
    assert summarize(store, balance=0, workspaces=set())["total_usage"] == 0
