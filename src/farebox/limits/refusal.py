"""How a rate-limit decision reaches the client: OpenRouter's X-RateLimit-* headers and its
429 shape, shared by the free tier and per-key limits."""

from __future__ import annotations

from farebox.errors import RateLimited
from farebox.limits.base import Decision


def retry_after_s(reset_ms: int, now_ms: int) -> int:
    """Whole seconds until `reset_ms`, rounded up, at least 1 (a Retry-After of 0 invites a
    client to retry at once, inside the window that just refused it)."""
    return max(1, -(-(reset_ms - now_ms) // 1000))


def rate_headers(decision: Decision) -> dict[str, str]:
    """OpenRouter's X-RateLimit-* trio for one window; the reset is in epoch milliseconds."""
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_ms),
    }


def rate_limited(message: str, decision: Decision, limit_source: str, now_ms: int,
                 *, user_id: str | None = None) -> RateLimited:
    """A 429 in OpenRouter's shape: the X-RateLimit-* values both in `metadata.headers` and as
    HTTP headers, plus Retry-After."""
    headers = rate_headers(decision)
    return RateLimited(
        message,
        metadata={"headers": dict(headers), "limit_source": limit_source, "provider_name": None},
        headers={**headers, "Retry-After": str(retry_after_s(decision.reset_ms, now_ms))},
        user_id=user_id,
    )
