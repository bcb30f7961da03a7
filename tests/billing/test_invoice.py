"""Invoices: what is paid and what is credited, exact tax, HTML escaping and figures, and PDFs
a real reader (pypdf) opens, with the small PDF writer's encoding, escaping and xref."""

from __future__ import annotations

import dataclasses
import io
import re
from fractions import Fraction
from html.parser import HTMLParser

import pypdf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from farebox.billing import pdf
from farebox.billing.invoice import (
    NOT_CHARGED,
    Buyer,
    Invoice,
    Line,
    Seller,
    amount_text,
    render_html,
    render_pdf,
)
from farebox.money import NANOS_MAX, parse_usd

SELLER = Seller("Farebox Ltd", ("1 Main Street", "London EC1A 1AA", "United Kingdom"),
                "billing@farebox.example", "VAT ID", "GB123456789")
BUYER = Buyer("Acme Research", "ap@acme.example", ("2 Side Road", "Berlin"), "DE999999999")
CREDITS = Line("Credits", parse_usd("100"), "credits")
BONUS = Line("Bonus credits (10%)", parse_usd("10"), "bonus")
FEE = Line("Card processing fee", parse_usd("3.2"), "fee")


def make(*lines: Line, **changes: object) -> Invoice:
    invoice = Invoice(
        number="FB-2026-000042",
        issued_at_ms=1_767_225_600_000,  # 2026-01-01T00:00:00Z
        seller=SELLER,
        buyer=BUYER,
        lines=lines or (CREDITS, BONUS, FEE),
        payment_method="card •••• 4242",
    )
    return dataclasses.replace(invoice, **changes)


def pdf_text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data), strict=True)
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


# -- what is paid, what is credited --------------------------------------------------------

def test_bonus_is_credited_not_paid_and_fee_is_paid_not_credited() -> None:
    invoice = make()
    assert invoice.paid_nanos == parse_usd("103.2")
    assert invoice.total_nanos == invoice.paid_nanos
    assert invoice.credits_nanos == parse_usd("110")
    assert invoice.subtotal_nanos == parse_usd("103.2")
    assert invoice.tax_nanos == 0
    assert invoice.items == (CREDITS, BONUS, FEE)


def test_a_bonus_changes_the_credit_and_never_the_payment() -> None:
    without = make(CREDITS, FEE)
    with_bonus = make(CREDITS, FEE, BONUS, Line("Welcome bonus", parse_usd("5"), "bonus"))
    assert with_bonus.paid_nanos == without.paid_nanos
    assert with_bonus.credits_nanos == without.credits_nanos + parse_usd("15")


amounts = st.integers(min_value=0, max_value=10**15)
lines = st.lists(st.builds(Line, description=st.text(max_size=20), amount_nanos=amounts,
                           kind=st.sampled_from(["credits", "bonus", "fee", "tax"])), min_size=1, max_size=8)


@given(lines)
def test_paid_is_credits_fee_and_tax_and_credited_is_credits_and_bonus(drawn: list[Line]) -> None:
    invoice = make(*drawn)
    by_kind = {kind: sum(line.amount_nanos for line in drawn if line.kind == kind)
               for kind in ("credits", "bonus", "fee", "tax")}
    assert invoice.paid_nanos == by_kind["credits"] + by_kind["fee"] + by_kind["tax"]
    assert invoice.credits_nanos == by_kind["credits"] + by_kind["bonus"]
    assert invoice.tax_nanos == by_kind["tax"]


@pytest.mark.parametrize(("rate", "subtotal", "tax"), [
    ("20", parse_usd("103.2"), parse_usd("20.64")),
    ("20.000", parse_usd("103.2"), parse_usd("20.64")),
    ("0", parse_usd("103.2"), 0),
    ("100", parse_usd("5"), parse_usd("5")),
    ("20", 1, 1),                                  # 0.2 nano-dollars rounds up to one
    ("20", 1_000_000_001, 200_000_001),            # 200,000,000.2 rounds up
    ("8.875", 1_000_000_000, 88_750_000),          # New York City: exact, no rounding
    ("8.875", 3, 1),
    ("0.000001", parse_usd("1000000"), parse_usd("0.01")),
])
def test_tax_is_exact_and_rounded_up_once_to_the_nano(rate: str, subtotal: int, tax: int) -> None:
    invoice = make(Line("Credits", subtotal, "credits"), tax_rate_percent=rate)
    assert invoice.tax_nanos == tax
    assert invoice.paid_nanos == subtotal + tax
    assert invoice.items[-1] == Line(invoice.items[-1].description, tax, "tax")


