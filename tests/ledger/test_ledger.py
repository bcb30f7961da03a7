"""The Ledger: grants through the writer (idempotent), commits that revert the book on
failure, loading the book from the store, and the expiry sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farebox.clock import FakeClock
from farebox.errors import Conflict, InternalError
from farebox.ledger.book import Book, Hold, Settlement
from farebox.ledger.caps import key_cap
from farebox.ledger.entries import BONUSES, EXPIRED, FEES, GRANTS, PAYMENTS, REVENUE, wallet
from farebox.ledger.ledger import Ledger
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.journal import Journal
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

W = wallet(1)
TIMEOUT = 900.0


def generation(gid: str, total: int, charged: int) -> dict[str, Any]:
    return {"id": gid, "org_id": 1, "workspace_id": None, "key_hash": "k", "created_at_ms": 1, "model": "m",
            "provider_name": "p", "total_cost_nanos": total, "charged_nanos": charged, "tokens_prompt": 1,
            "tokens_completion": 1, "streamed": False, "cancelled": False, "finish_reason": "stop"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "x.db")

    def org(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
        ops.ensure_account(conn, W, 1, "wallet")

    GroupWriter(s.writer_conn).run_sync(org)
    yield s
    s.close()


def make_ledger(store: Store, clock: FakeClock | None = None, inline: bool = True) -> Ledger:
    clock = clock or FakeClock()
    return Ledger(Book(clock, TIMEOUT), GroupWriter(store.writer_conn, inline=inline), clock, sweep_interval_s=0.001)


def settle(book: Book, hold: Hold, cost: int, reference: str, generation_id: str) -> Settlement:
    """Settle as the relay does, for organization 1 and key "k"."""
    return book.settle(hold, cost, reference=reference, created_at=1, org_id=1, key_hash="k",
                       generation_id=generation_id)


def stored_balances(store: Store) -> dict[str, int]:
    return dict(store.reader_conn.execute("SELECT id, balance FROM accounts"))


def test_grant_is_idempotent_on_its_reference(store: Store) -> None:
    ledger = make_ledger(store)

    async def main() -> None:
        ledger.writer.start()
        try:
            new, first = await ledger.grant(1, 5000, "pay-1", memo="top-up")
            assert new and first.amount == 5000 and first.reference == "grant:pay-1"
            new, again = await ledger.grant(1, 5000, "pay-1", memo="top-up")
            assert not new and again.amount == 5000
            with pytest.raises(Conflict):
                await ledger.grant(1, 6000, "pay-1")
            # Concurrent replays: exactly one moves money.
            results = await asyncio.gather(*(ledger.grant(1, 100, "pay-2") for _ in range(10)))
            assert sum(new for new, _ in results) == 1
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert ledger.book.balance(W) == 5100 == stored_balances(store)[W]
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 2


def test_commit_makes_a_settlement_durable(store: Store) -> None:
    ledger = make_ledger(store)
    book = ledger.book

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            h = book.hold("g1", W, 400)
            s = settle(book, h, 500, "charge:g1", "g1")
            await ledger.commit(s, generation("g1", 500, s.charged))
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert stored_balances(store) == {a: book.balance(a) for a in stored_balances(store)}
    assert verify_store(store.reader_conn).ok


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "queued"])
def test_a_failed_commit_reverts_the_book(store: Store, inline: bool) -> None:
    ledger = make_ledger(store, inline=inline)
    book = ledger.book
    cap = key_cap(limit=1000)

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            await ledger.writer.submit(lambda conn: None)   # the grant's lot mark, queued after it
            s1 = settle(book, book.hold("g1", W, 100, (cap,)), 100, "charge:g1", "g1")
            await ledger.commit(s1, generation("g1", 100, 100))
            before = dict(book.balances)
            # A second request reusing the generation id: its commit fails.
            s2 = settle(book, book.hold("g1", W, 300, (cap,)), 300, "charge:g1-b", "g1")
            assert book.balance(W) == 600
            with pytest.raises(InternalError):
                await ledger.commit(s2, generation("g1", 300, 300))
            assert book.balances == before
            assert cap.usage.total == 100 and cap.held == 0
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert stored_balances(store)[W] == 900 == book.balance(W)
    assert ledger.writer.inlined == (2 if inline else 0)   # the two charges; grants never inline


def test_a_charge_commits_inline_only_when_no_other_request_holds_credit(store: Store) -> None:
    """A lone request has nobody to batch with, so its charge commits on the event loop's
    thread; while another hold is open, another request may soon want the same batch."""
    ledger = make_ledger(store)
    book = ledger.book
    loop_thread = threading.get_ident()
    committed_on: list[int] = []

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            await ledger.writer.submit(lambda conn: None)   # the grant's lot mark, queued after it
            h1, h2 = book.hold("g1", W, 100), book.hold("g2", W, 100)
            s1 = settle(book, h1, 100, "charge:g1", "g1")
            await ledger.commit(s1, generation("g1", 100, 100))    # g2 still holds: queued
            assert ledger.writer.inlined == 0
            s2 = settle(book, h2, 50, "charge:g2", "g2")
            await ledger.commit(s2, generation("g2", 50, 50))     # alone now: inline
            assert ledger.writer.inlined == 1
            # Where the writer ran each: the thread of the op submitted next tells.
            committed_on.append(await ledger.writer.submit(lambda conn: threading.get_ident(), inline=True))
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert committed_on == [loop_thread]
    assert stored_balances(store)[W] == 850 == book.balance(W)
    assert verify_store(store.reader_conn).ok


def test_a_charge_submitted_after_the_writer_stopped_is_not_billed(store: Store) -> None:
    ledger = make_ledger(store)
    book = ledger.book

    async def main() -> None:
        ledger.writer.start()
        await ledger.grant(1, 1000, "a")
        await ledger.writer.submit(lambda conn: None)
        hold = book.hold("g1", W, 100)
        ledger.writer.stop()                                  # shutting down
        with pytest.raises(InternalError):
            await ledger.commit(settle(book, hold, 100, "charge:g1", "g1"), generation("g1", 100, 100))
        assert book.balance(W) == 1000 and not book.holds

    asyncio.run(main())
    assert stored_balances(store)[W] == 1000


def journaled_ledger(store: Store, journal_file: Path) -> Ledger:
    clock = FakeClock()
    writer = GroupWriter(store.writer_conn)
    return Ledger(Book(clock, TIMEOUT), writer, clock, sweep_interval_s=0.001, journal=Journal(journal_file, writer, clock))


def test_a_lone_charge_is_journaled_and_returns_before_it_commits(store: Store, tmp_path: Path) -> None:
    """With the settlement journal, a lone request's commit is one append: it returns while
    the writer is still busy, and the writer commits the charge behind it. While another
    request holds credit or waits for its own commit, the charge joins the group commit."""
    ledger = journaled_ledger(store, tmp_path / "journal")
    book, writer = ledger.book, ledger.writer
    assert ledger.journal is not None
    gate = threading.Event()

    async def main() -> None:
        writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            await writer.submit(lambda conn: None)
            h1, h2 = book.hold("g1", W, 100), book.hold("g2", W, 100)
            gate_op = writer.submit(lambda conn: gate.wait(TIMEOUT))    # holds the writer up
            first = asyncio.ensure_future(
                ledger.commit(settle(book, h1, 100, "charge:g1", "g1"), generation("g1", 100, 100)))
            await asyncio.sleep(0)                                       # g2 holds: the group commit
            # No hold left, but g1 waits for its commit: g2 joins the same batch.
            second = asyncio.ensure_future(
                ledger.commit(settle(book, h2, 50, "charge:g2", "g2"), generation("g2", 50, 50)))
            await asyncio.sleep(0.05)
            assert not first.done() and not second.done()
            assert ledger.journal.records == 0 and writer.posts == 0
            gate.set()
            await asyncio.gather(gate_op, first, second)
            h3 = book.hold("g3", W, 100)
            # Alone: journaled, and back before SQLite has it, even with the writer busy (here
            # held up by another connection's write lock).
            other = sqlite3.connect(store.path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            await ledger.commit(settle(book, h3, 25, "charge:g3", "g3"), generation("g3", 25, 25))
            assert ledger.journal.records == 1 and writer.posts == 1 and writer.posts_done == 0
            assert book.balance(W) == 825
            assert stored_balances(store)[W] == 850                      # not committed yet
            other.execute("ROLLBACK")
            other.close()
            await writer.caught_up()
        finally:
            writer.stop()

    asyncio.run(main())
    assert stored_balances(store)[W] == 825 == book.balance(W)
    assert writer.posts_done == 1 and not writer.posts_failed
    assert verify_store(store.reader_conn).ok


@pytest.mark.parametrize("why", ["disk full", "unencodable record"])
def test_a_charge_the_journal_cannot_write_is_not_billed(store: Store, tmp_path: Path, why: str) -> None:
    ledger = journaled_ledger(store, Path("/dev/full") if why == "disk full" else tmp_path / "journal")
    book = ledger.book
    record = generation("g1", 100, 100)
    if why == "unencodable record":
        record["huge"] = 2**70   # beyond what JSON in this store carries (64 bits)

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            await ledger.writer.submit(lambda conn: None)
            s = settle(book, book.hold("g1", W, 100), 100, "charge:g1", "g1")
            with pytest.raises(InternalError):
                await ledger.commit(s, record)
            assert book.balance(W) == 1000 and not book.holds
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert stored_balances(store)[W] == 1000
    assert ledger.writer.posts == 0


def test_load_rebuilds_the_book(store: Store) -> None:
    ledger = make_ledger(store)

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            s = settle(ledger.book, ledger.book.hold("g", W, 300), 250, "charge:g", "g")
            await ledger.commit(s, generation("g", 250, 250))
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    fresh = make_ledger(store)
    fresh.load(store.reader_conn)
    assert fresh.book.balances == ledger.book.balances
    assert fresh.book.inflow == {W: 1000, REVENUE: 250}
    assert fresh.book.outflow == {GRANTS: 1000, W: 250}
    assert fresh.book.available(W) == 750


def test_load_rebuilds_the_lots_exactly(store: Store) -> None:
    """A trial lot that expires, a grant that never does: a restart replays the wallet's
    entries and finds each lot where the live book left it."""
    ledger = make_ledger(store)

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            await ledger.grant(1, 200, "t", kind="trial", expires_at_ms=ledger.clock.now_ms() + 86_400_000)
            s = settle(ledger.book, ledger.book.hold("g", W, 300), 250, "charge:g", "g")
            await ledger.commit(s, generation("g", 250, 250))
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    live = [(lot.id, lot.kind, lot.remaining, lot.expires_at_ms) for lot in ledger.book.lots[W].live]
    assert [(kind, remaining) for _, kind, remaining, _ in live] == [("grant", 950)]  # trial spent first
    fresh = make_ledger(store)
    fresh.load(store.reader_conn)
    assert [(lot.id, lot.kind, lot.remaining, lot.expires_at_ms) for lot in fresh.book.lots[W].live] == live
    assert fresh.book.lots[W].total() == fresh.book.balance(W) == 950
    assert verify_store(store.reader_conn).ok


def test_sweeper_expires_old_holds(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            h = ledger.book.hold("g", W, 800)
            ledger.start()
            clock.advance(TIMEOUT + 1)
            for _ in range(10_000):  # a hang guard, not a timing assertion
                if ledger.expired_holds:
                    break
                await asyncio.sleep(0.001)
            await ledger.stop()
            assert ledger.expired_holds == 1 and h.expired
            assert ledger.book.available(W) == 1000
        finally:
            ledger.writer.stop()

    asyncio.run(main())


# -- cancellation while a write is in flight ----------------------------------------------

async def _cancel_while_queued(ledger: Ledger, coro: Any) -> None:
    """Start `coro`, let it submit its write while the writer is held, cancel it (as a
    client disconnect does), then let the writer run everything that was queued."""
    gate = threading.Event()
    blocker = ledger.writer.submit(lambda conn: gate.wait(60))
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)  # the task runs up to its await: its write is queued
    task.cancel()
    gate.set()
    await blocker
    await ledger.writer.submit(lambda conn: None)  # FIFO: everything before it has been committed
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_a_cancelled_commit_that_fails_still_reverts_the_book(store: Store) -> None:
    ledger = make_ledger(store)
    book = ledger.book

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 1000, "a")
            s1 = settle(book, book.hold("g1", W, 100), 100, "charge:g1", "g1")
            await ledger.commit(s1, generation("g1", 100, 100))
            # Its commit will fail: the generation id is taken.
            s2 = settle(book, book.hold("g2", W, 300), 300, "charge:g2", "g1")
            await _cancel_while_queued(ledger, ledger.commit(s2, generation("g1", 300, 300)))
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert stored_balances(store)[W] == 900
    assert book.balance(W) == stored_balances(store)[W]


def test_a_cancelled_grant_that_commits_reaches_the_book(store: Store) -> None:
    ledger = make_ledger(store)

    async def main() -> None:
        ledger.writer.start()
        try:
            await _cancel_while_queued(ledger, ledger.grant(1, 1000, "a"))
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert stored_balances(store)[W] == 1000
    assert ledger.book.balance(W) == 1000


DAY_MS = 86_400_000


def test_expired_lots_move_to_system_expired_and_survive_a_restart(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)
    book = ledger.book

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 300, "trial", kind="trial", expires_at_ms=clock.now_ms() + DAY_MS)
            await ledger.grant(1, 1000, "paid")
            s = settle(book, book.hold("g", W, 100), 100, "charge:g", "g")  # the trial lot pays
            await ledger.commit(s, generation("g", 100, 100))
            assert await ledger.expire_lots() == 0  # not yet
            clock.advance(DAY_MS / 1000)
            assert await ledger.expire_lots() == 200
            assert await ledger.expire_lots() == 0  # once
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert book.balance(W) == book.lots[W].total() == 1000
    assert book.balance(EXPIRED) == 200
    assert stored_balances(store)[EXPIRED] == 200
    report = verify_store(store.reader_conn)
    assert report.ok, report.violations
    fresh = make_ledger(store, clock)
    fresh.load(store.reader_conn)
    assert [(lot.kind, lot.remaining) for lot in fresh.book.lots[W].live] == [("grant", 1000)]
    assert fresh.book.expiring(clock.now_ms() + 10 * DAY_MS) == []


def test_an_expiry_waits_for_holds_placed_before_it(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)
    book = ledger.book

    async def main() -> None:
        ledger.writer.start()
        try:
            await ledger.grant(1, 100, "trial", kind="trial", expires_at_ms=clock.now_ms() + DAY_MS)
            hold = book.hold("g", W, 80)  # reserved before the expiry
            clock.advance(DAY_MS / 1000)
            assert await ledger.expire_lots() == 20  # only what the hold leaves
            s = settle(book, hold, 50, "charge:g", "g")
            await ledger.commit(s, generation("g", 50, 50))
            assert await ledger.expire_lots() == 30  # the rest, under its own reference
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert book.balance(W) == 0 and book.balance(EXPIRED) == 50
    refs = [r for (r,) in store.reader_conn.execute("SELECT reference FROM entries WHERE kind = 'expiry' ORDER BY id")]
    assert len(refs) == 2 and len(set(refs)) == 2 and all(r.startswith("expire:lot:") for r in refs)
    assert verify_store(store.reader_conn).ok


def test_a_purchase_credits_lots_books_the_fee_apart_and_replays_idempotently(store: Store) -> None:
    clock = FakeClock()
    ledger = make_ledger(store, clock)
    book = ledger.book

    async def main() -> None:
        ledger.writer.start()
        try:
            new, stored = await ledger.purchase(1, "p1", method="card", credits=100_000, fee=5_500, bonus=15_000,
                                                expires_at_ms=clock.now_ms() + 365 * DAY_MS)
            assert new and [e.kind for e in stored] == ["purchase", "bonus"]
            again, _ = await ledger.purchase(1, "p1", method="card", credits=100_000, fee=5_500, bonus=15_000,
                                             expires_at_ms=None)
            assert not again
            with pytest.raises(Conflict):
                await ledger.purchase(1, "p1", method="card", credits=1, fee=0, bonus=0, expires_at_ms=None)
            s = settle(book, book.hold("g", W, 20_000), 20_000, "charge:g", "g")
            await ledger.commit(s, generation("g", 20_000, 20_000))
            assert s.draws == [(stored[1].id, 15_000), (stored[0].id, 5_000)]  # the bonus first
        finally:
            ledger.writer.stop()

    asyncio.run(main())
    assert book.balance(W) == 95_000 and book.balance(FEES) == 5_500
    assert book.balance(PAYMENTS) == -105_500 and book.balance(BONUSES) == -15_000
    assert stored_balances(store)[FEES] == 5_500
    row = store.reader_conn.execute("SELECT method, credits, fee, bonus, status FROM purchases").fetchall()
    assert row == [("card", 100_000, 5_500, 15_000, "paid")]
    assert verify_store(store.reader_conn).ok
    fresh = make_ledger(store, clock)
    fresh.load(store.reader_conn)
    assert [(lot.kind, lot.remaining, lot.purchase) for lot in fresh.book.lots[W].live] == [("purchase", 95_000, "p1")]
