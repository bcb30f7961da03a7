"""The free tier: requests to `:free` models, per organization, as OpenRouter limits them
(its section 7): 20 a minute always, and 50 a day, or 1,000 a day once the organization has
bought at least $10 of credits in total (all-time purchases, not the balance).

Refusals are 429s whose body and headers copy OpenRouter's own, so clients that parse
`metadata.headers` or `X-RateLimit-Reset` (epoch milliseconds) keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from farebox.errors import RateLimited
from farebox.limits.base import Decision, Limiter
from farebox.limits.refusal import rate_headers, rate_limited
from farebox.money import parse_usd, usd_text

if TYPE_CHECKING:
    from farebox.settings import Settings

MINUTE_SOURCE = "openrouter_free_tier_minute"
DAY_SOURCE = "openrouter_free_tier_daily"


class FreeTier:
    def __init__(
        self,
        limiter: Limiter,
        *,
        per_minute: int = 20,
        per_day: int = 50,
        per_day_purchased: int = 1000,
        purchased_threshold_nanos: int,
    ) -> None:
        self._limiter = limiter
        self.per_minute = per_minute
        self.per_day = per_day
        self.per_day_purchased = per_day_purchased
        self.purchased_threshold_nanos = purchased_threshold_nanos

    @classmethod
    def from_settings(cls, limiter: Limiter, settings: Settings) -> FreeTier:
        return cls(
            limiter,
            per_minute=settings.free_requests_per_minute,
            per_day=settings.free_requests_per_day,
            per_day_purchased=settings.free_requests_per_day_purchased,
            purchased_threshold_nanos=parse_usd(settings.free_purchase_threshold_usd),
        )

    def check(self, org_id: int, purchased_nanos: int, now_ms: int,
              *, user_id: str | None = None) -> dict[str, str]:
        """Count one free-model request of `org_id`, or raise RateLimited without counting it.

        `purchased_nanos` is the organization's all-time purchased credit; it picks the daily
        limit. Both tiers share one daily counter, so requests made before a purchase still
        count after it. Returns the X-RateLimit-* headers of the binding window (fewer
        requests remaining; the day on a tie) for the caller to send if it wants to.
        """
        high = purchased_nanos >= self.purchased_threshold_nanos
        day_limit = self.per_day_purchased if high else self.per_day
        key = f"free:{org_id}"  # one key, two counters: the window is part of a counter's name

        # Check both windows before counting either: a request refused by one window must not
        # use up the other.
        day = self._limiter.peek(key, day_limit, "day", now_ms)
        minute = self._limiter.peek(key, self.per_minute, "minute", now_ms)
        if not day.allowed:
            # When both are exhausted the day is reported: its reset is the one worth waiting for.
            raise self._day_refused(day, high, now_ms, user_id)
        if not minute.allowed:
            raise self._minute_refused(minute, now_ms, user_id)

        minute = self._limiter.hit(key, self.per_minute, "minute", now_ms)
        if not minute.allowed:  # another gateway process counted in between (shared limiter)
            raise self._minute_refused(minute, now_ms, user_id)
        day = self._limiter.hit(key, day_limit, "day", now_ms)
        if not day.allowed:
            self._limiter.add(key, "minute", now_ms, -1)  # give the minute back
            raise self._day_refused(day, high, now_ms, user_id)
        return rate_headers(day if day.remaining <= minute.remaining else minute)

    def _minute_refused(self, decision: Decision, now_ms: int, user_id: str | None) -> RateLimited:
        return rate_limited("Rate limit exceeded: free-models-per-min. ", decision, MINUTE_SOURCE, now_ms,
                            user_id=user_id)

    def _day_refused(self, decision: Decision, high: bool, now_ms: int, user_id: str | None) -> RateLimited:
        if high:
            message = "Rate limit exceeded: free-models-per-day-high-balance. "
        else:
            message = (
                "Rate limit exceeded: free-models-per-day. "
                f"Add {usd_text(self.purchased_threshold_nanos)} credits to unlock "
                f"{self.per_day_purchased} free model requests per day"
            )
        return rate_limited(message, decision, DAY_SOURCE, now_ms, user_id=user_id)