@given(credits=amounts, fee=amounts, bonus=amounts,
       rate=st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False))
def test_tax_applies_to_credits_and_fee_and_never_to_bonus(credits: int, fee: int, bonus: int, rate: object) -> None:
    invoice = make(Line("Credits", credits, "credits"), Line("Fee", fee, "fee"), Line("Bonus", bonus, "bonus"),
                   tax_rate_percent=str(rate))
    exact = Fraction(credits + fee) * Fraction(str(rate)) / 100
    assert exact <= invoice.tax_nanos < exact + 1
    assert invoice.paid_nanos == credits + fee + invoice.tax_nanos
    assert invoice.credits_nanos == credits + bonus


def test_computed_tax_line_names_label_rate_and_base() -> None:
    invoice = make(CREDITS, FEE, tax_rate_percent="20.00", tax_label="MwSt")
    assert invoice.items[-1].description == "MwSt 20% of 103.20"
    assert make(CREDITS, tax_rate_percent="100").items[-1].description == "VAT 100% of 100.00"


def test_explicit_tax_lines_count_as_tax() -> None:
    invoice = make(CREDITS, Line("Sales tax (CA)", parse_usd("7.25"), "tax"))
    assert invoice.tax_nanos == parse_usd("7.25")
    assert invoice.paid_nanos == parse_usd("107.25")
    assert invoice.credits_nanos == parse_usd("100")


def test_a_tax_rate_and_tax_lines_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        make(CREDITS, Line("Tax", 1, "tax"), tax_rate_percent="20")


@pytest.mark.parametrize("rate", ["abc", "", "-1", "100.0001", "2000", "NaN", "Infinity", "0.0000001", "1e-9"])
def test_malformed_tax_rates_are_refused(rate: str) -> None:
    with pytest.raises(ValueError, match="tax rate"):
        make(CREDITS, tax_rate_percent=rate)


def test_a_tax_rate_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        make(CREDITS, tax_rate_percent=20)


@pytest.mark.parametrize(("amount", "kind"), [(-1, "credits"), (1.5, "credits"), (True, "fee"),
                                              (NANOS_MAX + 1, "credits"), (1, "discount")])
def test_bad_lines_are_refused(amount: object, kind: str) -> None:
    with pytest.raises(ValueError):
        Line("x", amount, kind)  # type: ignore[arg-type]


def test_zero_amount_lines_are_fine() -> None:
    assert make(CREDITS, Line("Fee waived", 0, "fee")).paid_nanos == parse_usd("100")


