"""The BYOK fee: a percent of the list-price cost beyond the monthly allowance, exact."""

from __future__ import annotations

import calendar
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farebox.clock import FakeClock
from farebox.errors import ConfigError
from farebox.ledger.byok import ByokMeter, parse_percent
from farebox.money import parse_usd
from farebox.settings import load_settings

USD = 10**9
ORG, OTHER = 1, 2


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def test_fee_is_zero_inside_the_allowance_partial_across_it_and_full_beyond():
    meter = ByokMeter("5", 100 * USD)
    now = utc(2026, 3, 10)
    assert meter.fee(ORG, 60 * USD, now) == 0
    meter.add(ORG, 60 * USD, now)
    assert meter.used(ORG, now) == 60 * USD
    assert meter.fee(ORG, 40 * USD, now) == 0                 # exactly uses up the allowance
    assert meter.fee(ORG, 50 * USD, now) == USD // 2          # 10 beyond: 5% of 10 = 0.50
    meter.add(ORG, 50 * USD, now)
    assert meter.fee(ORG, 20 * USD, now) == USD              # all beyond: 5% of 20 = 1
    assert meter.fee(OTHER, 20 * USD, now) == 0              # another organization has its own allowance
    assert meter.fee(ORG, 0, now) == 0


def test_charge_counts_the_allowance_once():
    meter = ByokMeter("5", 100 * USD)
    now = utc(2026, 3, 10)
    fees = [meter.charge(ORG, 30 * USD, now) for _ in range(4)]  # 30, 60, 90, 120: the last crosses by 20
    assert fees == [0, 0, 0, USD]
    assert meter.used(ORG, now) == 120 * USD


@pytest.mark.parametrize(("percent", "beyond", "fee"), [
    ("5", 1, 1),              # 0.05 nano rounds up to a whole nano-dollar
    ("5", 20, 1),             # exactly 1
    ("5", 21, 2),             # 1.05 -> 2
    ("5", 19, 1),             # 0.95 -> 1
    ("0", 10**12, 0),
    ("100", 123, 123),
    ("2.5", 40, 1),
    ("2.5", 41, 2),           # 1.025 -> 2
    ("0.1", 1000, 1),
    ("0.1", 1001, 2),
    # Many decimals, still exact (a float would round both to 10**18): 999999999999999999.99 -> 10**18,
    # and 1000000000000000000.33 -> 10**18 + 1.
    ("33.333333333333333333", 3 * 10**18, 10**18),
    ("33.333333333333333333", 3 * 10**18 + 1, 10**18 + 1),
])
def test_rounding_is_up_and_exact(percent, beyond, fee):
    meter = ByokMeter(percent, 0)
    assert meter.fee(ORG, beyond, utc(2026, 1, 5)) == fee
    exact = Fraction(beyond) * Fraction(percent) / 100
    assert fee == -(-exact.numerator // exact.denominator)


def test_month_rollover_with_a_fake_clock():
    clock = FakeClock(float(utc(2026, 1, 31, 23, 59, 59)))
    meter = ByokMeter("5", 100 * USD)
    meter.add(ORG, 100 * USD, clock.now())
    assert meter.fee(ORG, 20 * USD, clock.now()) == USD         # January's allowance is used up
    clock.advance(1)                                            # 2026-02-01T00:00:00Z
    assert meter.used(ORG, clock.now()) == 0
    assert meter.fee(ORG, 20 * USD, clock.now()) == 0           # a fresh allowance
    meter.add(ORG, 30 * USD, clock.now())
    # A January spend taken back (refunded) leaves February's count alone...
    meter.remove(ORG, 100 * USD, utc(2026, 1, 20))
    assert meter.used(ORG, clock.now()) == 30 * USD
    # ...and a February one is taken from February.
    meter.remove(ORG, 10 * USD, clock.now())
    assert meter.used(ORG, clock.now()) == 20 * USD
    clock.advance(28 * 86400)                                   # 2026-03-01
    assert meter.used(ORG, clock.now()) == 0


def test_seed_restores_the_month_at_start_up():
    now = utc(2026, 5, 15)
    meter = ByokMeter("5", 100 * USD)
    meter.seed(ORG, 90 * USD, now)
    assert meter.used(ORG, now) == 90 * USD
    assert meter.fee(ORG, 30 * USD, now) == USD
    assert meter.used(ORG, utc(2026, 6, 1)) == 0


@given(
    percent=st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False),
    allowance=st.integers(0, 10**13),
    prior=st.lists(st.integers(0, 10**12), max_size=5),
    list_max=st.integers(0, 10**12),
    data=st.data(),
)
def test_max_fee_bounds_the_fee_for_any_prior_usage(percent, allowance, prior, list_max, data):
    meter = ByokMeter(str(percent), allowance)
    now = utc(2026, 7, 1, 12)
    for amount in prior:
        meter.add(ORG, amount, now)
    list_cost = data.draw(st.integers(0, list_max))
    fee = meter.fee(ORG, list_cost, now)
    assert 0 <= fee <= meter.max_fee(list_max)
    # The fee is never more than the percent of the cost (rounded up), and exactly that beyond the allowance.
    whole = -(-list_cost * Fraction(str(percent)).numerator // (Fraction(str(percent)).denominator * 100))
    assert fee <= whole
    if sum(prior) >= allowance:
        assert fee == whole


@pytest.mark.parametrize("bad", ["-1", "100.5", "abc", "NaN", "Infinity", ""])
def test_bad_percent_is_refused(bad):
    with pytest.raises(ValueError):
        parse_percent(bad)
    with pytest.raises(ValueError):
        ByokMeter(bad, 0)
    with pytest.raises(ValueError):
        ByokMeter("5", -1)


def test_settings_defaults_and_validation():
    s = load_settings(env={})
    assert (s.byok_fee_percent, s.byok_monthly_allowance_usd, s.byok_encryption_key) == ("5", "25000", "")
    assert parse_usd(s.byok_monthly_allowance_usd) == 25_000 * USD
    ok = load_settings(env={"FAREBOX_BYOK_FEE_PERCENT": "2.5", "FAREBOX_BYOK_MONTHLY_ALLOWANCE_USD": "0"})
    assert ByokMeter(ok.byok_fee_percent, 0).max_fee(40) == 1
    for value in ("-1", "101", "five", "1e400"):
        with pytest.raises(ConfigError, match="byok_fee_percent"):
            load_settings(env={"FAREBOX_BYOK_FEE_PERCENT": value})
    for value in ("-5", "lots", "0.0000000001"):
        with pytest.raises(ConfigError, match="byok_monthly_allowance_usd"):
            load_settings(env={"FAREBOX_BYOK_MONTHLY_ALLOWANCE_USD": value})
