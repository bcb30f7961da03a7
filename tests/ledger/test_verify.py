"""`ledger verify`: a clean ledger passes; each check catches its own kind of corruption,
written with raw SQL on a separate connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farebox.clock import FakeClock
from farebox.ledger.book import Book
from farebox.ledger.caps import Cap, key_cap
from farebox.ledger.entries import EXPIRED, GRANTS, OVERRUN, REVENUE, SYSTEM_ACCOUNTS, Entry, wallet
from farebox.ledger.verify import Report, verify_memory, verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

W1, W2 = wallet(1), wallet(2)
TIMEOUT = 900.0


def generation(gid: str, org_id: int, total: int, charged: int) -> dict[str, Any]:
    return {"id": gid, "org_id": org_id, "workspace_id": None, "key_hash": "k", "created_at_ms": 1,
            "model": "acme/m", "provider_name": "Acme", "total_cost_nanos": total, "charged_nanos": charged,
            "tokens_prompt": 1, "tokens_completion": 1, "streamed": False, "cancelled": False,
            "finish_reason": "stop"}


@dataclass
class Live:
    store: Store
    writer: GroupWriter
    book: Book
    clock: FakeClock

    def grant(self, org_id: int, amount: int, ref: str) -> None:
        entry = Entry("grant", GRANTS, wallet(org_id), amount, f"grant:{ref}", self.clock.now_ms(), org_id)
        new, stored = self.writer.run_sync(lambda conn: ops.grant(conn, entry))
        if new:
            self.book.apply(stored)

    def request(self, org_id: int, gid: str, hold: int, cost: int, cap: Cap | None = None) -> None:
        h = self.book.hold(gid, wallet(org_id), hold, () if cap is None else (cap,))
        s = self.book.settle(h, cost, reference=f"charge:{gid}", created_at=self.clock.now_ms(), org_id=org_id,
                             key_hash="k", generation_id=gid)
        gen = generation(gid, org_id, cost, s.charged)
        self.writer.run_sync(lambda conn: ops.settle(conn, s.entries, gen))

    def verify(self) -> Report:
        return verify_store(self.store.reader_conn)

    def raw(self) -> sqlite3.Connection:
        return sqlite3.connect(self.store.path, isolation_level=None)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    store = Store(tmp_path / "x.db")
    writer = GroupWriter(store.writer_conn)

    def orgs(conn: sqlite3.Connection) -> None:
        for oid in (1, 2):
            conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (oid, f"o{oid}"))
            ops.ensure_account(conn, wallet(oid), oid, "wallet")

    writer.run_sync(orgs)
    clock = FakeClock()
    lv = Live(store, writer, Book(clock, TIMEOUT), clock)
    lv.grant(1, 10_000, "a")
    lv.grant(1, 10_000, "a")  # a replay
    lv.grant(2, 500, "b")
    cap = key_cap(limit=5000)
    lv.request(1, "g1", 3000, 1200, cap)
    lv.request(1, "g2", 1000, 1000)
    lv.request(2, "g3", 400, 900)   # overrun of 500
    lv.request(1, "g4", 50, 0)      # free: a generation without entries
    yield lv
    store.close()


def violated(report: Report) -> dict[str, int]:
    return {k: v for k, v in report.checks.items() if v}


def test_a_clean_ledger_passes(live: Live) -> None:
    report = live.verify()
    assert report.ok, report.violations
    assert set(report.checks) == {"zero_sum", "balances", "floors", "generations", "orphans", "lots"}
    assert report.counts == {"accounts": len(SYSTEM_ACCOUNTS) + 2, "entries": 6, "generations": 4}
    assert report.warnings == [{"overrun": "g3", "amount_nanos": 500}]
    wire = report.wire()
    assert wire["ok"] is True and wire["violations"] == []


def test_an_empty_ledger_passes(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.db")
    try:
        report = verify_store(store.reader_conn)
        assert report.ok and report.counts == {"accounts": len(SYSTEM_ACCOUNTS), "entries": 0, "generations": 0}
    finally:
        store.close()


def post_raw(raw: sqlite3.Connection, kind: str, src: str, dst: str, amount: int, reference: str,
             generation_id: str | None = None) -> None:
    """Post an entry and move both balances by hand, bypassing the ledger: the tampering
    a violation test needs."""
    raw.execute("INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference, generation_id)"
                " VALUES (1, ?, ?, ?, ?, ?, ?)", (kind, src, dst, amount, reference, generation_id))
    raw.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
    raw.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))


def test_verify_leaves_the_connection_usable(live: Live) -> None:
    live.verify()
    assert not live.store.reader_conn.in_transaction
    live.request(1, "g5", 10, 10)
    assert live.verify().ok


def test_zero_sum_and_balances_catch_money_from_nowhere(live: Live) -> None:
    raw = live.raw()
    raw.execute("UPDATE accounts SET balance = balance + 7 WHERE id = ?", (REVENUE,))
    raw.close()
    report = live.verify()
    assert violated(report) == {"zero_sum": 1, "balances": 1}
    assert {"check": "zero_sum", "sum": 7} in report.violations
    assert {"check": "balances", "account": REVENUE, "stored": 3_100 + 7, "entries": 3_100} in report.violations


def test_balances_catch_a_stored_balance_that_disagrees_with_its_entries(live: Live) -> None:
    raw = live.raw()
    # Shift money between two system accounts: the sum is still zero, the balances are wrong.
    raw.execute("UPDATE accounts SET balance = balance - 3 WHERE id = ?", (REVENUE,))
    raw.execute("UPDATE accounts SET balance = balance + 3 WHERE id = ?", (OVERRUN,))
    raw.close()
    report = live.verify()
    assert violated(report) == {"balances": 2}
    assert {v["account"] for v in report.violations} == {REVENUE, OVERRUN}


def test_balances_catch_entries_to_an_unknown_account(live: Live) -> None:
    raw = live.raw()  # foreign keys are off on a plain connection
    raw.execute("INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference)"
                " VALUES (1, 'grant', ?, 'org:99:wallet', 5, 'ghost')", (GRANTS,))
    raw.execute("UPDATE accounts SET balance = balance - 5 WHERE id = ?", (GRANTS,))
    raw.close()
    report = live.verify()
    assert report.checks["balances"] >= 1
    assert {"check": "balances", "entries_without_account": 1} in report.violations


def test_floors_catch_a_wallet_that_went_negative_in_history(live: Live) -> None:
    # The wallet spent 30 000 it did not have, then was credited back: its final balance is
    # right and every stored balance agrees with the entries, but it was below zero.
    before = dict(live.store.reader_conn.execute("SELECT id, balance FROM accounts"))
    raw = live.raw()
    raw.execute("INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference)"
                " VALUES (1, 'adjust', ?, ?, 30000, 'adj:out')", (W1, REVENUE))
    raw.execute("INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference)"
                " VALUES (1, 'adjust', ?, ?, 30000, 'adj:back')", (REVENUE, W1))
    raw.close()
    assert dict(live.store.reader_conn.execute("SELECT id, balance FROM accounts")) == before
    report = live.verify()
    # Spending more than the wallet held is also spending more than its credit lots held.
    assert violated(report) == {"floors": 1, "lots": 1}
    [v, lots] = report.violations
    assert v["account"] == W1 and v["lowest"] == before[W1] - 30000 < 0
    assert lots["check"] == "lots" and "more than the lots hold" in lots["replay"]


def test_floors_catch_a_wallet_below_zero_now(live: Live) -> None:
    raw = live.raw()
    raw.execute("DROP TRIGGER accounts_floor")
    post_raw(raw, "adjust", W2, REVENUE, 1000, "adj:over")
    raw.close()
    report = live.verify()
    assert violated(report) == {"floors": 1, "lots": 1}
    assert report.violations[0]["account"] == W2 and report.violations[0]["lowest"] == 100 - 1000


def test_floors_ignore_system_accounts(live: Live) -> None:
    # system:grants and system:overrun are negative by design.
    balances = dict(live.store.reader_conn.execute("SELECT id, balance FROM accounts"))
    assert balances[GRANTS] < 0 and balances[OVERRUN] < 0
    assert live.verify().checks["floors"] == 0


def test_generations_catch_a_cost_mismatch(live: Live) -> None:
    raw = live.raw()
    raw.execute("UPDATE generations SET total_cost = total_cost + 1 WHERE id = 'g1'")
    raw.close()
    report = live.verify()
    assert violated(report) == {"generations": 1}
    assert report.violations[0]["generation"] == "g1"
    assert report.violations[0]["total_cost"] == 1201 and report.violations[0]["entries"] == 1200


def test_generations_catch_a_charged_mismatch(live: Live) -> None:
    raw = live.raw()
    raw.execute("UPDATE generations SET charged = 0 WHERE id = 'g3'")
    raw.close()
    assert violated(live.verify()) == {"generations": 1}


def test_generations_catch_a_free_request_that_was_charged(live: Live) -> None:
    raw = live.raw()
    post_raw(raw, "charge", W1, REVENUE, 9, "charge:g4", "g4")
    raw.close()
    report = live.verify()
    assert violated(report) == {"generations": 1}
    assert report.violations[0]["generation"] == "g4"


def test_generations_catch_two_charge_entries(live: Live) -> None:
    # A generation whose totals agree with its entries but that charged the wallet twice.
    raw = live.raw()
    raw.execute("INSERT INTO generations (id, org_id, key_hash, created_at, model, total_cost, charged,"
                " tokens_prompt, tokens_completion, streamed, cancelled, data)"
                " VALUES ('g9', 1, 'k', 1, 'm', 30, 30, 1, 1, 0, 0, x'7b7d')")
    for ref, amount in (("charge:g9", 10), ("charge:g9:again", 20)):
        post_raw(raw, "charge", W1, REVENUE, amount, ref, "g9")
    raw.close()
    report = live.verify()
    assert violated(report) == {"generations": 1}
    v = report.violations[0]
    assert (v["generation"], v["total_cost"], v["entries"], v["charge_entries"]) == ("g9", 30, 30, 2)


def test_generations_catch_a_missing_charge(live: Live) -> None:
    raw = live.raw()
    raw.execute("INSERT INTO generations (id, org_id, key_hash, created_at, model, total_cost, charged,"
                " tokens_prompt, tokens_completion, streamed, cancelled, data)"
                " VALUES ('g8', 1, 'k', 1, 'm', 30, 30, 1, 1, 0, 0, x'7b7d')")
    raw.close()
    assert violated(live.verify()) == {"generations": 1}


def test_orphans_catch_a_charge_without_its_generation(live: Live) -> None:
    raw = live.raw()
    for ref, gid in (("charge:nope", "nope"), ("charge:null", None)):
        raw.execute("INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference,"
                    " generation_id) VALUES (1, 'charge', ?, ?, 5, ?, ?)", (W1, REVENUE, ref, gid))
    raw.execute("INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference,"
                " generation_id) VALUES (1, 'overrun', ?, ?, 5, 'charge:nope:overrun', 'nope')",
                (OVERRUN, REVENUE))
    raw.execute("UPDATE accounts SET balance = balance - 10 WHERE id = ?", (W1,))
    raw.execute("UPDATE accounts SET balance = balance - 5 WHERE id = ?", (OVERRUN,))
    raw.execute("UPDATE accounts SET balance = balance + 15 WHERE id = ?", (REVENUE,))
    raw.close()
    report = live.verify()
    assert violated(report) == {"orphans": 3}
    assert sorted(str(v["generation"]) for v in report.violations) == ["None", "nope", "nope"]


def test_violations_listed_are_limited(live: Live) -> None:
    raw = live.raw()
    raw.execute("UPDATE generations SET total_cost = total_cost + 1 WHERE id = 'g1'")
    for i in range(30):
        raw.execute("INSERT INTO generations (id, org_id, key_hash, created_at, model, total_cost, charged,"
                    " tokens_prompt, tokens_completion, streamed, cancelled, data)"
                    " VALUES (?, 1, 'k', 1, 'm', 1, 0, 1, 1, 0, 0, x'7b7d')", (f"bad{i}",))
    raw.close()
    report = live.verify()
    assert report.checks["generations"] == 31
    assert len(report.violations) == 20


# -- verify_memory ---------------------------------------------------------------------

def _memory_report(live: Live, stored: dict[str, int] | None = None, memory: dict[str, int] | None = None) -> Report:
    report = live.verify()
    stored = stored if stored is not None else dict(live.store.reader_conn.execute("SELECT id, balance FROM accounts"))
    memory = memory if memory is not None else dict(live.book.balances)
    verify_memory(report, stored=stored, memory=memory, oldest_hold_age_s=live.book.oldest_hold_age(),
                  hold_limit_s=live.book.hold_timeout_s, open_holds=len(live.book.holds))
    return report


def test_memory_matches_a_live_book(live: Live) -> None:
    live.book.hold("open", W1, 100)
    live.clock.advance(TIMEOUT)  # exactly the limit is still fine
    report = _memory_report(live)
    assert report.ok, report.violations
    assert report.counts["open_holds"] == 1
    assert report.checks["holds"] == 0 and report.checks["memory"] == 0


def test_memory_flags_a_stale_hold(live: Live) -> None:
    live.book.hold("stuck", W1, 100)
    live.clock.advance(TIMEOUT + 1)  # the sweeper did not run
    report = _memory_report(live)
    assert violated(report) == {"holds": 1}
    assert report.violations[-1]["oldest_hold_age_ms"] == (TIMEOUT + 1) * 1000
    live.book.expire_old()
    assert _memory_report(live).ok


def test_memory_flags_a_mismatch_with_the_disk(live: Live) -> None:
    memory = dict(live.book.balances)
    memory[W1] += 1
    memory[REVENUE] -= 1
    report = _memory_report(live, memory=memory)
    assert violated(report) == {"memory": 2}
    assert {v["account"] for v in report.violations if v["check"] == "memory"} == {W1, REVENUE}


def test_memory_flags_a_settlement_never_committed(live: Live) -> None:
    h = live.book.hold("lost", W1, 100)
    live.book.settle(h, 80, reference="charge:lost", created_at=1, org_id=1, key_hash="k", generation_id="lost")
    report = _memory_report(live)
    assert report.checks["memory"] == 2
    assert report.checks["zero_sum"] == 0  # the disk itself is consistent


def test_memory_flags_an_account_only_in_memory(live: Live) -> None:
    memory = dict(live.book.balances)
    memory["org:77:wallet"] = 5
    report = _memory_report(live, memory=memory)
    assert violated(report) == {"memory": 1}
    memory["org:77:wallet"] = 0  # a zero balance known only in memory is fine
    assert _memory_report(live, memory=memory).ok


def test_lots_catch_an_expiry_beyond_what_its_lot_held(live: Live) -> None:
    # An expiry entry naming a lot takes from that lot only; taking more than it held is
    # caught even though the wallet's balance and every floor stay fine.
    live.grant(1, 10_000, "second")  # a second lot, so the wallet itself can pay the excess
    lot_id = live.store.reader_conn.execute(
        "SELECT entry_id FROM lots WHERE org_id = 1 ORDER BY entry_id LIMIT 1").fetchone()[0]
    left = 10_000 - 1200 - 1000  # the first lot paid both charges
    raw = live.raw()
    post_raw(raw, "expiry", W1, EXPIRED, left + 1, f"expire:lot:{lot_id}:0")
    raw.close()
    report = live.verify()
    assert violated(report) == {"lots": 1}


def test_lots_catch_a_wallet_balance_the_lots_do_not_explain(live: Live) -> None:
    raw = live.raw()
    raw.execute("UPDATE accounts SET balance = balance + 7 WHERE id = ?", (W1,))
    raw.close()
    report = live.verify()
    assert violated(report)["lots"] == 1
    row = next(v for v in report.violations if v["check"] == "lots")
    assert row["account"] == W1 and row["balance"] == row["lots"] + 7
