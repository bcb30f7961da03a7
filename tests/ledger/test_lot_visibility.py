"""Credit lots become spendable when the book applies them, and a restart must agree.

A grant's, purchase's or failed refund's lots join the book only after their entries have
committed. A charge settled while such an entry is committing cannot draw from its lots in
memory, yet gets a higher entry id; replaying by id alone would let it. Each lot's
`visible_after` mark (the highest entry id when it joined the book) keeps the replay in the
book's order. Every test here runs the real Ledger on a real SQLite store and its
group-commit writer, with the race made deterministic: the credit is submitted, the loop
yields once (the writer cannot resolve it within that turn), then the charge settles."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from farebox.clock import FakeClock
from farebox.ledger.book import PROVISIONAL_LOT, Book, Settlement
from farebox.ledger.entries import GRANTS, Entry, wallet, workspace_wallet
from farebox.ledger.ledger import Ledger, RefundTerms
from farebox.ledger.lots import Lots, replay
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

T = TypeVar("T")
W = wallet(1)
POOL = workspace_wallet(1, 1)
CENT = 10**7
DAY_MS = 86_400_000


def generation(gid: str, charged: int) -> dict[str, Any]:
    return {"id": gid, "org_id": 1, "workspace_id": None, "key_hash": "k", "created_at_ms": 1, "model": "m",
            "provider_name": "p", "total_cost_nanos": charged, "charged_nanos": charged, "tokens_prompt": 1,
            "tokens_completion": 1, "streamed": False, "cancelled": False, "finish_reason": "stop"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "x.db")

    def org(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
        conn.execute("INSERT INTO workspaces (id, org_id, name, created_at, pooled) VALUES (1, 1, 'w', 0, 1)")
        ops.ensure_account(conn, W, 1, "wallet")
        ops.ensure_account(conn, POOL, 1, "wallet")

    GroupWriter(s.writer_conn).run_sync(org)
    yield s
    s.close()


def make_ledger(store: Store, clock: FakeClock) -> Ledger:
    return Ledger(Book(clock, 900.0), GroupWriter(store.writer_conn), clock, sweep_interval_s=3600)


def run(ledger: Ledger, body: Awaitable[T]) -> T:
    """Run `body` with the ledger's writer going; every write submitted (the lots' marks
    too) is committed when this returns."""
    async def main() -> T:
        try:
            return await body
        finally:
            await ledger.writer.submit(lambda conn: None)  # FIFO: everything before it has committed

    ledger.writer.start()
    try:
        return asyncio.run(main())
    finally:
        ledger.writer.stop()


def charge(ledger: Ledger, account: str, gid: str, amount: int) -> tuple[Settlement, Awaitable[None]]:
    """Settle a charge in the book at once, as the relay does; awaiting the commit returned
    submits it without yielding first, as the relay's `await ledger.commit(...)` does."""
    hold = ledger.book.hold(gid, account, amount)
    s = ledger.book.settle(hold, amount, reference=f"charge:{gid}", created_at=1, org_id=1, key_hash="k",
                           generation_id=gid)
    return s, ledger.commit(s, generation(gid, amount))


async def race(ledger: Ledger, credit: Awaitable[Any], account: str, gid: str, amount: int) -> Settlement:
    """Submit `credit`, then settle a charge on `account` while it commits."""
    lots_before = set(ledger.book.lots[account].by_id)
    pending = asyncio.ensure_future(credit)
    await asyncio.sleep(0)  # the credit is submitted; its result reaches the loop a turn later at the earliest
    assert set(ledger.book.lots[account].by_id) == lots_before, "the credit's lots were applied before the charge"
    s, commit = charge(ledger, account, gid, amount)
    await commit
    await pending
    assert set(ledger.book.lots[account].by_id) > lots_before
    return s


def lots_of(lots: Lots) -> tuple[dict[int, tuple[str, int, int]], list[int]]:
    return {i: (x.kind, x.amount, x.remaining) for i, x in lots.by_id.items()}, [x.id for x in lots.live]


def assert_restart_agrees(store: Store, live: Ledger, clock: FakeClock) -> None:
    """A ledger loaded from the store has exactly the live book's lots (ids, remainders, draw
    order), and verify passes."""
    fresh = make_ledger(store, clock)
    fresh.load(store.reader_conn)
    assert set(fresh.book.lots) == set(live.book.lots)
    for account, lots in live.book.lots.items():
        assert lots_of(fresh.book.lots[account]) == lots_of(lots), account
    report = verify_store(store.reader_conn)
    assert report.ok, report.violations


def replay_by_id_alone(store: Store) -> dict[str, Lots]:
    """The replay without the marks: what a restart rebuilt before migration 6."""
    entries, stored, _ = ops.wallet_history(store.reader_conn)
    return replay(entries, stored)


def marks(store: Store) -> dict[int, int | None]:
    return dict(store.reader_conn.execute("SELECT entry_id, visible_after FROM lots"))


def charge_id(store: Store, gid: str) -> int:
    return store.reader_conn.execute("SELECT id FROM entries WHERE reference = ?", (f"charge:{gid}",)).fetchone()[0]


