"""Invoices for credit purchases and top-ups, rendered as a printable HTML page and as a PDF.

What the buyer pays and what reaches their balance differ, and the invoice shows both:
- credits: paid for and added to the balance;
- bonus: added to the balance, never charged (printed with its amount and "not charged");
- fee (payment processing): charged, not added to the balance;
- tax: charged on what is paid (credits + fee), not added to the balance.
So paid = credits + fee + tax and credited = credits + bonus.

Tax is either computed from `tax_rate_percent` or given by the caller as "tax" lines (e.g. from a
tax service), never both. A computed tax is exact rational arithmetic rounded up once to a whole
nano-dollar: the same one rounding rule money.round_up_to_nanos applies to request costs.

Numbering and storage are the caller's: an Invoice is a finished document to render.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from farebox.billing import pdf
from farebox.money import NANOS_MAX, usd_text

LineKind = Literal["credits", "bonus", "fee", "tax"]

# What a line of each kind does: (added to the buyer's balance, charged to the buyer).
_EFFECTS: dict[str, tuple[bool, bool]] = {
    "credits": (True, True),
    "bonus": (True, False),
    "fee": (False, True),
    "tax": (False, True),
}

# VAT and sales-tax rates are far below 100%; a larger figure is a unit mistake ("2000" for 20%).
_TAX_RATE_MAX = Decimal(100)
# Real rates have at most a few decimals (8.875%); the bound keeps the exact fraction small.
_TAX_RATE_DECIMALS_MAX = 6


@dataclass(frozen=True, slots=True)
class Seller:
    """The operator issuing the invoice."""

    name: str
    address_lines: tuple[str, ...] = ()
    email: str = ""
    tax_id_label: str = "VAT ID"
    tax_id: str = ""


@dataclass(frozen=True, slots=True)
class Buyer:
    """The organization billed."""

    name: str
    email: str
    address_lines: tuple[str, ...] = ()
    tax_id: str | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the invoice, in nano-dollars (never negative: a refund is a credit note,
    another document)."""

    description: str
    amount_nanos: int
    kind: LineKind

    def __post_init__(self) -> None:
        if self.kind not in _EFFECTS:
            raise ValueError(f"invoice line kind must be one of {sorted(_EFFECTS)}, got {self.kind!r}")
        if type(self.amount_nanos) is not int or not 0 <= self.amount_nanos <= NANOS_MAX:
            raise ValueError(f"invoice line amount must be an int of nano-dollars >= 0, got {self.amount_nanos!r}")

    @property
    def credited(self) -> bool:
        """Whether the amount is added to the buyer's balance."""
        return _EFFECTS[self.kind][0]

    @property
    def charged(self) -> bool:
        """Whether the buyer pays the amount."""
        return _EFFECTS[self.kind][1]


