"""Request fields every management endpoint reads the same way: names and USD amounts.
One place, so a name or an amount is accepted (and refused, naming the field) alike
everywhere."""

from __future__ import annotations

from typing import Any

from farebox.errors import BadRequest
from farebox.money import MoneyFormatError, parse_usd

NAME_MAX = 128


def name(value: Any, field: str = "name") -> str:
    """A non-empty name of at most NAME_MAX characters, stripped."""
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_MAX:
        raise BadRequest(f"{field} must be a non-empty string of at most {NAME_MAX} characters", field=field)
    return value.strip()


def usd(value: Any, field: str, *, allow_zero: bool = True) -> int:
    """A USD amount from JSON in nano-dollars: a decimal string ("25.00") or a number (25.5,
    read by its shortest decimal form, which is what the sender wrote)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest(f"{field} must be a USD amount such as \"25.00\"", field=field)
    try:
        nanos = parse_usd(repr(value) if isinstance(value, float) else value)
    except MoneyFormatError as e:
        raise BadRequest(f"{field}: {e}", field=field) from None
    if nanos == 0 and not allow_zero:
        raise BadRequest(f"{field} must be more than zero", field=field)
    return nanos