def test_a_grant_committing_while_a_charge_settles_replays_as_the_book_saw_it(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)

    async def scenario() -> tuple[Settlement, Settlement]:
        await ledger.purchase(1, "p1", method="card", credits=100 * CENT, fee=0, bonus=0, expires_at_ms=None)
        # A promotional lot that will expire: first in the draw order once it is there.
        grant = ledger.grant(1, 50 * CENT, "g", expires_at_ms=clock.now_ms() + DAY_MS)
        first = await race(ledger, grant, W, "r1", 30 * CENT)
        second, commit = charge(ledger, W, "r2", 20 * CENT)  # the grant's lot is in the book now
        await commit
        return first, second

    first, second = run(ledger, scenario())
    purchase_lot, grant_lot = sorted(ledger.book.lots[W].by_id)
    assert first.draws == [(purchase_lot, 30 * CENT)]      # the grant's lot was not there yet
    assert second.draws == [(grant_lot, 20 * CENT)]        # now it is, and it comes first
    assert_restart_agrees(store, ledger, clock)
    assert marks(store) == {purchase_lot: purchase_lot, grant_lot: charge_id(store, "r1")}
    # Without the mark, the replay would have the first charge draw from the grant.
    assert lots_of(replay_by_id_alone(store)[W]) != lots_of(ledger.book.lots[W])


def test_a_grant_whose_lot_appears_after_the_last_entry_joins_at_the_end(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)

    async def scenario() -> Settlement:
        await ledger.grant(1, 100 * CENT, "first")
        return await race(ledger, ledger.grant(1, 50 * CENT, "g", expires_at_ms=clock.now_ms() + DAY_MS), W, "r", 30 * CENT)

    s = run(ledger, scenario())
    first, second = sorted(ledger.book.lots[W].by_id)
    assert s.draws == [(first, 30 * CENT)]
    assert_restart_agrees(store, ledger, clock)
    assert marks(store)[second] == charge_id(store, "r")  # the charge is the last entry
    assert ledger.book.lots[W].by_id[second].remaining == 50 * CENT


def test_a_purchase_committing_while_a_charge_settles_replays_as_the_book_saw_it(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)

    async def scenario() -> Settlement:
        await ledger.grant(1, 100 * CENT, "old")  # promotional, never expires
        # Its bonus expires, so it comes before the grant in the draw order once it is there.
        purchase = ledger.purchase(1, "p", method="card", credits=40 * CENT, fee=CENT, bonus=20 * CENT,
                                   expires_at_ms=clock.now_ms() + DAY_MS, tax=CENT)
        return await race(ledger, purchase, W, "r", 30 * CENT)

    s = run(ledger, scenario())
    grant_lot, credit_lot, bonus_lot = sorted(ledger.book.lots[W].by_id)
    assert s.draws == [(grant_lot, 30 * CENT)]
    r = charge_id(store, "r")
    assert_restart_agrees(store, ledger, clock)
    assert marks(store) == {grant_lot: grant_lot, credit_lot: r, bonus_lot: r}  # one mark for both lots
    assert lots_of(replay_by_id_alone(store)[W]) != lots_of(ledger.book.lots[W])


