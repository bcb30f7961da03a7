"""Transfers between an organization's wallet and its workspaces' pools, by example: the
credit model test (test_credit_model.py) covers them at random; these pin the cases worth
reading as a story: credit keeps its terms wherever it goes, a refund sees only what
stayed in the organization's wallet, expiry reaches pools, and a transfer is never more
than its source has available and happens once per reference."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from farebox.clock import FakeClock
from farebox.errors import Conflict, InsufficientCredits
from farebox.ledger.book import Book
from farebox.ledger.ledger import Ledger, RefundTerms
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

CENT = 10**7
DAY_MS = 86_400_000
ORG = "org:1:wallet"
POOL = "org:1:ws:1:wallet"
OTHER_POOL = "org:1:ws:2:wallet"


def new_ledger(store: Store, clock: FakeClock) -> Ledger:
    ledger = Ledger(Book(clock, 10**9), GroupWriter(store.writer_conn), clock, sweep_interval_s=3600)
    ledger.writer.start()
    return ledger


def run_ledger(path: Path, clock: FakeClock, main: Callable[[Ledger], Awaitable[None]]) -> Ledger:
    """Run `main` on a ledger over the store at `path` (an organization with two pools),
    then check the store and that a ledger rebuilt from it has the same lots."""
    store = Store(path)
    ledger = new_ledger(store, clock)

    def organization(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
        for account in (ORG, POOL, OTHER_POOL):
            ops.ensure_account(conn, account, 1, "wallet")

    async def go() -> None:
        await ledger.writer.submit(organization)
        await main(ledger)

    try:
        asyncio.run(go())
    finally:
        ledger.writer.stop()
    try:
        report = verify_store(store.reader_conn)
        assert report.ok, report.violations
        fresh = Ledger(Book(clock, 10**9), GroupWriter(store.writer_conn), clock, sweep_interval_s=3600)
        fresh.load(store.reader_conn)
        for account in (ORG, POOL, OTHER_POOL):
            assert ids_and_lots(fresh, account) == ids_and_lots(ledger, account), account
            assert fresh.book.balance(account) == ledger.book.balance(account)
        assert fresh.transfers == ledger.transfers
    finally:
        store.close()
    return ledger


def ids_and_lots(ledger: Ledger, account: str) -> list[tuple[int, str, int, int | None, str | None]]:
    """A wallet's live lots in the draw order: (id, kind, remaining, expiry, purchase)."""
    lots = ledger.book.lots.get(account)
    return [(x.id, x.kind, x.remaining, x.expires_at_ms, x.purchase) for x in lots.live] if lots else []


def live(ledger: Ledger, account: str) -> list[tuple[str, int, int | None, str | None]]:
    """A wallet's live lots in the draw order, without their ids: (kind, remaining, expiry, purchase)."""
    return [lot[1:] for lot in ids_and_lots(ledger, account)]