@dataclass(frozen=True, slots=True)
class Invoice:
    """One invoice: a purchase or top-up already paid, as the buyer's document of it."""

    number: str                # sequential, formatted by the caller: "FB-2026-000042"
    issued_at_ms: int
    seller: Seller
    buyer: Buyer
    lines: tuple[Line, ...]
    payment_method: str        # "card •••• 4242", "bank transfer", "auto top-up (card •••• 4242)"
    currency: str = "USD"
    tax_rate_percent: str | None = None  # a decimal string ("20", "8.875"): adds a computed tax line
    tax_label: str = "VAT"
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.number.strip():
            raise ValueError("an invoice needs a number")
        if not isinstance(self.lines, tuple) or not all(isinstance(line, Line) for line in self.lines):
            raise TypeError("invoice lines must be a tuple of Line")
        if not self.lines:
            raise ValueError("an invoice needs at least one line")
        if self.currency != "USD":
            raise ValueError(f"invoice amounts are nano-dollars, so the currency is USD, not {self.currency!r}")
        if self.tax_rate_percent is not None:
            _tax_rate(self.tax_rate_percent)  # refuses a malformed rate now rather than at rendering
            if any(line.kind == "tax" for line in self.lines):
                raise ValueError("give a tax rate or tax lines, not both")
        if self.paid_nanos > NANOS_MAX or self.credits_nanos > NANOS_MAX:
            raise ValueError("invoice totals exceed what a 64-bit amount holds")
        items = self.items
        assert sum(line.amount_nanos for line in items if line.charged) == self.paid_nanos, self
        assert sum(line.amount_nanos for line in items if line.credited) == self.credits_nanos, self
        assert self.paid_nanos == self.subtotal_nanos + self.tax_nanos, self

    def _sum(self, kind: LineKind) -> int:
        return sum(line.amount_nanos for line in self.lines if line.kind == kind)

    @property
    def subtotal_nanos(self) -> int:
        """What tax applies to: the credits bought and the fee."""
        return self._sum("credits") + self._sum("fee")

    @property
    def tax_nanos(self) -> int:
        """The computed tax on the subtotal with a rate, else the sum of the tax lines."""
        if self.tax_rate_percent is None:
            return self._sum("tax")
        numerator, denominator = _tax_rate(self.tax_rate_percent).as_integer_ratio()
        # Exact: subtotal × rate / 100, rounded up once to a whole nano-dollar.
        return -(-self.subtotal_nanos * numerator // (denominator * 100))

    @property
    def paid_nanos(self) -> int:
        """What the buyer pays: credits + fee + tax. The bonus is not paid."""
        return self._sum("credits") + self._sum("fee") + self.tax_nanos

    @property
    def total_nanos(self) -> int:
        """The invoice's bottom line: the amount charged, which is paid_nanos."""
        return self.paid_nanos

    @property
    def credits_nanos(self) -> int:
        """What is added to the buyer's balance: credits + bonus. Fee and tax are not."""
        return self._sum("credits") + self._sum("bonus")

    @property
    def items(self) -> tuple[Line, ...]:
        """The lines as printed: the caller's, then the computed tax line when there is a rate."""
        if self.tax_rate_percent is None:
            return self.lines
        rate = _tax_rate(self.tax_rate_percent)
        description = f"{self.tax_label} {rate:f}% of {amount_text(self.subtotal_nanos)}"
        return self.lines + (Line(description, self.tax_nanos, "tax"),)


def _tax_rate(text: str) -> Decimal:
    """The rate in percent, normalized ("20.00" -> 20); ValueError unless 0 <= rate <= 100
    with at most six decimals."""
    if not isinstance(text, str):
        raise ValueError(f"tax rate must be a decimal string, got {type(text).__name__}")
    try:
        rate = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"tax rate is not a decimal number: {text!r}") from None
    if not rate.is_finite() or not 0 <= rate <= _TAX_RATE_MAX:
        raise ValueError(f"tax rate must be a percentage from 0 to {_TAX_RATE_MAX}: {text!r}")
    rate = abs(rate).normalize()  # abs: "-0" is zero
    if -rate.as_tuple().exponent > _TAX_RATE_DECIMALS_MAX:
        raise ValueError(f"tax rate has more than {_TAX_RATE_DECIMALS_MAX} decimals: {text!r}")
    return rate


def amount_text(nanos: int) -> str:
    """An amount for a document, exact: thousands separated, at least the cents.
    1_234_500_000_000 -> "1,234.50"; 1 -> "0.000000001"."""
    assert nanos >= 0, nanos
    whole, _, fraction = usd_text(nanos).partition(".")
    return f"{int(whole):,}.{fraction:0<2}"


