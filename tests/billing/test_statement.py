"""Statements: CSV with exact amounts and a running balance between opening and closing rows,
time order, formula-injection guard, and streaming that equals the whole."""

from __future__ import annotations

import csv
import io
import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farebox.billing.statement import HEADER, Movement, iter_csv, render_csv
from farebox.money import NANOS_MAX, parse_usd

JAN_1 = 1_767_225_600_000   # 2026-01-01T00:00:00Z
FEB_1 = 1_769_904_000_000   # 2026-02-01T00:00:00Z
HOUR = 3_600_000


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def statement(movements: list[Movement], opening_nanos: int = 0) -> str:
    return render_csv(movements, opening_nanos=opening_nanos, period_start_ms=JAN_1, period_end_ms=FEB_1)


MOVEMENTS = [
    Movement(JAN_1 + HOUR, "purchase", parse_usd("100"), "pay_123", "Credits, card •••• 4242"),
    Movement(JAN_1 + HOUR, "bonus", parse_usd("10"), "pay_123", "Bonus 10%"),
    Movement(JAN_1 + 2 * HOUR + 123, "charge", -12_345, "gen-abc", "Chat completion",
             model="openai/gpt-4o-mini", generation_id="gen-abc", key_label="production"),
    Movement(FEB_1 - 1, "refund", 12_345, "gen-abc", "Refund: upstream error", generation_id="gen-abc"),
]


def test_statement_rows_with_running_balance_between_opening_and_closing() -> None:
    assert rows(statement(MOVEMENTS, opening_nanos=parse_usd("5"))) == [
        list(HEADER),
        ["2026-01-01T00:00:00.000Z", "opening balance", "", "", "", "", "", "", "5"],
        ["2026-01-01T01:00:00.000Z", "purchase", "Credits, card •••• 4242", "", "", "", "pay_123",
         "100", "105"],
        ["2026-01-01T01:00:00.000Z", "bonus", "Bonus 10%", "", "", "", "pay_123", "10", "115"],
        ["2026-01-01T02:00:00.123Z", "charge", "Chat completion", "openai/gpt-4o-mini", "gen-abc", "production",
         "gen-abc", "-0.000012345", "114.999987655"],
        ["2026-01-31T23:59:59.999Z", "refund", "Refund: upstream error", "", "gen-abc", "", "gen-abc",
         "0.000012345", "115"],
        ["2026-02-01T00:00:00.000Z", "closing balance", "", "", "", "", "", "", "115"],
    ]


def test_header_is_the_documented_one() -> None:
    first_line = statement([]).split("\r\n")[0]
    assert first_line == "date,kind,description,model,generation_id,key,reference,amount_usd,balance_usd"


def test_an_empty_period_closes_at_its_opening_balance() -> None:
    assert [row[1:] for row in rows(statement([], opening_nanos=7))[1:]] == [
        ["opening balance", "", "", "", "", "", "", "0.000000007"],
        ["closing balance", "", "", "", "", "", "", "0.000000007"],
    ]


@pytest.mark.parametrize(("nanos", "text"), [
    (1, "0.000000001"),
    (-1, "-0.000000001"),
    (0, "0"),
    (parse_usd("0.1"), "0.1"),
    (NANOS_MAX, "9223372036.854775807"),
    (-NANOS_MAX, "-9223372036.854775807"),
])
def test_amounts_are_exact_decimals(nanos: int, text: str) -> None:
    parsed = rows(statement([Movement(JAN_1, "grant", nanos, "r", "d")]))
    assert parsed[2][7] == text
    assert parsed[2][8] == text
    assert "e" not in parsed[2][7].lower()


@given(opening=st.integers(0, 10**12),
       amounts=st.lists(st.integers(-10**12, 10**12), max_size=30))
def test_each_balance_is_the_previous_plus_the_amount_exactly(opening: int, amounts: list[int]) -> None:
    movements = [Movement(JAN_1 + n, "charge", amount, f"r{n}", "d") for n, amount in enumerate(amounts)]
    parsed = rows(statement(movements, opening_nanos=opening))
    balance = Decimal(parsed[1][8])
    assert balance * 10**9 == opening
    for row in parsed[2:-1]:
        balance += Decimal(row[7])
        assert Decimal(row[8]) == balance
    assert Decimal(parsed[-1][8]) == balance
    assert balance * 10**9 == opening + sum(amounts)


