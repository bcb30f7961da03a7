"""Money: exact price and amount parsing, the one rounding rule, exact formatting."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from farebox.money import (
    ATTOS_PER_NANO,
    NANOS_MAX,
    PRICE_MAX,
    MoneyFormatError,
    parse_price,
    parse_usd,
    per_million_to_price,
    price_text,
    round_up_to_nanos,
    usd_json,
    usd_text,
)

INT64_MAX = 2**63 - 1


# -- parse_price ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "attos"), [
    ("0.00000015", 150_000_000_000),
    ("0.0000006", 600_000_000_000),
    ("0", 0),
    ("0.0", 0),
    ("1", 10**18),
    ("0.000000000000000001", 1),          # 18 decimals: one atto-dollar
    ("0.123456789012345678", 123_456_789_012_345_678),
    ("12.5", 12_500_000_000_000_000_000),
    (" 0.00000015 ", 150_000_000_000),    # surrounding blanks are tolerated
    ("1.5E-7", 150_000_000_000),          # exponent notation is still exact
    ("0.000000150000000000000000", 150_000_000_000),  # trailing zeros beyond 18 places are fine
])
def test_parse_price_is_exact(text: str, attos: int) -> None:
    assert parse_price(text) == attos
    assert isinstance(parse_price(text), int)


@pytest.mark.parametrize("text", [
    "0.0000000000000000001",     # 19 decimals
    "0.0000001500000000000001",  # 22 decimals, nonzero at the end
    "-0.00000015",
    "-1",
    "NaN",
    "nan",
    "sNaN",
    "Infinity",
    "-Infinity",
    "abc",
    "",
    "0.1.2",
    "$1",
])
def test_parse_price_refuses(text: str) -> None:
    with pytest.raises(MoneyFormatError):
        parse_price(text)


@pytest.mark.parametrize("value", [0.00000015, 1, None, Decimal("0.1"), b"0.1", ["0.1"]])
def test_parse_price_refuses_non_strings(value: object) -> None:
    with pytest.raises(MoneyFormatError):
        parse_price(value)  # type: ignore[arg-type]


def test_money_format_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_price("abc")


def test_parse_price_refuses_long_over_precise_price() -> None:
    # 31 decimal places: the exact value is 0.1 USD plus 1e-31 USD. It is not a whole
    # number of atto-dollars, so it must be refused like "0.0000000000000000001".
    with pytest.raises(MoneyFormatError):
        parse_price("0.1000000000000000000000000000001")


@pytest.mark.parametrize("parse", [parse_usd, parse_price])
def test_huge_exponent_is_a_format_error(parse: Any) -> None:
    with pytest.raises(MoneyFormatError):
        parse("1e999999")


# -- parse_usd -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "nanos"), [
    ("25.00", 25_000_000_000),
    ("25", 25_000_000_000),
    ("0.000000001", 1),
    ("0.000012345", 12_345),
    ("0", 0),
    ("1000000", 1_000_000 * 10**9),
    (25, 25_000_000_000),
    (0, 0),
])
def test_parse_usd_is_exact(text: str | int, nanos: int) -> None:
    assert parse_usd(text) == nanos


@pytest.mark.parametrize("text", [
    "0.0000000001",         # one tenth of a nano-dollar
    "25.0000000005",
    "-1",
    "-0.5",
    "NaN",
    "Infinity",
    "abc",
    "",
    -1,
])
def test_parse_usd_refuses(text: str | int) -> None:
    with pytest.raises(MoneyFormatError):
        parse_usd(text)


@pytest.mark.parametrize("value", [True, False, 25.0, None, Decimal("1")])
def test_parse_usd_refuses_non_strings(value: object) -> None:
    with pytest.raises(MoneyFormatError):
        parse_usd(value)  # type: ignore[arg-type]


def test_per_million_to_price() -> None:
    assert per_million_to_price("0.15") == parse_price("0.00000015")
    assert per_million_to_price("60") == parse_price("0.00006")
    with pytest.raises(MoneyFormatError):
        per_million_to_price("-1")


# -- round_up_to_nanos ---------------------------------------------------------------

@pytest.mark.parametrize(("attos", "nanos"), [
    (0, 0),
    (1, 1),
    (ATTOS_PER_NANO - 1, 1),
    (ATTOS_PER_NANO, 1),
    (ATTOS_PER_NANO + 1, 2),
    (7 * ATTOS_PER_NANO, 7),
    (10**18, 10**9),
])
def test_round_up_to_nanos(attos: int, nanos: int) -> None:
    assert round_up_to_nanos(attos) == nanos


@given(st.integers(min_value=0, max_value=10**30))
def test_round_up_to_nanos_is_the_ceiling(attos: int) -> None:
    nanos = round_up_to_nanos(attos)
    assert nanos * ATTOS_PER_NANO >= attos
    assert (nanos - 1) * ATTOS_PER_NANO < attos or nanos == 0


def test_round_up_to_nanos_refuses_negative() -> None:
    with pytest.raises(AssertionError):
        round_up_to_nanos(-1)


# -- formatting ----------------------------------------------------------------------

@pytest.mark.parametrize(("nanos", "text"), [
    (0, "0"),
    (1, "0.000000001"),
    (12_345, "0.000012345"),
    (25_000_000_000, "25"),
    (25_500_000_000, "25.5"),
    (-1_500_000_000, "-1.5"),
])
def test_usd_text(nanos: int, text: str) -> None:
    assert usd_text(nanos) == text


@pytest.mark.parametrize(("attos", "text"), [
    (0, "0"),
    (150_000_000_000, "0.00000015"),
    (1, "0.000000000000000001"),
    (10**18, "1"),
])
def test_price_text(attos: int, text: str) -> None:
    assert price_text(attos) == text


# Every amount a 64-bit column can hold, and every price up to PRICE_MAX (10^6 USD per unit).
@given(st.integers(min_value=0, max_value=INT64_MAX))
@example(0)
@example(1)
@example(INT64_MAX)
def test_usd_text_round_trips(nanos: int) -> None:
    assert parse_usd(usd_text(nanos)) == nanos


@given(st.integers(min_value=0, max_value=PRICE_MAX))
@example(0)
@example(1)
@example(150_000_000_000)
@example(PRICE_MAX)
def test_price_text_round_trips(attos: int) -> None:
    assert parse_price(price_text(attos)) == attos


@pytest.mark.parametrize("n", [2**63 - 1, 10**18 + 7, PRICE_MAX])
def test_text_round_trips_up_to_the_limits(n: int) -> None:
    # Exact at every size a ledger can hold: Decimal's 28-digit default would round these.
    if n <= NANOS_MAX:
        assert parse_usd(usd_text(n)) == n
    assert parse_price(price_text(min(n, PRICE_MAX))) == min(n, PRICE_MAX)


@pytest.mark.parametrize("n", [2**63, 10**30 + 1])
def test_amounts_beyond_a_64_bit_column_are_refused(n: int) -> None:
    with pytest.raises(MoneyFormatError, match="too large"):
        parse_usd(usd_text(n))
    with pytest.raises(MoneyFormatError, match="too large"):
        parse_price(price_text(PRICE_MAX + 1))


@pytest.mark.parametrize(("nanos", "json"), [
    (0, b'{"cost":0}'),
    (1, b'{"cost":0.000000001}'),
    (12_345, b'{"cost":0.000012345}'),
    (25_000_000_000, b'{"cost":25}'),
    (123_456_789_123_456_789, b'{"cost":123456789.123456789}'),
])
def test_usd_json_is_the_exact_number(nanos: int, json: bytes) -> None:
    out = orjson.dumps({"cost": usd_json(nanos)})
    assert out == json
    # A decimal-aware reader gets the exact amount back.
    assert Decimal(out[len(b'{"cost":'):-1].decode()) * 10**9 == nanos


@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_usd_json_round_trips(nanos: int) -> None:
    out = orjson.dumps([usd_json(nanos)])
    assert parse_usd(out[1:-1].decode()) == nanos
