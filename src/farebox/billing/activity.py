"""Activity reports (OpenRouter's GET /activity): usage over the last 30 completed UTC days,
summed from the generation records and grouped by day and one dimension, with a summary
(average daily spend, projected depletion date) and a CSV rendering.

Pure of HTTP: every function takes a SQLite connection (the store's reader) or rows.
Amounts stay integer nano-dollars here; the API turns them into exact USD.

Days are UTC days: day number = created_at (ms) // 86 400 000. Today is never reported:
its usage is still moving, and OpenRouter reports completed days only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from farebox.money import usd_text

DAY_MS = 86_400_000
WINDOW_DAYS = 30
_EPOCH = dt.date(1970, 1, 1)

# Each grouping: the fields its rows carry beside the date, and the SQL expressions (over
# generations g, keys k, workspaces w, projects p) that produce them, in the same order.
# The first field of each grouping is what the rows are grouped by (with the day); the
# others follow from it (a key's name, a workspace's name), except for "model" where
# OpenRouter groups by model, endpoint and provider together.
GROUPINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "model": (("model", "g.model"), ("model_permaslug", "g.model"), ("endpoint_id", "g.endpoint_id"),
              ("provider_name", "g.provider")),
    "day": (),
    "provider": (("provider_name", "g.provider"),),
    "key": (("key_hash", "g.key_hash"), ("name", "k.name")),
    "workspace": (("workspace_id", "g.workspace_id"), ("name", "w.name")),
    "member": (("user_id", "k.creator_user_id"),),
    "project": (("project_id", "g.project_id"), ("name", "p.name")),
}
# Which columns of a grouping go into GROUP BY: names follow from ids, so grouping by the id
# alone keeps a renamed key, workspace or project on one row.
_GROUP_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("g.model", "g.endpoint_id", "g.provider"), "day": (), "provider": ("g.provider",),
    "key": ("g.key_hash",), "workspace": ("g.workspace_id",), "member": ("k.creator_user_id",),
    "project": ("g.project_id",),
}
GROUP_BY = frozenset(GROUPINGS)
METRICS = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "usage", "byok_usage_inference")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")   # the guard billing/statement.py explains


@dataclass(frozen=True, slots=True)
class Row:
    """One day of one group. `group` holds the grouping's fields in GROUPINGS order;
    `usage` (credits charged) and `byok_usage_inference` (BYOK list-price cost, paid to the
    provider directly) are nano-dollars."""

    date: str
    group: dict[str, Any]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    usage: int
    byok_usage_inference: int


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def window(today: dt.date, days: int = WINDOW_DAYS) -> tuple[dt.date, dt.date]:
    """The first and last day (both included) of the `days` completed days before today."""
    return today - dt.timedelta(days=days), today - dt.timedelta(days=1)


def activity(conn: sqlite3.Connection, org_id: int, *, today: dt.date, group_by: str = "model",
             date: dt.date | None = None, key_hash: str | None = None, member_id: str | None = None,
             workspace_id: int | None = None, project_id: int | None = None,
             workspaces: set[int] | None = None) -> list[Row]:
    """The organization's usage per day and group over the last 30 completed UTC days (or on
    `date`, one of them; a date outside the window has no rows), narrowed by the filters.
    `workspaces`, when given, is all the caller may see: rows of other workspaces (and of
    none) are left out. Rows come by date, then by usage (largest first), then by group."""
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {sorted(GROUPINGS)}, got {group_by!r}")
    first, last = window(today)
    if date is not None:
        if not first <= date <= last:
            return []
        first = last = date
    if workspaces is not None and not workspaces:
        return []
    where = ["g.org_id = ?", "g.created_at >= ?", "g.created_at < ?"]
    args: list[Any] = [org_id, day_number(first) * DAY_MS, (day_number(last) + 1) * DAY_MS]
    for column, value in (("g.key_hash", key_hash), ("k.creator_user_id", member_id),
                          ("g.workspace_id", workspace_id), ("g.project_id", project_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if workspaces is not None:
        where.append(f"g.workspace_id IN ({', '.join('?' * len(workspaces))})")
        args.extend(sorted(workspaces))
    fields = GROUPINGS[group_by]
    selected = "".join(f", {expression}" for _, expression in fields)
    grouped = "".join(f", {column}" for column in _GROUP_KEYS[group_by])
    ordered = "".join(f", {expression}" for _, expression in fields)
    # The day is computed from created_at, so the range condition above uses the
    # generations_org (org_id, created_at) index. Names come from LEFT JOINs: a generation
    # of a deleted key, workspace or project still counts (the rows are never deleted).
    sql = (f"SELECT g.created_at / {DAY_MS} AS day{selected}, COUNT(*), SUM(g.tokens_prompt),"
           " SUM(g.tokens_completion), SUM(g.reasoning_tokens), SUM(g.charged), SUM(g.byok_cost) AS byok"
           " FROM generations g LEFT JOIN keys k ON k.hash = g.key_hash"
           " LEFT JOIN workspaces w ON w.id = g.workspace_id LEFT JOIN projects p ON p.id = g.project_id"
           f" WHERE {' AND '.join(where)} GROUP BY day{grouped}"
           f" ORDER BY day, SUM(g.charged) DESC, SUM(g.byok_cost) DESC{ordered}")
    names = [name for name, _ in fields]
    rows = []
    for day, *values in conn.execute(sql, args):
        group, metrics = values[:len(names)], values[len(names):]
        rows.append(Row((_EPOCH + dt.timedelta(days=day)).isoformat(), dict(zip(names, group, strict=True)),
                        *metrics))
    return rows


def summary(conn: sqlite3.Connection, org_id: int, *, today: dt.date, balance_nanos: int,
            days: int = WINDOW_DAYS, workspaces: set[int] | None = None) -> dict[str, Any]:
    """The credits used over the last `days` completed days, the average daily spend (the
    total / days, rounded down to a nano-dollar) and the day the balance runs out at that
    rate: today + floor(balance / average) days, None when nothing was spent (or when that
    day is after 9999-12-31). `workspaces`
    restricts the total as it restricts `activity`."""
    assert days > 0, days
    first, last = window(today, days)
    sql = "SELECT COALESCE(SUM(charged), 0) FROM generations WHERE org_id = ? AND created_at >= ? AND created_at < ?"
    args: list[Any] = [org_id, day_number(first) * DAY_MS, (day_number(last) + 1) * DAY_MS]
    if workspaces is not None:
        sql += f" AND workspace_id IN ({', '.join('?' * len(workspaces))})" if workspaces else " AND 0"
        args.extend(sorted(workspaces))
    total = conn.execute(sql, args).fetchone()[0]
    average = total // days
    depletion = None
    if average > 0:
        # A balance is never negative (the floor); max() keeps a depleted one at today.
        days_left = max(balance_nanos, 0) // average
        # A large balance spent slowly lasts beyond any calendar (dates end at 9999-12-31):
        # no date, as when nothing is spent.
        if days_left <= (dt.date.max - today).days:
            depletion = (today + dt.timedelta(days=days_left)).isoformat()
    return {"from": first.isoformat(), "to": last.isoformat(), "days": days, "total_usage": total,
            "average_daily_spend": average, "balance": balance_nanos, "projected_depletion_date": depletion}


def header(group_by: str) -> list[str]:
    return ["date", *(name for name, _ in GROUPINGS[group_by]), "requests", "prompt_tokens", "completion_tokens",
            "reasoning_tokens", "usage_usd", "byok_usage_inference_usd"]


def to_csv(rows: Iterable[Row], group_by: str) -> str:
    """RFC 4180 CSV (CRLF line ends), header first; USD amounts as exact decimal text.
    Key, workspace and project names are chosen by users: one that a spreadsheet would run
    as a formula is prefixed with "'" (see billing/statement.py)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header(group_by))
    names = [name for name, _ in GROUPINGS[group_by]]
    for row in rows:
        writer.writerow([row.date, *(_cell(row.group[name]) for name in names), row.requests, row.prompt_tokens,
                         row.completion_tokens, row.reasoning_tokens, usd_text(row.usage),
                         usd_text(row.byok_usage_inference)])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