def _time_text(ms: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# -- what both renderings show --------------------------------------------------------------

NOT_CREDITED = "—"
NOT_CHARGED = "not charged"


@dataclass(frozen=True, slots=True)
class _Row:
    """A row of the invoice's table: a description and its two amount cells."""

    description: str
    credited: str
    charged: str


def _table(invoice: Invoice) -> tuple[list[_Row], list[_Row]]:
    """The body rows (the lines but tax) and the footer rows: when taxed, the subtotal and
    the tax lines; then the total of each column."""
    taxes = [line for line in invoice.items if line.kind == "tax"]
    body = [_row(line) for line in invoice.items if line.kind != "tax"]
    footer = []
    if taxes:
        footer.append(_Row("Subtotal before tax", "", amount_text(invoice.subtotal_nanos)))
        footer += [_row(line) for line in taxes]
    footer.append(_Row("Total", amount_text(invoice.credits_nanos), amount_text(invoice.total_nanos)))
    return body, footer


def _row(line: Line) -> _Row:
    return _Row(line.description,
                amount_text(line.amount_nanos) if line.credited else NOT_CREDITED,
                amount_text(line.amount_nanos) if line.charged else NOT_CHARGED)


def _facts(invoice: Invoice) -> list[tuple[str, str]]:
    return [
        ("Invoice number", invoice.number),
        ("Date", _time_text(invoice.issued_at_ms)),
        ("Currency", invoice.currency),
    ]


def _seller_lines(seller: Seller) -> list[str]:
    lines = list(seller.address_lines)
    if seller.email:
        lines.append(seller.email)
    if seller.tax_id:
        lines.append(f"{seller.tax_id_label}: {seller.tax_id}")
    return lines


def _buyer_lines(buyer: Buyer) -> list[str]:
    lines = [buyer.email, *buyer.address_lines]
    if buyer.tax_id:
        lines.append(f"Tax ID: {buyer.tax_id}")
    return lines


def _summary(invoice: Invoice) -> str:
    return (f"Charged {amount_text(invoice.paid_nanos)} {invoice.currency}; "
            f"added {amount_text(invoice.credits_nanos)} {invoice.currency} to the balance.")


# -- HTML -----------------------------------------------------------------------------------

_CSS = """
@page { size: A4; margin: 20mm; }
* { box-sizing: border-box; }
body { font: 10pt/1.45 Helvetica, Arial, sans-serif; color: #111; margin: 0; background: #fff; }
main { max-width: 180mm; margin: 12mm auto; }
header, .parties { display: flex; justify-content: space-between; gap: 12mm; margin-bottom: 10mm; }
h1 { font-size: 16pt; margin: 0 0 2mm; }
h2 { font-size: 20pt; margin: 0 0 2mm; text-align: right; letter-spacing: .05em; }
h3 { font-size: 9pt; margin: 0 0 1mm; text-transform: uppercase; color: #555; }
p { margin: 0; }
dl { display: grid; grid-template-columns: auto auto; gap: 0 4mm; margin: 0; }
dt { font-weight: bold; } dd { margin: 0; text-align: right; }
table { width: 100%; border-collapse: collapse; margin-bottom: 8mm; }
th, td { padding: 1.5mm 2mm; vertical-align: top; text-align: left; }
thead th { border-bottom: 1px solid #111; }
tfoot tr:first-child td { border-top: 1px solid #111; }
tfoot tr:last-child td { font-weight: bold; }
.amount { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.notes { white-space: pre-line; }
@media print { main { margin: 0; max-width: none; } }
""".strip()


def render_html(invoice: Invoice) -> str:
    """The invoice as a complete, self-contained, printable HTML page (inline CSS, no
    external resources); every string from outside this module is escaped."""
    e = _escape
    body, footer = _table(invoice)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Invoice {e(invoice.number)} — {e(invoice.seller.name)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        f'<div class="seller"><h1>{e(invoice.seller.name)}</h1>'
        f"<p>{_html_lines(_seller_lines(invoice.seller))}</p></div>",
        '<div class="facts"><h2>INVOICE</h2><dl>',
        *(f"<dt>{e(label)}</dt><dd>{e(value)}</dd>" for label, value in _facts(invoice)),
        "</dl></div>",
        "</header>",
        '<section class="parties">',
        f'<div class="buyer"><h3>Billed to</h3><p><strong>{e(invoice.buyer.name)}</strong><br>'
        f"{_html_lines(_buyer_lines(invoice.buyer))}</p></div>",
        f'<div class="payment"><h3>Payment method</h3><p>{e(invoice.payment_method)}</p></div>',
        "</section>",
        "<table>",
        '<thead><tr><th>Description</th><th class="amount">Added to balance</th>'
        '<th class="amount">Charged</th></tr></thead>',
        "<tbody>",
        *(_html_row(row) for row in body),
        "</tbody>",
        "<tfoot>",
        *(_html_row(row) for row in footer),
        "</tfoot>",
        "</table>",
        f'<p class="summary">{e(_summary(invoice))}</p>',
    ]
    if invoice.notes:
        out.append(f'<section><h3>Notes</h3><p class="notes">{e(invoice.notes)}</p></section>')
    out += ["</main>", "</body>", "</html>", ""]
    return "\n".join(out)


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def _html_lines(lines: list[str]) -> str:
    return "<br>".join(_escape(line) for line in lines)


def _html_row(row: _Row) -> str:
    return (f'<tr><td>{_escape(row.description)}</td><td class="amount">{_escape(row.credited)}</td>'
            f'<td class="amount">{_escape(row.charged)}</td></tr>')


# -- PDF ------------------------------------------------------------------------------------

_MARGIN = 56.0                           # about 20 mm
_LEFT = _MARGIN
_RIGHT = pdf.A4_WIDTH - _MARGIN
_MIDDLE = pdf.A4_WIDTH / 2
_TOP = pdf.A4_HEIGHT - _MARGIN
_BOTTOM = _MARGIN + 20                   # room below for the page footer
_AMOUNT_WIDTH = 120.0                    # fits "9,223,372,036.854775807", the largest amount
_CHARGED_RIGHT = _RIGHT
_CREDITED_RIGHT = _RIGHT - _AMOUNT_WIDTH
_DESCRIPTION_WIDTH = _CREDITED_RIGHT - _AMOUNT_WIDTH - _LEFT
_HALF_WIDTH = _MIDDLE - _LEFT - 12
_SIZE = 9.5                              # body text
_LEADING = 1.4                           # line height as a multiple of the size
_ROW_GAP = 3.0                           # between the table's rows


@dataclass(frozen=True, slots=True)
class _Cell:
    x: float                             # the left end, or the right end when right-aligned
    text: str
    size: float = _SIZE
    bold: bool = False
    right_aligned: bool = False
    line: int = 0                        # which line of its band


@dataclass(frozen=True, slots=True)
class _Band:
    """A horizontal band of a page, never split across pages: its height, its text, an
    optional rule across its middle, and its heading: bands placed before it unless the same
    heading is already on its page (a table's header, repeated on each page of the table)."""

    height: float
    cells: tuple[_Cell, ...] = ()
    rule: bool = False
    heading: tuple[_Band, ...] = ()


def render_pdf(invoice: Invoice) -> bytes:
    """The invoice as a PDF of one or more A4 pages (more when its lines need them)."""
    pages = _paginate(_bands(invoice))
    footer = f"{invoice.seller.name} · Invoice {invoice.number}"
    for number, page in enumerate(pages, start=1):
        page.append(pdf.Text(_LEFT, _MARGIN, f"{footer} · page {number} of {len(pages)}", size=7.5))
    return pdf.document(pages, title=f"Invoice {invoice.number}")


def _bands(invoice: Invoice) -> list[_Band]:
    bands: list[_Band] = []
    # Header: the seller on the left, the invoice's facts on the right, one band per line so
    # a long address can still break across pages.
    left = [_Cell(_LEFT, line, size=15, bold=True) for line in pdf.wrap(invoice.seller.name, _HALF_WIDTH, 15, True)]
    left += [_Cell(_LEFT, line) for line in _wrapped(_seller_lines(invoice.seller), _HALF_WIDTH)]
    right = [_Cell(_RIGHT, "INVOICE", size=15, bold=True, right_aligned=True)]
    facts = [f"{label}: {value}" for label, value in _facts(invoice)]
    right += [_Cell(_RIGHT, line, right_aligned=True) for line in _wrapped(facts, _HALF_WIDTH)]
    bands += _side_by_side(left, right)
    bands.append(_Band(18))

    buyer = [_Cell(_LEFT, "BILLED TO", size=8, bold=True)]
    buyer += [_Cell(_LEFT, line, bold=True) for line in pdf.wrap(invoice.buyer.name, _HALF_WIDTH, _SIZE, True)]
    buyer += [_Cell(_LEFT, line) for line in _wrapped(_buyer_lines(invoice.buyer), _HALF_WIDTH)]
    payment = [_Cell(_MIDDLE, "PAYMENT METHOD", size=8, bold=True)]
    payment += [_Cell(_MIDDLE, line) for line in _wrapped([invoice.payment_method], _HALF_WIDTH)]
    bands += _side_by_side(buyer, payment)
    bands.append(_Band(18))

    header = (
        _Band(_SIZE * _LEADING, (
            _Cell(_LEFT, "Description", bold=True),
            _Cell(_CREDITED_RIGHT, "Added to balance", bold=True, right_aligned=True),
            _Cell(_CHARGED_RIGHT, "Charged", bold=True, right_aligned=True),
        )),
        _Band(6, rule=True),
    )
    body, footer = _table(invoice)
    bands += [_table_row(row, bold=False, heading=header) for row in body]
    bands.append(_Band(6, rule=True))
    bands += [_table_row(row, bold=row is footer[-1]) for row in footer]
    bands.append(_Band(10))
    bands += [_Band(_SIZE * _LEADING, (_Cell(_LEFT, line),))
              for line in pdf.wrap(_summary(invoice), _RIGHT - _LEFT, _SIZE)]

    if invoice.notes:
        bands.append(_Band(14))
        bands.append(_Band(_SIZE * _LEADING, (_Cell(_LEFT, "NOTES", size=8, bold=True),)))
        bands += [_Band(_SIZE * _LEADING, (_Cell(_LEFT, line),))
                  for line in _wrapped(invoice.notes.splitlines(), _RIGHT - _LEFT)]
    return bands


def _wrapped(lines: list[str], width: float) -> list[str]:
    return [part for line in lines for part in pdf.wrap(line, width, _SIZE)]


def _side_by_side(left: list[_Cell], right: list[_Cell]) -> list[_Band]:
    """Two columns as one band per line, each as tall as its larger cell."""
    bands = []
    for index in range(max(len(left), len(right))):
        cells = tuple(column[index] for column in (left, right) if index < len(column))
        bands.append(_Band(max(cell.size for cell in cells) * _LEADING, cells))
    return bands


def _table_row(row: _Row, *, bold: bool, heading: tuple[_Band, ...] = ()) -> _Band:
    """A table row: the description wrapped in its column, the amounts on its first line."""
    lines = pdf.wrap(row.description, _DESCRIPTION_WIDTH, _SIZE, bold)
    cells = [_Cell(_LEFT, line, bold=bold, line=index) for index, line in enumerate(lines)]
    cells += [_Cell(_CREDITED_RIGHT, row.credited, bold=bold, right_aligned=True),
              _Cell(_CHARGED_RIGHT, row.charged, bold=bold, right_aligned=True)]
    return _Band(len(lines) * _SIZE * _LEADING + _ROW_GAP, tuple(cells), heading=heading)


def _paginate(bands: list[_Band]) -> list[list[pdf.Mark]]:
    """Bands placed top to bottom, each with its heading; a band that does not fit on the
    current page starts the next one."""
    pages: list[list[pdf.Mark]] = [[]]
    top = _TOP
    heading_on_page: tuple[_Band, ...] = ()
    for band in bands:
        heading = band.heading if band.heading != heading_on_page else ()
        if top - band.height - sum(b.height for b in heading) < _BOTTOM:
            pages.append([])
            top = _TOP
            heading = band.heading
        # A band taller than a page (a description of a thousand lines) would loop forever.
        if top - band.height - sum(b.height for b in heading) < _BOTTOM:
            raise ValueError("an invoice line is too long to fit on a page")
        for part in (*heading, band):
            top = _place(pages[-1], part, top)
        heading_on_page = band.heading
    return pages


def _place(page: list[pdf.Mark], band: _Band, top: float) -> float:
    """Draws `band` with its top at `top`; returns where the next band starts."""
    for cell in band.cells:
        x = cell.x - pdf.text_width(cell.text, cell.size, cell.bold) if cell.right_aligned else cell.x
        baseline = top - cell.size - cell.line * cell.size * _LEADING
        page.append(pdf.Text(x, baseline, cell.text, size=cell.size, bold=cell.bold))
    if band.rule:
        page.append(pdf.Rule(_LEFT, _RIGHT, top - band.height / 2))
    return top - band.height
