"""Activity (OpenRouter's GET /activity, issue 6): usage over the last 30 completed UTC days,
grouped by day and a dimension, as JSON or CSV, with a summary (average daily spend,
projected depletion date) in `meta`.

For the operator and an organization's members, not for API keys. A member limited to some
workspaces sees only those workspaces' rows, and their summary counts only those.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from farebox.api.http import Request, Response, json_response
from farebox.billing import activity as reports
from farebox.errors import BadRequest, NotFound
from farebox.money import usd_json
from farebox.tenancy import access
from farebox.tenancy.records import Organization

if TYPE_CHECKING:
    from farebox.app import Gateway

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ID = re.compile(r"[0-9]{1,18}")
_TEXT_MAX = 200
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Query:
    org: Organization
    today: dt.date
    group_by: str
    date: dt.date | None
    key_hash: str | None
    member_id: str | None
    workspace_id: int | None
    project_id: int | None
    workspaces: set[int] | None     # None: the caller sees every workspace


async def activity(gw: Gateway, req: Request) -> Response:
    q = _query(gw, req)
    rows, summary = await _read(gw, q)
    return json_response({"data": [_row_wire(row) for row in rows], "meta": {
        "from": summary["from"], "to": summary["to"], "group_by": q.group_by,
        "total_usage": usd_json(summary["total_usage"]),
        "average_daily_spend": usd_json(summary["average_daily_spend"]),
        "balance": usd_json(summary["balance"]),
        "projected_depletion_date": summary["projected_depletion_date"],
    }})


async def activity_csv(gw: Gateway, req: Request) -> Response:
    q = _query(gw, req)
    rows, summary = await _read(gw, q)
    period = q.date.isoformat() if q.date else f"{summary['from']}-{summary['to']}"
    name = _FILENAME_UNSAFE.sub("_", f"activity-{q.org.name}-{q.group_by}-{period}")
    return Response(200, reports.to_csv(rows, q.group_by).encode(), [
        (b"content-type", b"text/csv; charset=utf-8"),
        (b"content-disposition", f'attachment; filename="{name}.csv"'.encode())])


def _row_wire(row: reports.Row) -> dict[str, Any]:
    return {"date": row.date, **row.group, "requests": row.requests, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "reasoning_tokens": row.reasoning_tokens,
            "usage": usd_json(row.usage), "byok_usage_inference": usd_json(row.byok_usage_inference)}


async def _read(gw: Gateway, q: Query) -> tuple[list[reports.Row], dict[str, Any]]:
    balance = _balance(gw, q.org.id)

    def read(conn: sqlite3.Connection) -> tuple[list[reports.Row], dict[str, Any]]:
        # One read: the rows and the summary see the same committed generations.
        rows = reports.activity(conn, q.org.id, today=q.today, group_by=q.group_by, date=q.date,
                                key_hash=q.key_hash, member_id=q.member_id, workspace_id=q.workspace_id,
                                project_id=q.project_id, workspaces=q.workspaces)
        return rows, reports.summary(conn, q.org.id, today=q.today, balance_nanos=balance,
                                     workspaces=q.workspaces)

    return await gw.store.read(read)


def _balance(gw: Gateway, org_id: int) -> int:
    """The organization's credit: its wallet and every workspace pool (org:<id>:ws:<w>:wallet),
    a deleted workspace's leftover pool included."""
    prefix = f"org:{org_id}:"
    return sum(gw.book.balance(a) for a in list(gw.book.balances) if a.startswith(prefix) and a.endswith(":wallet"))


def _query(gw: Gateway, req: Request) -> Query:
    principal = access.resolve(gw, req)            # members and the operator; API keys get 403
    org = access.organization(gw, principal, req)
    workspace_id = _int(req.query("workspace_id"), "workspace_id")
    access.require(principal, "read", workspace_id=workspace_id)   # 404 for a workspace out of reach
    visible = access.visible_workspaces(principal, org)
    if workspace_id is not None and workspace_id not in visible:   # in reach, but not a live one of org
        raise NotFound(f"No workspace {workspace_id} in this organization")
    group_by = req.query("group_by") or "model"
    if group_by not in reports.GROUP_BY:
        raise BadRequest(f"group_by must be one of: {', '.join(reports.GROUPINGS)}", field="group_by")
    return Query(
        org=org, today=dt.datetime.fromtimestamp(gw.clock.now(), dt.UTC).date(), group_by=group_by,
        date=_date(req.query("date")), key_hash=_text(req.query("api_key_hash"), "api_key_hash"),
        member_id=_text(req.query("user_id"), "user_id"), workspace_id=workspace_id,
        project_id=_int(req.query("project_id"), "project_id"),
        # A caller not limited to some workspaces sees every row, deleted workspaces' included:
        # restricting them to the live ones would make a deleted workspace's spending vanish.
        workspaces=None if principal.workspaces is None else visible)


def _date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    if not _DATE.fullmatch(value):   # fromisoformat also reads 20261123 and 2026-W48-1
        raise BadRequest("date must be a UTC date such as 2026-11-01", field="date")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest("date must be a UTC date such as 2026-11-01", field="date") from None


def _int(value: str | None, field: str) -> int | None:
    if value is None:
        return None
    if not _ID.fullmatch(value):
        raise BadRequest(f"{field} must be an integer id", field=field)
    return int(value)


def _text(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not value or len(value) > _TEXT_MAX:
        raise BadRequest(f"{field} must be a non-empty string of at most {_TEXT_MAX} characters", field=field)
    return value
