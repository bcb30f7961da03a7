"""Admission: the rate limits a request passes before anything is reserved for it.

- the key's own limits (requests and tokens per minute), when it has them;
- the free tier, when the request asks for a `:free` model (OpenRouter's section 7).

Synchronous, on the event loop, like the holds that follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from farebox.clock import Clock
from farebox.limits.free import FreeTier
from farebox.limits.keys import KeyRates

if TYPE_CHECKING:
    from farebox.tenancy.records import KeyRecord


def is_free_model(model_id: str) -> bool:
    """`author/slug:free`, alone or among other variant suffixes (`:free:floor`)."""
    return "free" in model_id.split(":")[1:]


class Admission:
    def __init__(self, free_tier: FreeTier, key_rates: KeyRates, clock: Clock,
                 purchased: Callable[[int], int]) -> None:
        self.free_tier, self.key_rates, self.clock = free_tier, key_rates, clock
        self.purchased = purchased   # an organization's all-time purchased credit, nano-dollars

    def admit(self, key: KeyRecord, org_id: int, models: list[str]) -> None:
        """Count the request against its limits, or raise RateLimited (429) counting nothing
        more. The key's limits come first: a request its own key refuses should not use up
        the organization's free-tier allowance."""
        now_ms = self.clock.now_ms()
        if key.rate_limit_rpm is not None or key.rate_limit_tpm is not None:
            self.key_rates.check(key.hash, key.rate_limit_rpm, key.rate_limit_tpm, now_ms)
        if any(is_free_model(m) for m in models):
            self.free_tier.check(org_id, self.purchased(org_id), now_ms)

    def used(self, key: KeyRecord, tokens: int) -> None:
        """A finished request's tokens, for the key's tokens-per-minute limit."""
        if key.rate_limit_tpm is not None:
            self.key_rates.used(key.hash, tokens, self.clock.now_ms())