@pytest.mark.parametrize(("changes", "error"), [
    ({"number": " "}, ValueError),
    ({"lines": ()}, ValueError),
    ({"lines": [CREDITS]}, TypeError),
    ({"lines": ("credits",)}, TypeError),
    ({"currency": "EUR"}, ValueError),
    ({"lines": (Line("a", NANOS_MAX, "credits"), Line("b", 1, "fee"))}, ValueError),
    ({"lines": (Line("a", NANOS_MAX, "credits"), Line("b", 1, "bonus"))}, ValueError),
])
def test_bad_invoices_are_refused(changes: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        make(**changes)


@pytest.mark.parametrize(("nanos", "text"), [
    (0, "0.00"),
    (1, "0.000000001"),
    (parse_usd("25"), "25.00"),
    (parse_usd("3.2"), "3.20"),
    (parse_usd("1234.5"), "1,234.50"),
    (1_234_567_891, "1.234567891"),
    (NANOS_MAX, "9,223,372,036.854775807"),
])
def test_amount_text_is_exact_with_cents_and_separators(nanos: int, text: str) -> None:
    assert amount_text(nanos) == text


# -- HTML -----------------------------------------------------------------------------------

class _Page(HTMLParser):
    """Collects a page's tags and its text as a browser would show it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def test_html_is_a_complete_self_contained_page_with_every_figure() -> None:
    invoice = make(CREDITS, BONUS, FEE, tax_rate_percent="20", notes="Thank you.\nPaid in full.")
    page = render_html(invoice)
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    parsed = parse(page)
    assert {"html", "head", "style", "body", "table"} <= set(parsed.tags)
    assert not {"script", "link", "img", "iframe"} & set(parsed.tags)
    assert "http" not in page.lower()  # nothing to fetch: it prints the same offline
    text = " ".join(parsed.text)
    for figure in ["100.00", "10.00", "3.20", "103.20", "20.64", "123.84", "110.00"]:
        assert figure in text, figure
    assert amount_text(invoice.paid_nanos) == "123.84"
    for fact in ["FB-2026-000042", "2026-01-01 00:00 UTC", "card •••• 4242", "Acme Research",
                 "ap@acme.example", "DE999999999", "GB123456789", "VAT 20% of 103.20", NOT_CHARGED,
                 "Thank you.", "Paid in full."]:
        assert fact in text, fact


def test_html_shows_the_bonus_as_credited_and_not_charged() -> None:
    page = render_html(make())
    row = re.search(r"<tr><td>Bonus credits \(10%\)</td>.*?</tr>", page)
    assert row is not None
    assert '<td class="amount">10.00</td><td class="amount">not charged</td>' in row.group()


HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)> \'quoted\''


def test_html_escapes_every_string_from_outside() -> None:
    invoice = Invoice(
        number=HOSTILE, issued_at_ms=0,
        seller=Seller(HOSTILE, (HOSTILE,), HOSTILE, HOSTILE, HOSTILE),
        buyer=Buyer(HOSTILE, HOSTILE, (HOSTILE,), HOSTILE),
        lines=(Line(HOSTILE, 1, "credits"), Line(HOSTILE, 2, "bonus")),
        payment_method=HOSTILE, tax_rate_percent="10", tax_label=HOSTILE, notes=HOSTILE,
    )
    page = render_html(invoice)
    assert "<script" not in page and "<img" not in page and "'quoted'" not in page
    parsed = parse(page)
    assert not {"script", "img"} & set(parsed.tags)
    # Every field arrives intact as text: 1 title + 4 seller + 4 buyer + payment + number
    # + 2 lines + tax label + notes.
    assert "".join(parsed.text).count(HOSTILE) >= 14


# -- PDF ------------------------------------------------------------------------------------

def test_pdf_opens_in_a_real_reader_with_every_figure() -> None:
    invoice = make(CREDITS, BONUS, FEE, tax_rate_percent="20", notes="Thank you.")
    pages, text = pdf_text(render_pdf(invoice))
    assert pages == 1
    for fact in ["INVOICE", "FB-2026-000042", "2026-01-01 00:00 UTC", "Farebox Ltd", "GB123456789",
                 "Acme Research", "ap@acme.example", "DE999999999", "card •••• 4242",
                 "100.00", "10.00", "3.20", "103.20", "20.64", "123.84", "110.00", NOT_CHARGED,
                 "VAT 20% of 103.20", "Thank you.", "page 1 of 1"]:
        assert fact in text, fact
    # Each row's amounts sit in their columns: added to balance, then charged.
    for row in ["Credits 100.00 100.00", "Bonus credits (10%) 10.00 not charged", "Card processing fee — 3.20",
                "Subtotal before tax 103.20", "VAT 20% of 103.20 — 20.64", "Total 110.00 123.84"]:
        assert row in text.splitlines(), row


def test_pdf_metadata_names_the_invoice() -> None:
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(make(number="FB-2026-000042"))), strict=True)
    assert reader.metadata is not None
    assert reader.metadata.title == "Invoice FB-2026-000042"
    assert reader.pdf_header == "%PDF-1.4"


def test_pdf_is_deterministic() -> None:
    assert render_pdf(make()) == render_pdf(make())


def test_pdf_escapes_parentheses_and_backslashes() -> None:
    name = r"Unbalanced) (Ltd \ Co \n (("
    data = render_pdf(make(buyer=dataclasses.replace(BUYER, name=name)))
    assert rb"Unbalanced\) \(Ltd \\ Co \\n \(\(" in data
    assert name in pdf_text(data)[1]


def test_pdf_replaces_characters_beyond_its_encoding() -> None:
    name = "Zoë Łukasz Ős 株式会社 🚀\tLtd\u00a0€"
    pages, text = pdf_text(render_pdf(make(buyer=dataclasses.replace(BUYER, name=name))))
    assert pages == 1
    assert "Zoë ?ukasz Os ???? ? Ltd €" in text


@pytest.mark.parametrize(("text", "encoded"), [
    ("plain", b"plain"),
    ("café", b"caf\xe9"),
    ("cafe\u0301", b"caf\xe9"),    # decomposed: composed first
    ("€ • – “x”", b"\x80 \x95 \x96 \x93x\x94"),
    ("Őz", b"Oz"),                 # not in WinAnsi: its base letter
    ("ﬁne", b"fine"),              # a ligature decomposes into letters
    ("Ł株", b"??"),                # no decomposition: "?"
    ("a\nb\tc\x00d\u2028e", b"a b c d e"),
])
def test_winansi(text: str, encoded: bytes) -> None:
    assert pdf.winansi(text) == encoded


def test_a_long_invoice_takes_several_pages_repeating_the_table_header() -> None:
    many = tuple(Line(f"Credits batch {n}" + " with a description long enough to wrap" * (n % 3),
                      parse_usd("1") * n + n, "credits") for n in range(1, 90))
    invoice = make(*many, FEE, tax_rate_percent="20")
    count, text = pdf_text(render_pdf(invoice))
    assert count >= 3
    assert text.count("Description") == count
    assert f"page {count} of {count}" in text
    for line in invoice.items:
        assert amount_text(line.amount_nanos) in text
    assert amount_text(invoice.total_nanos) in text


def test_a_line_too_long_for_a_page_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        render_pdf(make(Line("word " * 5000, 1, "credits")))


def test_pdf_xref_offsets_point_at_their_objects() -> None:
    data = render_pdf(make())
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", data).group(1))  # type: ignore[union-attr]
    assert data[start:].startswith(b"xref\n0 ")
    size = int(re.match(rb"xref\n0 (\d+)\n", data[start:]).group(1))  # type: ignore[union-attr]
    entries = data[start:].split(b"\n", 2)[2]
    assert entries[:20] == b"0000000000 65535 f \n"
    for number in range(1, size):
        entry = entries[20 * number:20 * (number + 1)]
        assert re.fullmatch(rb"\d{10} 00000 n \n", entry), entry
        assert data[int(entry[:10]):].startswith(b"%d 0 obj\n" % number)
    assert b"/Size %d " % size in data
    # Each content stream's /Length is its exact byte count.
    for length, body in re.findall(rb"<< /Length (\d+) >>\nstream\n(.*?)\nendstream", data, re.S):
        assert int(length) == len(body)


def test_document_draws_text_and_rules_on_several_pages() -> None:
    data = pdf.document([
        [pdf.Text(72, 770, "first", size=12, bold=True), pdf.Rule(72, 523, 760)],
        [pdf.Text(72, 770, "second")],
    ], title="Zoë’s test")
    reader = pypdf.PdfReader(io.BytesIO(data), strict=True)
    assert [page.extract_text() for page in reader.pages] == ["first", "second"]
    assert reader.metadata is not None and reader.metadata.title == "Zoë’s test"
    assert [float(v) for v in reader.pages[0].mediabox] == [0, 0, pdf.A4_WIDTH, pdf.A4_HEIGHT]
    assert b"0.5 w 72 760 m 523 760 l S" in data
    assert b"BT /F2 12 Tf 72 770 Td (first) Tj ET" in data


def test_document_refuses_marks_off_the_page() -> None:
    with pytest.raises(AssertionError):
        pdf.document([[pdf.Text(72, 900, "above the page")]], title="x")


def test_text_width_uses_the_font_metrics() -> None:
    assert pdf.text_width("0", 10) == pytest.approx(5.56)
    assert pdf.text_width("i", 10) == pytest.approx(2.22)
    assert pdf.text_width("i", 10, bold=True) == pytest.approx(2.78)
    assert pdf.text_width("W@", 1000) == pytest.approx(944 + 1015)
    assert pdf.text_width("é", 10) == pytest.approx(10)   # beyond ASCII: measured as an em, never less


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
       st.floats(min_value=20, max_value=400), st.booleans())
def test_wrap_fits_its_width_and_keeps_every_word(text: str, width: float, bold: bool) -> None:
    wrapped = pdf.wrap(text, width, 10, bold)
    assert wrapped
    for line in wrapped:
        assert pdf.text_width(line, 10, bold) <= width or len(line) == 1
    assert "".join("".join(wrapped).split()) == "".join(text.split())