def test_a_failed_refund_restored_while_a_charge_settles_replays_as_the_book_saw_it(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)
    expires = clock.now_ms() + DAY_MS

    def record(conn: sqlite3.Connection, t: RefundTerms) -> None:
        conn.execute("INSERT INTO refunds (purchase_id, org_id, amount, forfeited, status, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, 'pending', 0, 0)", (t.purchase_id, t.org_id, t.amount, t.forfeited))

    def failed(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE refunds SET status = 'failed' WHERE purchase_id = 'p1'")

    async def scenario() -> Settlement:
        await ledger.purchase(1, "p1", method="card", credits=40 * CENT, fee=0, bonus=20 * CENT, expires_at_ms=expires)
        await ledger.purchase(1, "p2", method="card", credits=100 * CENT, fee=0, bonus=0, expires_at_ms=None)
        new, terms = await ledger.refund(1, "p1", unit=CENT, record=record)
        assert new and (terms.amount, terms.forfeited) == (40 * CENT, 20 * CENT)
        # The bonus coming back is promotional: first in the draw order once it is there.
        return await race(ledger, ledger.restore_refund(terms, expires, failed), W, "r", 30 * CENT)

    s = run(ledger, scenario())
    live = ledger.book.lots[W]
    p2_lot = next(i for i, x in live.by_id.items() if x.purchase == "p2")
    assert s.draws == [(p2_lot, 30 * CENT)]
    restored = sorted(i for i, x in live.by_id.items() if x.purchase == "p1" and x.remaining)
    assert [live.by_id[i].kind for i in restored] == ["purchase", "bonus"]
    assert_restart_agrees(store, ledger, clock)
    assert {marks(store)[i] for i in restored} == {charge_id(store, "r")}
    assert lots_of(replay_by_id_alone(store)[W]) != lots_of(ledger.book.lots[W])


def test_a_charge_drawing_a_transfers_lot_before_it_commits_replays_as_the_book_saw_it(store: Store) -> None:
    # A transfer's receiving lot is in the book before its entry is submitted, so a charge
    # settled while it commits may draw from it, and is submitted after it: replay by id
    # agrees without any mark.
    clock = FakeClock()
    ledger = make_ledger(store, clock)

    async def scenario() -> Settlement:
        await ledger.grant(1, 100 * CENT, "soon", expires_at_ms=clock.now_ms() + DAY_MS)
        await ledger.grant(1, 100 * CENT, "never")
        await ledger.transfer(1, W, POOL, 50 * CENT, "t0")             # the pool's older lot (soon)
        transfer = asyncio.ensure_future(ledger.transfer(1, W, POOL, 80 * CENT, "t1"))
        await asyncio.sleep(0)  # its lots are in the pool's book, under provisional ids
        assert any(i >= PROVISIONAL_LOT for i in ledger.book.lots[POOL].by_id)
        s, commit = charge(ledger, POOL, "r", 60 * CENT)
        await commit
        await transfer
        return s

    s = run(ledger, scenario())
    pool = ledger.book.lots[POOL]
    # The pool's older lot, then one the transfer brought, drawn before its entry was stored.
    assert [a for _, a in s.draws] == [50 * CENT, 10 * CENT] and s.draws[1][0] >= PROVISIONAL_LOT
    assert all(v is None for i, v in marks(store).items() if i in pool.by_id)  # transfers are never marked
    assert_restart_agrees(store, ledger, clock)


def test_replay_lets_no_entry_draw_a_lot_before_it_was_visible() -> None:
    # Entry 1 credits a lot visible only after entry 3; entry 2 is a charge it cannot pay,
    # entry 3 another wallet's; entry 4 draws it.
    credit = (1, GRANTS, W, 10, 0, "grant:a")
    charge_before = (2, W, "system:revenue", 5, 0, "charge:x")
    other = (3, GRANTS, wallet(2), 7, 0, "grant:b")
    charge_after = (4, W, "system:revenue", 4, 0, "charge:y")
    stored = {1: ("grant", None, None), 3: ("grant", None, None)}
    with pytest.raises(AssertionError, match="more than the lots hold"):
        replay([credit, charge_before], stored, {1: 3})
    assert replay([credit, charge_before], stored)[W].total() == 5   # without the mark: live at once
    wallets = replay([credit, other, charge_after], stored, {1: 3})
    assert (wallets[W].total(), wallets[wallet(2)].total()) == (6, 7)
    assert replay([credit], stored, {1: 3})[W].total() == 10          # joins after the last entry


def test_replay_refuses_an_entry_naming_a_lot_not_yet_visible() -> None:
    credit = (1, GRANTS, W, 10, 0, "grant:a")
    expiry = (2, W, "system:expired", 10, 0, "expire:lot:1:0")
    with pytest.raises(AssertionError, match="takes from lot 1"):
        replay([credit, expiry], {1: ("grant", 5, None)}, {1: 2})
    assert replay([credit, expiry], {1: ("grant", 5, None)}, {1: 1})[W].total() == 0


def test_verify_replays_by_the_same_rule(store: Store) -> None:
    # A charge stored as drawing credit its lot's mark says it could not have seen: balances,
    # floors and generations are all fine; only the lot replay catches it.
    writer = GroupWriter(store.writer_conn)
    _, grant = writer.run_sync(lambda conn: ops.grant(conn, Entry("grant", GRANTS, W, 10 * CENT, "grant:a", 1, 1)))
    s_entry = Entry("charge", W, "system:revenue", CENT, "charge:g", 1, 1, "k", "g")
    writer.run_sync(lambda conn: ops.settle(conn, [s_entry], generation("g", CENT)))
    assert verify_store(store.reader_conn).ok
    writer.run_sync(lambda conn: conn.execute("UPDATE lots SET visible_after = ? WHERE entry_id = ?",
                                              (charge_id(store, "g"), grant.id)))
    report = verify_store(store.reader_conn)
    assert report.checks == {**report.checks, "lots": 1}
    assert [v["check"] for v in report.violations] == ["lots"]


def test_a_mark_that_cannot_be_written_fails_nothing_and_is_logged(store: Store,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # The database here refuses every update of lots, so the mark's write fails.
    GroupWriter(store.writer_conn).run_sync(lambda conn: [conn.execute(sql) for sql in (
        "DROP TRIGGER lots_append_only_update",
        "CREATE TRIGGER lots_append_only_update BEFORE UPDATE ON lots BEGIN SELECT RAISE(ABORT, 'no marks'); END")])
    clock = FakeClock()
    ledger = make_ledger(store, clock)

    async def scenario() -> tuple[bool, Entry]:
        granted = await ledger.grant(1, 10 * CENT, "g")
        _, commit = charge(ledger, W, "r", CENT)   # the credit is spendable at once all the same
        await commit
        return granted

    new, stored = run(ledger, scenario())
    assert new and ledger.book.balance(W) == 9 * CENT
    assert marks(store) == {stored.id: None}
    assert any("could not record when lots" in r.getMessage() and "no marks" in r.getMessage()
               for r in caplog.records if r.name == "farebox.ledger")
    assert_restart_agrees(store, ledger, clock)