@pytest.mark.parametrize("text", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1"])
def test_text_cells_that_look_like_formulas_are_neutralized(text: str) -> None:
    movement = Movement(JAN_1, "charge", -5, text, text, model=text, generation_id=text, key_label=text)
    row = rows(statement([movement]))[2]
    assert row[2:7] == [f"'{text}"] * 5
    assert row[7:] == ["-0.000000005", "-0.000000005"]  # amounts stay numbers, minus sign and all


def test_ordinary_text_is_left_alone() -> None:
    movement = Movement(JAN_1, "charge", -5, "ref=1", "a-b + c @ d", key_label="ci ")
    assert rows(statement([movement]))[2][2:7] == ["a-b + c @ d", "", "", "ci ", "ref=1"]


def test_awkward_text_parses_back_intact() -> None:
    awkward = 'Quote " comma , newline\nand CRLF\r\n, unicode Zoë 株式会社 🚀'
    text = statement([Movement(JAN_1, "transfer", 1, awkward, awkward, key_label=awkward)])
    assert rows(text)[2][2] == awkward
    assert rows(text)[2][5] == awkward
    text.encode("utf-8")  # the whole statement is valid Unicode for its UTF-8 response


def test_lines_end_in_crlf() -> None:
    text = statement(MOVEMENTS)
    assert text.endswith("\r\n")
    assert text.count("\r\n") == len(MOVEMENTS) + 3
    assert "\n" not in text.replace("\r\n", "")


def test_iter_csv_yields_one_record_at_a_time_and_equals_render_csv() -> None:
    movements = MOVEMENTS + [Movement(FEB_1 - 1, "fee", -1, "x", "line one\r\nline two")]
    lines = list(iter_csv(iter(movements), opening_nanos=3, period_start_ms=JAN_1, period_end_ms=FEB_1))
    assert "".join(lines) == statement(movements, opening_nanos=3)
    assert len(lines) == len(movements) + 3
    for line in lines:
        assert len(rows(line)) == 1
        assert line.endswith("\r\n")


def test_iter_csv_is_lazy() -> None:
    movements = (Movement(JAN_1 + n, "charge", -1, f"r{n}", "d") for n in itertools.count())  # endless
    first = list(itertools.islice(iter_csv(movements, opening_nanos=0, period_start_ms=JAN_1,
                                           period_end_ms=FEB_1), 4))
    assert [row[8] for row in rows("".join(first))[1:]] == ["0", "-0.000000001", "-0.000000002"]


@pytest.mark.parametrize("movements", [
    [Movement(JAN_1 + 2, "charge", -1, "a", "d"), Movement(JAN_1 + 1, "charge", -1, "b", "d")],
    [Movement(JAN_1 - 1, "charge", -1, "a", "d")],
    [Movement(FEB_1, "charge", -1, "a", "d")],   # the period's end is not in it
])
def test_movements_out_of_order_or_outside_the_period_are_refused(movements: list[Movement]) -> None:
    with pytest.raises(AssertionError, match="out of time order or outside the period"):
        statement(movements)


def test_movements_at_the_same_instant_and_at_the_period_start_are_in_order() -> None:
    same = [Movement(JAN_1, "purchase", 5, "a", "d"), Movement(JAN_1, "bonus", 1, "a", "d")]
    assert rows(statement(same))[-1][8] == "0.000000006"


def test_a_period_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(AssertionError):
        render_csv([], opening_nanos=0, period_start_ms=FEB_1, period_end_ms=JAN_1)


@pytest.mark.parametrize(("kind", "amount"), [("withdrawal", 1), ("charge", 1.5), ("charge", "1"), ("charge", True)])
def test_bad_movements_are_refused(kind: str, amount: object) -> None:
    with pytest.raises(ValueError):
        Movement(JAN_1, kind, amount, "r", "d")  # type: ignore[arg-type]
