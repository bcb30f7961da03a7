"""Money: integer nano-dollars, exact price parsing, formatting, and the one rounding rule.

Amounts of money are `int` nano-dollars (1e-9 USD). Prices are USD per token (or per
request, per image) given as decimal strings; they are held as `int` atto-dollars
(1e-18 USD) per unit, so any price with up to 18 decimal places is exact and a cost is
plain integer arithmetic. A cost is the exact sum of its line items in atto-dollars,
rounded up once to a nano-dollar by `round_up_to_nanos`. No float ever touches money.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import orjson

NANOS_PER_USD = 10**9
ATTOS_PER_NANO = 10**9
ATTOS_PER_USD = NANOS_PER_USD * ATTOS_PER_NANO
NANOS_MAX = 2**63 - 1                  # what a 64-bit integer column holds (~9.2 billion USD)
PRICE_MAX = 10**6 * ATTOS_PER_USD      # a million USD per unit: beyond any real price
_MAGNITUDE_MAX = 20                    # decimal exponent beyond which a number cannot be money


class MoneyFormatError(ValueError):
    pass


def _decimal(text: str, what: str) -> Decimal:
    if not isinstance(text, str):
        raise MoneyFormatError(f"{what} must be a decimal string, got {type(text).__name__}")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise MoneyFormatError(f"{what} is not a decimal number: {text!r}") from None
    if not value.is_finite():
        raise MoneyFormatError(f"{what} must be finite: {text!r}")
    if value < 0:
        raise MoneyFormatError(f"{what} must not be negative: {text!r}")
    if value and value.adjusted() > _MAGNITUDE_MAX:
        raise MoneyFormatError(f"{what} is too large: {text!r}")
    return value


def _scaled(text: str, what: str, scale: int, divisor: int, limit: int, decimals: int) -> int:
    """`text` × scale / divisor as an exact integer. Exact rational arithmetic: Decimal's
    default 28-digit context would round long inputs instead of refusing them."""
    numerator, denominator = _decimal(text, what).as_integer_ratio()
    quotient, remainder = divmod(numerator * scale, denominator * divisor)
    if remainder:
        raise MoneyFormatError(f"{what} has more than {decimals} decimal places: {text!r}")
    if quotient > limit:
        raise MoneyFormatError(f"{what} is too large: {text!r}")
    return quotient


def parse_price(text: str) -> int:
    """A price string in USD per unit -> atto-dollars per unit, exactly (at most 18 decimals)."""
    return _scaled(text, "price", ATTOS_PER_USD, 1, PRICE_MAX, 18)


def parse_usd(text: str | int) -> int:
    """An amount in USD ("25.00") -> nano-dollars, exactly; sub-nano amounts are refused."""
    if isinstance(text, bool):
        raise MoneyFormatError("amount must be a decimal string")
    if isinstance(text, int):
        text = str(text)
    return _scaled(text, "amount", NANOS_PER_USD, 1, NANOS_MAX, 9)


def per_million_to_price(usd_per_million: str) -> int:
    """USD per million tokens ("0.15") -> atto-dollars per token."""
    return _scaled(usd_per_million, "price", ATTOS_PER_USD, 1_000_000, PRICE_MAX, 12)


def percent_bps(text: str) -> int:
    """A percent ("1", "0.25") as whole basis points (1% = 100), exactly; at most 100%."""
    value = _decimal(text, "percent") * 100
    if value != value.to_integral_value() or value > 10_000:
        raise MoneyFormatError(f"percent must be at most 100 with at most two decimals: {text!r}")
    return int(value)


def round_up_to_nanos(attos: int) -> int:
    """The one rounding rule: an exact atto-dollar total rounds up to whole nano-dollars."""
    assert attos >= 0, attos
    return -(-attos // ATTOS_PER_NANO)


def _fixed(units: int, scale_digits: int) -> str:
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**scale_digits)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{scale_digits}d}".rstrip("0")


def usd_text(nanos: int) -> str:
    """Nano-dollars as an exact decimal USD string: 12345 -> "0.000012345"."""
    return _fixed(nanos, 9)


def price_text(attos: int) -> str:
    """Atto-dollars per unit as the exact decimal USD string /models shows: "0.00000015"."""
    return _fixed(attos, 18)


def usd_json(nanos: int) -> orjson.Fragment:
    """Nano-dollars as an exact JSON number for the wire ("cost": 0.000012345), never a float."""
    return orjson.Fragment(usd_text(nanos))
