"""The BYOK fee, as OpenRouter charges it.

A request served with the organization's own provider key costs the organization nothing
at the provider's list price (the provider bills them directly), but Farebox charges a fee:
`byok_fee_percent` of the list-price cost, only once the organization's list-price BYOK
spend in the current UTC calendar month is beyond `byok_monthly_allowance_usd`. A request
that crosses the allowance pays the fee on the part beyond it.

Exact integers throughout: the percent is read with Decimal into a fraction, and a fee is
rounded up once to a nano-dollar.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from farebox.ledger.usage import KeyUsage

PERIOD = "monthly"


def parse_percent(text: str) -> tuple[int, int]:
    """A percentage from 0 to 100 as an exact fraction of one: (numerator, denominator)."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{text!r} is not a percentage") from None
    if not value.is_finite() or not 0 <= value <= 100:
        raise ValueError(f"{text!r} is not a percentage from 0 to 100")
    numerator, denominator = value.as_integer_ratio()
    return numerator, denominator * 100


class ByokMeter:
    """Per organization, the list-price BYOK spend of the current UTC month, and the fee it implies."""

    def __init__(self, percent: str, allowance_nanos: int) -> None:
        if allowance_nanos < 0:
            raise ValueError("the BYOK allowance cannot be negative")
        self._num, self._den = parse_percent(percent)
        self.allowance = allowance_nanos
        self._usage: dict[int, KeyUsage] = {}

    def _of(self, org_id: int) -> KeyUsage:
        usage = self._usage.get(org_id)
        if usage is None:
            usage = self._usage[org_id] = KeyUsage()
        return usage

    def _percent_of(self, amount: int) -> int:
        return -(-amount * self._num // self._den)  # rounded up to a nano-dollar

    def used(self, org_id: int, now: float) -> int:
        """List-price BYOK spend of `org_id` in the UTC month containing `now`."""
        usage = self._usage.get(org_id)
        return usage.in_period(PERIOD, now) if usage is not None else 0

    def fee(self, org_id: int, list_cost: int, now: float) -> int:
        """The fee on a request of list-price cost `list_cost`: on the part of it beyond
        what remains of this month's allowance."""
        assert list_cost >= 0, list_cost
        left = max(0, self.allowance - self.used(org_id, now))
        return self._percent_of(max(0, list_cost - left))

    def max_fee(self, list_max: int) -> int:
        """The most `fee` can be for a list-price cost of at most `list_max`, whatever the
        month's spend so far: what a hold reserves."""
        assert list_max >= 0, list_max
        return self._percent_of(list_max)

    def add(self, org_id: int, list_cost: int, now: float) -> None:
        self._of(org_id).add(list_cost, now)

    def charge(self, org_id: int, list_cost: int, now: float) -> int:
        """`fee` and `add` in one step: with no await between them, two settlements can
        never both count the same part of the allowance."""
        fee = self.fee(org_id, list_cost, now)
        self.add(org_id, list_cost, now)
        return fee

    def remove(self, org_id: int, list_cost: int, added_at: float) -> None:
        """Take back a spend added at `added_at` (a refunded or reverted request); it
        counts against the month it was added in, not the current one."""
        self._of(org_id).remove(list_cost, added_at)

    def seed(self, org_id: int, month_total: int, now: float) -> None:
        """Start-up: the month's list-price BYOK spend, summed from stored generations."""
        self._of(org_id).seed(month_total, {PERIOD: month_total}, now)
