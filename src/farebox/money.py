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
    return value


def parse_price(text: str) -> int:
    """A price string in USD per unit -> atto-dollars per unit, exactly."""
    scaled = _decimal(text, "price") * ATTOS_PER_USD
    if scaled != scaled.to_integral_value():
        raise MoneyFormatError(f"price has more than 18 decimal places: {text!r}")
    return int(scaled)


def parse_usd(text: str | int) -> int:
    """An amount in USD ("25.00") -> nano-dollars, exactly; sub-nano amounts are refused."""
    if isinstance(text, bool):
        raise MoneyFormatError("amount must be a decimal string")
    if isinstance(text, int):
        text = str(text)
    scaled = _decimal(text, "amount") * NANOS_PER_USD
    if scaled != scaled.to_integral_value():
        raise MoneyFormatError(f"amount has more than 9 decimal places: {text!r}")
    return int(scaled)


def per_million_to_price(usd_per_million: str) -> int:
    """USD per million tokens ("0.15") -> atto-dollars per token."""
    scaled = _decimal(usd_per_million, "price") * ATTOS_PER_USD / 1_000_000
    if scaled != scaled.to_integral_value():
        raise MoneyFormatError(f"price is too precise: {usd_per_million!r}")
    return int(scaled)


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