def test_credit_keeps_its_terms_in_a_pool_and_a_refund_takes_only_what_stayed(tmp_path: Path) -> None:
    """A transfer draws the organization's lots in the draw order (the purchase's bonus, which
    expires, then the grant, which does not, then the paid credit) and makes a lot of each in the pool with the
    same kind, expiry and purchase. The purchase's refund then pays back only the paid
    credit left in the organization's wallet; what was moved stays in the pool, and
    expires there with the purchase's expiry."""
    clock = FakeClock()
    expires = clock.now_ms() + 30 * DAY_MS

    async def main(ledger: Ledger) -> None:
        await ledger.purchase(1, "p", method="card", credits=100 * CENT, fee=0, bonus=10 * CENT,
                              expires_at_ms=expires)
        await ledger.grant(1, 5 * CENT, "g")
        new, record = await ledger.transfer(1, ORG, POOL, 50 * CENT, "t1", memo="fund", created_by="owner")
        assert new and (record.source, record.target, record.amount) == (ORG, POOL, 50 * CENT)
        assert live(ledger, POOL) == [("bonus", 10 * CENT, expires, "p"), ("grant", 5 * CENT, None, None),
                                      ("purchase", 35 * CENT, expires, "p")]
        assert live(ledger, ORG) == [("purchase", 65 * CENT, expires, "p")]

        def record_refund(conn: sqlite3.Connection, t: RefundTerms) -> None:
            conn.execute("INSERT INTO refunds (purchase_id, org_id, amount, forfeited, status, created_at,"
                         " updated_at) VALUES (?, ?, ?, ?, 'pending', 0, 0)", (t.purchase_id, t.org_id, t.amount,
                                                                             t.forfeited))

        new, terms = await ledger.refund(1, "p", unit=CENT, record=record_refund)
        assert new and (terms.amount, terms.forfeited) == (65 * CENT, 0)  # the bonus went to the pool with it
        assert ledger.book.balance(ORG) == 0 and ledger.book.balance(POOL) == 50 * CENT

        clock.advance(31 * DAY_MS / 1000)
        assert await ledger.expire_lots() == 45 * CENT   # the pool's bonus and paid credit, not its grant
        assert live(ledger, POOL) == [("grant", 5 * CENT, None, None)]

    ledger = run_ledger(tmp_path / "ledger.db", clock, main)
    assert ledger.book.balance("system:refunds") == 65 * CENT
    assert ledger.book.balance("system:expired") == 45 * CENT
    with closing(sqlite3.connect(tmp_path / "ledger.db")) as conn:
        moved = conn.execute("SELECT e.reference, l.kind, e.amount FROM entries e JOIN lots l ON l.entry_id = e.id"
                             " WHERE e.kind = 'transfer' ORDER BY e.id").fetchall()
    # One entry per lot drawn, each naming the organization's lot it came from.
    assert [(kind, amount) for _, kind, amount in moved] == [("bonus", 10 * CENT), ("grant", 5 * CENT),
                                                              ("purchase", 35 * CENT)]
    assert all(ref.startswith("transfer:lot:") and ref.endswith(":t1") for ref, _, _ in moved)


def test_a_transfer_is_bounded_by_what_is_available_and_happens_once(tmp_path: Path) -> None:
    """Open holds on a pool stay covered: a transfer out of it may take only what they leave.
    A replay of the reference with the same terms moves nothing and returns the first
    transfer; with other terms it is a Conflict."""
    clock = FakeClock()

    async def main(ledger: Ledger) -> None:
        await ledger.grant(1, 100 * CENT, "g")
        await ledger.transfer(1, ORG, POOL, 60 * CENT, "t1")
        hold = ledger.book.hold("r", POOL, 45 * CENT)
        with pytest.raises(InsufficientCredits) as refused:
            await ledger.transfer(1, POOL, OTHER_POOL, 16 * CENT, "t2")
        assert orjson.dumps(refused.value.metadata) == b'{"available":0.15}'
        assert "t2" not in ledger.transfers
        new, first = await ledger.transfer(1, POOL, OTHER_POOL, 15 * CENT, "t2")
        assert new and ledger.book.available(POOL) == 0
        balances = dict(ledger.book.balances)
        again, same = await ledger.transfer(1, POOL, OTHER_POOL, 15 * CENT, "t2")
        assert (again, same) == (False, first)
        for other in ((POOL, OTHER_POOL, 14 * CENT), (OTHER_POOL, POOL, 15 * CENT), (ORG, OTHER_POOL, 15 * CENT)):
            with pytest.raises(Conflict):
                await ledger.transfer(1, *other, "t2")
        assert ledger.book.balances == balances
        ledger.book.release(hold)
        assert (ledger.book.balance(ORG), ledger.book.balance(POOL), ledger.book.balance(OTHER_POOL)) == (
            40 * CENT, 45 * CENT, 15 * CENT)

    run_ledger(tmp_path / "ledger.db", clock, main)
