"""What a purchase of credits costs and brings: the quote. Pure arithmetic on integer
nano-dollars, from the operator's settings.

A purchase of `credits` charges the buyer credits + a processing fee that depends on the
payment method (card: a percentage with a minimum; crypto: a percentage; a bank transfer
recorded by an administrator: a percentage, none by default). A purchase that matches a
package's amount or more earns that package's bonus, credited on top and never charged.
The fee is booked to its own account, never to the wallet (see `Ledger.purchase`).

Purchases are paid through payment methods that move whole cents, so a purchase is a whole
number of cents, and the fee (and the tax, when the operator charges one on what is paid)
is rounded up to the cent once, from the exact figure. Every quote is therefore exactly
what a card is charged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from farebox.errors import BadRequest, ConfigError
from farebox.money import MoneyFormatError, parse_usd, usd_text
from farebox.settings import Settings

T = TypeVar("T")

METHODS = ("card", "crypto", "bank")


@dataclass(frozen=True, slots=True)
class FeeRule:
    percent: Decimal   # of the credits bought
    minimum: int       # nano-dollars


@dataclass(frozen=True, slots=True)
class Package:
    amount: int        # nano-dollars of credits: a purchase of at least this earns the bonus
    bonus_percent: Decimal


@dataclass(frozen=True, slots=True)
class Pricing:
    fees: dict[str, FeeRule]
    packages: tuple[Package, ...]   # ascending by amount
    minimum: int
    maximum: int
    tax_percent: Decimal | None = None   # charged on credits + fee; None: no tax line


CENT = 10**7  # nano-dollars


@dataclass(frozen=True, slots=True)
class Quote:
    method: str
    credits: int   # what the buyer asked for, credited to the wallet
    fee: int       # charged, booked to system:fees
    bonus: int     # credited, not charged
    tax: int = 0   # charged, booked to system:taxes

    @property
    def charged(self) -> int:
        return self.credits + self.fee + self.tax

    @property
    def charged_cents(self) -> int:
        assert self.charged % CENT == 0, self
        return self.charged // CENT

    @property
    def credited(self) -> int:
        return self.credits + self.bonus


def _percent_of(amount: int, percent: Decimal, unit: int = 1) -> int:
    """amount × percent / 100, rounded up once to a multiple of `unit` nano-dollars (the
    project's one rule: round up, once, from the exact figure)."""
    numerator, denominator = percent.as_integer_ratio()
    return -(-amount * numerator // (100 * denominator * unit)) * unit


def quote(pricing: Pricing, credits: int, method: str) -> Quote:
    if method not in pricing.fees:
        raise BadRequest(f"method must be one of {', '.join(pricing.fees)}", field="method")
    if not pricing.minimum <= credits <= pricing.maximum:
        raise BadRequest(f"A purchase must be between ${usd_text(pricing.minimum)} and ${usd_text(pricing.maximum)}",
                         field="amount")
    if credits % CENT:
        raise BadRequest("A purchase is a whole number of cents", field="amount")
    rule = pricing.fees[method]
    fee = max(_percent_of(credits, rule.percent, CENT), rule.minimum)
    package = next((p for p in reversed(pricing.packages) if credits >= p.amount), None)
    bonus = _percent_of(credits, package.bonus_percent) if package else 0
    tax = _percent_of(credits + fee, pricing.tax_percent, CENT) if pricing.tax_percent else 0
    result = Quote(method, credits, fee, bonus, tax)
    assert result.charged >= result.credits and result.credited >= result.credits
    assert result.charged % CENT == 0, result
    return result


def parse_packages(text: str) -> tuple[Package, ...]:
    """"50:10,100:15" -> a $50 package with a 10% bonus and a $100 one with 15%."""
    packages = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        amount, sep, bonus = item.partition(":")
        try:
            package = Package(parse_usd(amount.strip()), _percent(bonus.strip()))
        except (MoneyFormatError, ValueError):
            raise ValueError(f"{item!r} is not AMOUNT:BONUS_PERCENT (e.g. 50:10)") from None
        if not sep or package.amount <= 0:
            raise ValueError(f"{item!r} is not AMOUNT:BONUS_PERCENT (e.g. 50:10)")
        packages.append(package)
    amounts = [p.amount for p in packages]
    if amounts != sorted(set(amounts)):
        raise ValueError("package amounts must be distinct and in ascending order")
    return tuple(packages)


def _percent(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a percentage") from None
    if not value.is_finite() or not 0 <= value <= 100:
        raise ValueError(f"{text!r} is not a percentage between 0 and 100")
    return value


def parse_fee(percent: str, minimum_usd: str = "0") -> FeeRule:
    return FeeRule(_percent(percent), parse_usd(minimum_usd))



def pricing_from(settings: Settings) -> Pricing:
    """The operator's purchase settings, checked: a bad one is a ConfigError naming it."""
    def read(name: str, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except (MoneyFormatError, ValueError) as e:
            raise ConfigError(f"{name}: {e}") from None

    s = settings
    fees = {
        "card": read("purchase_fee_card_percent", lambda: parse_fee(s.purchase_fee_card_percent,
                                                                      s.purchase_fee_card_minimum_usd)),
        "crypto": read("purchase_fee_crypto_percent", lambda: parse_fee(s.purchase_fee_crypto_percent)),
        "bank": read("purchase_fee_bank_percent", lambda: parse_fee(s.purchase_fee_bank_percent)),
    }
    packages = read("purchase_packages", lambda: parse_packages(s.purchase_packages))
    minimum = read("purchase_minimum_usd", lambda: parse_usd(s.purchase_minimum_usd))
    maximum = read("purchase_maximum_usd", lambda: parse_usd(s.purchase_maximum_usd))
    if not 0 < minimum <= maximum:
        raise ConfigError("purchase_minimum_usd: must be positive and at most purchase_maximum_usd")
    if fees["card"].minimum % CENT:
        raise ConfigError("purchase_fee_card_minimum_usd: must be a whole number of cents")
    tax = read("invoice_tax_rate_percent", lambda: _percent(s.invoice_tax_rate_percent)
               if s.invoice_tax_rate_percent else None)
    return Pricing(fees, packages, minimum, maximum, tax or None)
