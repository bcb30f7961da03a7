"""Wire shapes shared by several endpoints: keys, organizations, generations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farebox.api.http import iso
from farebox.ledger.caps import BUDGET_PERIODS, Cap
from farebox.ledger.entries import wallet
from farebox.ledger.usage import PERIODS
from farebox.money import round_up_to_nanos, usd_json
from farebox.tenancy.records import PRIVACY, KeyRecord, Organization, Project, Workspace

if TYPE_CHECKING:
    from farebox.app import Gateway

_ZERO = usd_json(0)


def _usd_or_none(nanos: int | None) -> Any:
    return None if nanos is None else usd_json(nanos)


def key_wire(gw: Gateway, key: KeyRecord) -> dict[str, Any]:
    now = gw.clock.now()
    cap = key.cap
    limit = key.limit
    if limit is None:
        remaining = None
    else:
        room = cap.remaining(now)
        # What is left to spend, open holds aside (they are not spent yet).
        remaining = max(room[0] + cap.held, 0) if room is not None else limit
    org = gw.directory.orgs.get(key.org_id) if key.org_id is not None else None
    data: dict[str, Any] = {
        "hash": key.hash, "name": key.name, "label": key.label, "disabled": key.disabled,
        "limit": _usd_or_none(limit), "limit_remaining": _usd_or_none(remaining), "limit_reset": key.limit_reset,
        "include_byok_in_limit": key.include_byok_in_limit, "usage": usd_json(cap.usage.total),
    }
    for period in PERIODS:
        data[f"usage_{period}"] = usd_json(cap.usage.in_period(period, now))
    data["byok_usage"] = usd_json(cap.byok.total)
    for period in PERIODS:
        data[f"byok_usage_{period}"] = usd_json(cap.byok.in_period(period, now))
    data.update({
        "created_at": iso(key.created_at), "updated_at": iso(key.updated_at),
        "expires_at": iso(key.expires_at, seconds=True), "creator_user_id": key.creator_user_id,
        "workspace_id": key.workspace_id, "organization": org.name if org else None,
        "rate_limit_rpm": key.rate_limit_rpm, "rate_limit_tpm": key.rate_limit_tpm,
    })
    return data


def budgets_wire(cap: Cap, now: float) -> dict[str, Any]:
    """A workspace's or project's budgets: each period's limit, what was spent in its current
    window, and what is left (open holds aside)."""
    return {period: {"limit": usd_json(limit), "usage": usd_json(cap.spent(period, now)),
                     "remaining": usd_json(max(limit - cap.spent(period, now), 0))}
            for period, limit in sorted(cap.limits.items(), key=lambda item: BUDGET_PERIODS.index(item[0]))}


def workspace_wire(gw: Gateway, workspace: Workspace) -> dict[str, Any]:
    now = gw.clock.now()
    cap = workspace.cap
    data: dict[str, Any] = {
        "id": workspace.id, "name": workspace.name, "created_at": iso(workspace.created_at),
        "updated_at": iso(workspace.updated_at), "pooled": workspace.pooled,
        "include_byok_in_budgets": cap.include_byok, "budgets": budgets_wire(cap, now),
        "usage": usd_json(cap.usage.total), "byok_usage": usd_json(cap.byok.total),
        "settings": {name: bool(workspace.settings.get(name, False)) for name in PRIVACY},
    }
    for period in PERIODS:
        data[f"usage_{period}"] = usd_json(cap.usage.in_period(period, now))
    if workspace.pooled:
        data["balance"] = usd_json(gw.book.balance(workspace.account))
        data["available"] = usd_json(gw.book.available(workspace.account))
    return data


def project_wire(gw: Gateway, project: Project) -> dict[str, Any]:
    now = gw.clock.now()
    cap = project.cap
    data: dict[str, Any] = {
        "id": project.id, "name": project.name, "workspace_id": project.workspace_id,
        "created_at": iso(project.created_at), "updated_at": iso(project.updated_at),
        "budgets": budgets_wire(cap, now), "usage": usd_json(cap.usage.total),
    }
    for period in PERIODS:
        data[f"usage_{period}"] = usd_json(cap.usage.in_period(period, now))
    return data


def org_wire(gw: Gateway, org: Organization) -> dict[str, Any]:
    """The organization's own wallet (`balance`, `available`), and `total_*` over all its
    credit, workspace pools included."""
    book = gw.book
    account = wallet(org.id)
    accounts = org.accounts
    spent = sum(book.spent.get(a, 0) for a in accounts)
    held = sum(book.balance(a) for a in accounts)
    return {
        "id": org.id, "name": org.name, "created_at": iso(org.created_at),
        "balance": usd_json(book.balance(account)), "available": usd_json(book.available(account)),
        "total_balance": usd_json(held), "total_credits": usd_json(held + spent), "total_usage": usd_json(spent),
        "workspaces": [{"id": w.id, "name": w.name, "pooled": w.pooled} for _, w in sorted(org.workspaces.items())],
    }


def _signed_usd(attos: int) -> Any:
    nanos = round_up_to_nanos(abs(attos))
    return usd_json(-nanos if attos < 0 else nanos)


def generation_wire(g: dict[str, Any]) -> dict[str, Any]:
    """A stored generation record as GET /api/v1/generation shows it (section 2.5)."""
    items = g.get("cost_items_attos", {})
    return {
        "id": g["id"], "upstream_id": g.get("upstream_id"), "request_id": None, "session_id": g.get("session_id"),
        "created_at": iso(g["created_at_ms"]), "model": g["model"], "provider_name": g["provider_name"],
        "router": None, "api_type": g.get("api_type", "completions"), "app_id": None,
        "origin": g.get("http_referer") or "", "http_referer": g.get("http_referer"),
        "user_agent": g.get("user_agent"), "external_user": g.get("external_user"),
        "streamed": g["streamed"], "cancelled": g["cancelled"], "is_byok": g.get("is_byok", False),
        "latency": g["latency_ms"], "generation_time": g.get("generation_time_ms"), "moderation_latency": None,
        "finish_reason": g["finish_reason"], "native_finish_reason": g.get("native_finish_reason"),
        "tokens_prompt": g["tokens_prompt"], "tokens_completion": g["tokens_completion"],
        "native_tokens_prompt": g["tokens_prompt"], "native_tokens_completion": g["tokens_completion"],
        "native_tokens_reasoning": g.get("native_tokens_reasoning", 0),
        "native_tokens_cached": g.get("native_tokens_cached", 0),
        "native_tokens_completion_images": 0,
        "num_media_prompt": g.get("num_media_prompt", 0), "num_media_completion": 0,
        "num_input_audio_prompt": 0, "num_search_results": 0, "num_fetches": 0,
        "total_cost": usd_json(g["total_cost_nanos"]), "usage": usd_json(g["charged_nanos"]),
        # BYOK: what the provider charged the workspace's own account, at list price.
        "upstream_inference_cost": usd_json(g["byok_cost_nanos"] if g.get("is_byok") else g["total_cost_nanos"]),
        "cache_discount": _signed_usd(int(g.get("cache_discount_attos", 0))),
        "web_search_engine": None, "service_tier": None, "data_region": None, "preset_id": None,
        "workspace_id": g.get("workspace_id"),
        "provider_responses": g.get("provider_responses", []),
        # Farebox additions: the exact line items, the hold and any overrun.
        # Strings in records since they could exceed 64 bits (generation.py); ints before.
        "cost_details": {k: _signed_usd(int(v)) for k, v in items.items()},
        "hold": usd_json(g.get("hold_nanos", 0)), "overrun": usd_json(g.get("overrun_nanos", 0)),
        "usage_estimated": g.get("usage_estimated", False),
    }
