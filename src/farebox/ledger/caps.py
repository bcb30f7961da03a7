"""Spending caps: a key's limit, a workspace's budgets, a project's budgets.

A cap is checked by the same hold that protects the balance (DESIGN section 2): a hold
reserves its amount on the wallet and on every cap it touches, and fits all of them or
none. Each cap counts what its scope spent in UTC calendar windows (ledger/usage.py), so a
daily limit resets at midnight UTC without a timer.

What a cap counts is the credit its requests were charged, and, when it includes BYOK,
also the list-price cost of BYOK requests (paid to the provider on the customer's own key,
never through the wallet): OpenRouter's `include_byok_in_limit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from farebox.ledger.usage import KeyUsage

# Budget periods; "lifetime" never resets. A key's `limit_reset` of null is "lifetime".
BUDGET_PERIODS = ("daily", "weekly", "monthly", "lifetime")
SCOPES = ("key", "project", "workspace")


@dataclass(slots=True)
class Cap:
    scope: str                                           # key | project | workspace
    name: str                                            # shown in refusals ("project 'search'")
    limits: dict[str, int] = field(default_factory=dict)  # period -> nano-dollars
    include_byok: bool = False
    usage: KeyUsage = field(default_factory=KeyUsage)     # credit charged
    byok: KeyUsage = field(default_factory=KeyUsage)      # BYOK list-price cost
    held: int = 0                                         # reserved by open holds

    def __post_init__(self) -> None:
        assert self.scope in SCOPES, self.scope
        assert all(p in BUDGET_PERIODS and v >= 0 for p, v in self.limits.items()), self.limits

    def spent(self, period: str, now: float) -> int:
        """What counts against the limit of `period` in its current window."""
        window = None if period == "lifetime" else period
        total = self.usage.in_period(window, now)
        if self.include_byok:
            total += self.byok.in_period(window, now)
        return total

    def remaining(self, now: float) -> tuple[int, str] | None:
        """The tightest limit's room after what was spent and what open holds reserved, and
        its period; None when nothing limits this scope."""
        tightest: tuple[int, str] | None = None
        for period, limit in self.limits.items():
            room = limit - self.spent(period, now) - self.held
            if tightest is None or room < tightest[0]:
                tightest = (room, period)
        return tightest

    def room(self, now: float) -> int | None:
        """The tightest limit's room (see `remaining`); None when unlimited."""
        tightest = self.remaining(now)
        return None if tightest is None else tightest[0]

    def reservation(self, amount: int, byok: int) -> int:
        """What a hold of `amount` credit (and up to `byok` BYOK list-price cost) reserves here."""
        return amount + byok if self.include_byok else amount

    def add(self, charged: int, byok: int, now: float) -> None:
        if charged:
            self.usage.add(charged, now)
        if byok:
            self.byok.add(byok, now)

    def remove(self, charged: int, byok: int, added_at: float) -> None:
        if charged:
            self.usage.remove(charged, added_at)
        if byok:
            self.byok.remove(byok, added_at)


def key_cap(limit: int | None = None, reset: str | None = None, *, name: str = "key",
            include_byok: bool = False) -> Cap:
    """A key's cap: OpenRouter's one `limit` per `limit_reset` period (null: lifetime)."""
    return Cap("key", name, {} if limit is None else {reset or "lifetime": limit}, include_byok)


def key_limit(cap: Cap) -> tuple[int | None, str | None]:
    """A key cap's (limit, limit_reset) as the key API shows them."""
    for period, limit in cap.limits.items():
        return limit, None if period == "lifetime" else period
    return None, None
