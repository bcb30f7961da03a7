"""What a served request leaves behind: the `usage` block its client receives, its
generation record, and (only with the prompt-logging opt-in) its content."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farebox.ledger.book import Settlement
from farebox.ledger.pricing import Cost, Usage
from farebox.money import round_up_to_nanos, usd_json

if TYPE_CHECKING:
    from farebox.request import ChatRequest, Outcome


def logged_content(req: ChatRequest, outcome: Outcome) -> dict[str, Any] | None:
    """What prompt logging keeps: only for organizations that opted in."""
    if not req.logging:
        return None
    body = req.body
    prompt = {k: body[k] for k in ("messages", "prompt", "input") if k in body}
    return {"request": prompt, "completion": outcome.completion_text or ""}


def generation_record(req: ChatRequest, o: Outcome, cost: Cost, settlement: Settlement, hold_amount: int,
                      listed: int, now: float, now_ms: int) -> dict[str, Any]:
    """The stored record of one generation (`now` is monotonic, `now_ms` wall time)."""
    u = o.usage
    body = req.body
    return {
        "id": req.gen_id, "org_id": req.org.id, "workspace_id": req.key.workspace_id, "key_hash": req.key.hash,
        "project_id": req.project.id if req.project is not None else None, "settled_at_ms": now_ms,
        "created_at_ms": req.created_ms, "model": o.endpoint.model_id, "provider_name": o.endpoint.provider.name,
        "endpoint_id": o.endpoint.id, "upstream_id": o.upstream_id, "streamed": req.stream,
        "cancelled": o.cancelled, "latency_ms": round((now - req.started) * 1000),
        "generation_time_ms": round((now - o.first_token_at) * 1000) if o.first_token_at else None,
        "finish_reason": o.finish, "native_finish_reason": o.native_finish,
        "tokens_prompt": u.prompt_tokens, "tokens_completion": u.completion_tokens,
        "native_tokens_reasoning": u.reasoning_tokens, "native_tokens_cached": u.cached_tokens,
        "native_tokens_cache_write": u.cache_write_tokens, "usage_estimated": u.estimated,
        "num_media_prompt": req.prompt.images, "total_cost_nanos": settlement.charged + settlement.overrun,
        "charged_nanos": settlement.charged, "overrun_nanos": settlement.overrun, "hold_nanos": hold_amount,
        # Atto-dollars as decimal strings: an item over $18.45 is beyond the 64-bit integers
        # a JSON encoder (orjson) writes, and its charge could not have been recorded.
        "cost_items_attos": {k: str(v) for k, v in cost.items().items()},
        "cache_discount_attos": str(cost.cache_discount),
        "provider_responses": o.attempts, "http_referer": req.http_referer, "app_title": req.title,
        "user_agent": req.user_agent, "external_user": body.get("user") if isinstance(body.get("user"), str) else None,
        "session_id": body.get("session_id") if isinstance(body.get("session_id"), str) else None,
        "requested_model": req.models[0], "api_type": "embeddings" if req.api == "embedding" else "completions",
        "is_byok": o.byok, "byok_cost_nanos": listed, "logged": req.logging,
    }


def usage_wire(usage: Usage, cost: Cost, settlement: Settlement, api: str = "chat", byok: bool = False) -> dict[str, Any]:
    """The `usage` block. `cost` is what the balance paid; on the workspace's own key (BYOK)
    that is the fee, and `cost_details.upstream_inference_cost` is the provider's list-price
    cost, paid to the provider directly: the true total is their sum, only then."""
    upstream = usd_json(cost.listed)
    if api == "embedding":
        return {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens,
                "cost": usd_json(settlement.charged), "is_byok": byok,
                "cost_details": {"upstream_inference_cost": upstream}}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": usd_json(settlement.charged),
        "is_byok": byok,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens,
                                  "audio_tokens": 0, "video_tokens": 0},
        "cost_details": {
            "upstream_inference_cost": upstream,
            "upstream_inference_prompt_cost": usd_json(round_up_to_nanos(
                cost.prompt + cost.cache_read + cost.cache_write + cost.request + cost.image)),
            "upstream_inference_completions_cost": usd_json(round_up_to_nanos(cost.completion + cost.reasoning)),
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "image_tokens": 0,
                                      "audio_tokens": 0},
    }
