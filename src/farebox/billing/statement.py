"""Statements: every movement of a balance over a period, as CSV with a running balance.

The CSV is RFC 4180 (the csv module, CRLF line ends), meant to be sent as UTF-8
(text/csv; charset=utf-8). Amounts are exact decimal USD (money.usd_text): no float, no
exponent, so 1 nano-dollar is "0.000000001". A statement opens with an "opening balance"
row at the period's start and ends with a "closing balance" row at its end.

Spreadsheets run a cell that starts with "=", "+", "-" or "@" as a formula, so a description
or a key label chosen by a user could run one on the reader's machine. Text cells that start
with those (or with a tab or carriage return, which some spreadsheets skip before reading a
formula) get a leading "'", which shows the text as text. Amount cells are ours, numeric and
legitimately negative, so they are left alone.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from farebox.money import usd_text

KINDS = frozenset({"purchase", "bonus", "grant", "trial", "charge", "refund", "expiry", "fee", "transfer"})
HEADER = ("date", "kind", "description", "model", "generation_id", "key", "reference", "amount_usd", "balance_usd")
OPENING = "opening balance"
CLOSING = "closing balance"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class Movement:
    """One movement of a balance: positive into it, negative out of it."""

    at_ms: int
    kind: str
    amount_nanos: int
    reference: str            # what it is in the ledger: a payment id, a generation id, a transfer id
    description: str
    model: str | None = None
    generation_id: str | None = None
    key_label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"movement kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if type(self.amount_nanos) is not int:
            raise ValueError(f"movement amount must be an int of nano-dollars, got {self.amount_nanos!r}")


def iter_csv(movements: Iterable[Movement], *, opening_nanos: int,
             period_start_ms: int, period_end_ms: int) -> Iterator[str]:
    """The statement one CSV line at a time (each ending in CRLF), header first, so a large
    one can be sent as it is read. Movements must be in time order and within the period
    [period_start_ms, period_end_ms); since lines go out as they are made, a movement that
    breaks this fails the iteration after the lines before it were yielded."""
    assert period_start_ms <= period_end_ms, (period_start_ms, period_end_ms)
    writer = csv.writer(_Echo(), lineterminator="\r\n")
    yield writer.writerow(HEADER)
    yield writer.writerow((_iso(period_start_ms), OPENING, "", "", "", "", "", "", usd_text(opening_nanos)))
    balance = opening_nanos
    last_ms = period_start_ms
    for movement in movements:
        assert last_ms <= movement.at_ms < period_end_ms, (
            f"movement at {movement.at_ms} is out of time order or outside the period "
            f"[{period_start_ms}, {period_end_ms}): {movement}")
        last_ms = movement.at_ms
        balance += movement.amount_nanos
        yield writer.writerow((
            _iso(movement.at_ms),
            *(_text_cell(text) for text in (
                movement.kind, movement.description, movement.model, movement.generation_id,
                movement.key_label, movement.reference)),
            usd_text(movement.amount_nanos),
            usd_text(balance),
        ))
    yield writer.writerow((_iso(period_end_ms), CLOSING, "", "", "", "", "", "", usd_text(balance)))


def render_csv(movements: Iterable[Movement], *, opening_nanos: int,
               period_start_ms: int, period_end_ms: int) -> str:
    """The whole statement as one CSV string (see iter_csv)."""
    return "".join(iter_csv(movements, opening_nanos=opening_nanos,
                            period_start_ms=period_start_ms, period_end_ms=period_end_ms))


class _Echo:
    """A file whose write returns what it was given: csv.writer.writerow returns what the
    file's write returned, so each row comes back as its CSV line."""

    def write(self, line: str) -> str:
        return line


def _text_cell(text: str | None) -> str:
    if text is None:
        return ""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _iso(ms: int) -> str:
    """ISO-8601 in UTC to the millisecond: 2026-01-01T00:00:00.000Z."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
