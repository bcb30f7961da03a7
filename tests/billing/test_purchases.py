"""Purchase quotes: fees by method with their minimum, package bonuses, limits, and the
settings they come from. Exact nano-dollars throughout."""

from __future__ import annotations

from decimal import Decimal

import pytest

from farebox.billing.purchases import Package, parse_packages, pricing_from, quote
from farebox.errors import BadRequest, ConfigError
from farebox.money import parse_usd
from farebox.settings import Settings

PRICING = pricing_from(Settings())


def usd(text: str) -> int:
    return parse_usd(text)


@pytest.mark.parametrize(("amount", "method", "fee", "bonus"), [
    ("5", "card", "0.80", "0"),          # 5.5% is $0.275: the $0.80 minimum applies ($5.80 in all)
    ("10", "card", "0.80", "0"),
    ("20", "card", "1.10", "0"),
    ("50", "card", "2.75", "5"),         # the $50 package: +10%
    ("100", "card", "5.50", "15"),
    ("99.99", "card", "5.50", "9.999"),  # just under $100: the $50 package's bonus; 5.49945 rounds up to the cent
    ("500", "crypto", "25", "125"),
    ("250", "bank", "0", "50"),
])
def test_quotes(amount, method, fee, bonus):
    q = quote(PRICING, usd(amount), method)
    assert (q.fee, q.bonus) == (usd(fee), usd(bonus))
    assert q.charged == usd(amount) + usd(fee) and q.credited == usd(amount) + usd(bonus)


def test_fees_round_up_to_the_cent_once_from_the_exact_figure():
    q = quote(PRICING, usd("33.33"), "crypto")  # 5% of it is 1.6665
    assert q.fee == usd("1.67") and q.charged_cents == 3500


def test_a_purchase_is_whole_cents():
    with pytest.raises(BadRequest, match="whole number of cents"):
        quote(PRICING, usd("5.001"), "card")


def test_tax_is_charged_on_credits_and_fee_rounded_up_to_the_cent():
    taxed = pricing_from(Settings(invoice_tax_rate_percent="8.875"))
    q = quote(taxed, usd("20"), "card")     # fee 1.10; 8.875% of 21.10 is 1.872625
    assert (q.fee, q.tax, q.charged) == (usd("1.10"), usd("1.88"), usd("22.98"))
    assert quote(PRICING, usd("20"), "card").tax == 0


@pytest.mark.parametrize(("amount", "method", "field"), [
    ("4.99", "card", "amount"), ("25000.01", "card", "amount"), ("10", "paypal", "method"),
])
def test_out_of_range_or_unknown_is_a_400_naming_the_field(amount, method, field):
    with pytest.raises(BadRequest) as caught:
        quote(PRICING, usd(amount), method)
    assert caught.value.metadata["field"] == field


def test_packages_parse_exactly_and_refuse_nonsense():
    assert parse_packages("50:10, 100:12.5") == (Package(usd("50"), Decimal("10")), Package(usd("100"), Decimal("12.5")))
    assert parse_packages("") == ()
    for bad in ("50", "50:x", "50:101", "100:10,50:5", "50:10,50:20", "-5:10"):
        with pytest.raises(ValueError):
            parse_packages(bad)


def test_bad_purchase_settings_are_config_errors_naming_the_setting():
    with pytest.raises(ConfigError, match="purchase_packages"):
        pricing_from(Settings(purchase_packages="lots"))
    with pytest.raises(ConfigError, match="purchase_fee_card_percent"):
        pricing_from(Settings(purchase_fee_card_percent="five"))
    with pytest.raises(ConfigError, match="purchase_minimum_usd"):
        pricing_from(Settings(purchase_minimum_usd="100", purchase_maximum_usd="10"))
