"""The ledger: the only code that moves money. It joins the in-memory book (balances and
holds, decided synchronously on the event loop) to durable entries (committed through the
group-commit writer)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from typing import Any

from farebox.clock import Clock
from farebox.errors import Conflict, InsufficientCredits, InternalError
from farebox.ledger.book import Book, Settlement
from farebox.ledger.entries import BONUSES, EXPIRED, FEES, GRANTS, PAYMENTS, REFUNDS, TAXES, Entry, wallet
from farebox.ledger.lots import Lot, replay
from farebox.money import usd_json, usd_text
from farebox.store import sqlite as ops
from farebox.store.journal import Journal
from farebox.store.writer import GroupWriter

log = logging.getLogger("farebox.ledger")


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    reference: str
    org_id: int
    source: str      # wallet account
    target: str      # wallet account
    amount: int
    memo: str | None
    created_by: str | None
    created_at: int  # unix ms


@dataclasses.dataclass(frozen=True, slots=True)
class RefundTerms:
    purchase_id: str
    org_id: int
    amount: int      # nano-dollars paid back to the buyer
    forfeited: int   # nano-dollars of the purchase's bonus taken back
    status: str      # pending | succeeded | failed


class Ledger:
    def __init__(self, book: Book, writer: GroupWriter, clock: Clock, sweep_interval_s: float,
                 journal: Journal | None = None) -> None:
        self.book, self.writer, self.clock = book, writer, clock
        self.journal = journal   # where a lone request's charge is made durable (store/journal.py)
        self._waiting = 0        # charges waiting for their group commit
        self.sweep_interval_s = sweep_interval_s
        self.expired_holds = 0
        self.refunds: dict[str, RefundTerms] = {}   # purchase id -> its refund, decided in memory first
        self.transfers: dict[str, Transfer] = {}    # reference -> transfer, decided in memory first
        self.purchased: dict[int, int] = {}         # org id -> all-time purchased credit (the free tier reads it)
        self._sweeper: asyncio.Task[None] | None = None
        # Operations that name the lots they take from (expiry, refunds, transfers) run one at a
        # time: a transfer's receiving lots carry provisional ids until its commit, and no entry
        # may name a lot by an id that is not the stored one.
        self._naming = asyncio.Lock()

    def load(self, conn: sqlite3.Connection) -> None:
        balances = dict(conn.execute("SELECT id, balance FROM accounts"))
        inflow = dict(conn.execute("SELECT to_account, SUM(amount) FROM entries GROUP BY to_account"))
        outflow = dict(conn.execute("SELECT from_account, SUM(amount) FROM entries GROUP BY from_account"))
        spent = dict(conn.execute("SELECT from_account, SUM(amount) FROM entries WHERE kind = 'charge'"
                                  " GROUP BY from_account"))
        self.book.load(balances, inflow, outflow, spent)
        self.book.set_lots(replay(*ops.wallet_history(conn)))
        self.refunds = {pid: RefundTerms(pid, org, amount, forfeited, status) for pid, org, amount, forfeited, status
                        in conn.execute("SELECT purchase_id, org_id, amount, forfeited, status FROM refunds")}
        self.purchased = dict(conn.execute("SELECT org_id, SUM(credits) FROM purchases GROUP BY org_id"))
        self.transfers = {row[0]: Transfer(*row) for row in conn.execute(
            "SELECT reference, org_id, from_account, to_account, amount, memo, created_by, created_at FROM transfers")}

    async def grant(self, org_id: int, amount: int, reference: str, memo: str | None = None, *,
                    kind: str = "grant", expires_at_ms: int | None = None) -> tuple[bool, Entry]:
        """Credit an organization's wallet as a lot of `kind` expiring at `expires_at_ms`
        (None: never). Idempotent on `reference`: a replay returns the first grant and moves
        nothing; a replay with different terms is a conflict."""
        assert amount > 0 and kind in ("grant", "trial")
        entry = Entry(kind, GRANTS, wallet(org_id), amount, f"{kind}:{reference}", self.clock.now_ms(),
                      org_id, memo=memo)
        future = self.writer.submit(lambda conn: ops.grant(conn, entry, expires_at_ms))

        def applied(f: asyncio.Future[tuple[bool, Entry]]) -> None:
            # In a callback, not after the await: the book must follow the database even
            # if the task that asked for the grant is cancelled meanwhile.
            if not f.cancelled() and f.exception() is None and f.result()[0]:
                stored = f.result()[1]
                assert stored.id is not None
                self.book.apply(stored, Lot(stored.id, kind, stored.amount, stored.created_at, expires_at_ms))
                self._mark_visible([stored.id])

        future.add_done_callback(applied)
        new, stored = await asyncio.shield(future)
        if (stored.to_account, stored.amount, stored.kind) != (entry.to_account, entry.amount, entry.kind):
            raise Conflict(f"Reference {reference!r} was already used for a different grant")
        return new, stored

    async def purchase(self, org_id: int, purchase_id: str, *, method: str, credits: int, fee: int, bonus: int,
                       expires_at_ms: int | None, external_reference: str | None = None, tax: int = 0,
                       invoice: dict[str, Any] | None = None) -> tuple[bool, list[Entry]]:
        """Credit a paid purchase: the credits and the bonus become lots of the wallet, the fee
        goes to system:fees (and any tax to system:taxes), and `invoice` (its document) gets the next invoice number in the
        same transaction. Idempotent on `purchase_id`: a replay moves nothing."""
        now = self.clock.now_ms()
        account = wallet(org_id)
        ref = f"purchase:{purchase_id}"
        assert credits > 0 and fee >= 0 and bonus >= 0 and tax >= 0
        memo = f"{method} purchase {purchase_id}"
        credit_entry = Entry("purchase", PAYMENTS, account, credits, ref, now, org_id, memo=memo)
        fee_entry = Entry("fee", PAYMENTS, FEES, fee, f"{ref}:fee", now, org_id, memo=memo) if fee else None
        bonus_entry = Entry("bonus", BONUSES, account, bonus, f"{ref}:bonus", now, org_id, memo=memo) if bonus else None
        tax_entry = Entry("tax", PAYMENTS, TAXES, tax, f"{ref}:tax", now, org_id, memo=memo) if tax else None
        future = self.writer.submit(lambda conn: ops.purchase(conn, purchase_id, org_id, method, credit_entry,
                                                              fee_entry, bonus_entry, expires_at_ms, external_reference,
                                                              invoice, tax_entry))

        def applied(f: asyncio.Future[tuple[bool, list[Entry]]]) -> None:
            # In a callback, as for grants: the book follows the database even if the caller is cancelled.
            if f.cancelled() or f.exception() is not None or not f.result()[0]:
                return
            lot_ids = []
            for stored in f.result()[1]:
                assert stored.id is not None
                self.book.apply(stored, Lot(stored.id, stored.kind, stored.amount, stored.created_at, expires_at_ms,
                                            purchase=purchase_id))
                lot_ids.append(stored.id)
            self._mark_visible(lot_ids)
            for other in (fee_entry, tax_entry):
                if other is not None:
                    self.book.apply(other)
            self.purchased[org_id] = self.purchased.get(org_id, 0) + credits

        future.add_done_callback(applied)
        new, stored = await asyncio.shield(future)
        if not new and (not stored or stored[0].amount != credits or stored[0].to_account != account):
            raise Conflict(f"Purchase {purchase_id!r} was already recorded with different terms")
        return new, stored

    async def refund(self, org_id: int, purchase_id: str, *, unit: int, record: Any) -> tuple[bool, RefundTerms]:
        """Take back what a purchase's credit lots have left in the organization's wallet,
        rounded down to `unit` (a cent for a card), and forfeit what its bonus lots have left:
        wallet -> system:refunds and wallet -> system:bonuses, each entry naming its lot. Never
        more than the wallet's open holds leave available, so a request reserved before the
        refund still gets paid. Decided in memory at once (a concurrent charge cannot spend the
        same credit) and committed with the refund's row, `record(conn, terms)`. Idempotent on
        the purchase: a second call returns the first refund's terms and moves nothing. Credit
        of the purchase transferred to a workspace's pool stays there."""
        async with self._naming:
            return await self._refund(org_id, purchase_id, unit, record)

    async def _refund(self, org_id: int, purchase_id: str, unit: int, record: Any) -> tuple[bool, RefundTerms]:
        if purchase_id in self.refunds:
            prior = self.refunds[purchase_id]
            if prior.org_id != org_id:
                raise Conflict(f"Purchase {purchase_id} is not this organization's")
            return False, prior
        account = wallet(org_id)
        lots = self.book.lots.get(account)
        mine = [lot for lot in lots.live if lot.purchase == purchase_id] if lots else []
        credit = [lot for lot in mine if lot.kind == "purchase"]
        bonus = [lot for lot in mine if lot.kind == "bonus"]
        if not credit:
            raise Conflict(f"Purchase {purchase_id} has no credit in this organization's balance")
        available = max(self.book.available(account), 0)
        amount = min(sum(lot.remaining for lot in credit), available) // unit * unit
        if amount == 0:
            raise Conflict(f"Nothing of purchase {purchase_id} is left to refund")
        forfeit = min(sum(lot.remaining for lot in bonus), available - amount)
        now = self.clock.now_ms()
        memo = f"refund of purchase {purchase_id}"
        taken: list[tuple[Entry, int]] = []
        for kind, lots_of_kind, total, to, text in (("refund", credit, amount, REFUNDS, memo),
                                                     ("forfeit", bonus, forfeit, BONUSES,
                                                      f"bonus forfeited by the {memo}")):
            for lot in lots_of_kind:
                part = min(total, lot.remaining)
                if part:
                    taken.append((Entry(kind, account, to, part, f"refund:lot:{lot.id}:{purchase_id}", now, org_id,
                                        memo=text), lot.id))
                    total -= part
        terms = RefundTerms(purchase_id, org_id, amount, forfeit, "pending")
        self.refunds[purchase_id] = terms
        for entry, lot_id in taken:
            self.book.apply(entry, from_lot=lot_id)

        def write(conn: sqlite3.Connection) -> None:
            ops.post_entries(conn, [e for e, _ in taken])
            record(conn, terms)

        try:
            await asyncio.shield(self.writer.submit(write))
        except Exception:
            for entry, lot_id in reversed(taken):
                self.book.revert_entry(entry, lot_id)
            del self.refunds[purchase_id]
            raise
        return True, terms

    async def transfer(self, org_id: int, source: str, target: str, amount: int, reference: str, *,
                       memo: str | None = None, created_by: str | None = None) -> tuple[bool, Transfer]:
        """Move `amount` of credit between two wallets of one organization (its own and its
        workspaces' pools): instant and fee-free, one entry per credit lot it draws from, each
        making a lot of the same kind, expiry and purchase in `target`, so credit keeps its
        terms wherever it goes. Never more than `source` has available (open holds stay
        covered). Idempotent on `reference`: a replay moves nothing; a replay with other terms
        is a Conflict."""
        assert amount > 0 and source != target
        async with self._naming:
            prior = self.transfers.get(reference)
            if prior is not None:
                if (prior.org_id, prior.source, prior.target, prior.amount) != (org_id, source, target, amount):
                    raise Conflict(f"Reference {reference!r} was already used for a different transfer")
                return False, prior
            available = self.book.available(source)
            if amount > available:
                raise InsufficientCredits(f"The source has {usd_text(max(available, 0))} USD available to transfer, "
                                          f"not {usd_text(amount)}", metadata={"available": usd_json(max(available, 0))})
            now = self.clock.now_ms()
            record = Transfer(reference, org_id, source, target, amount, memo, created_by, now)
            moved: list[tuple[Entry, Lot, int]] = []   # (entry, receiving lot, lot drawn from)
            for lot, part in self.book.lots[source].plan(amount):
                entry = Entry("transfer", source, target, part, f"transfer:lot:{lot.id}:{reference}", now, org_id,
                              memo=memo)
                into = Lot(self.book.provisional_lot_id(), lot.kind, part, now, lot.expires_at_ms,
                           purchase=lot.purchase)
                self.book.apply(entry, into, from_lot=lot.id)
                moved.append((entry, into, lot.id))
            self.transfers[reference] = record
            # The receiving lots are in the book already, under provisional ids, and the
            # entries are submitted below without yielding: every entry the book applies
            # after them is submitted after them, so gets a higher id, and replay (which adds
            # a lot at its own entry) sees them exactly when the book did. Unlike a grant's
            # lots, they need no visible_after mark (see _mark_visible).
            try:
                ids = await asyncio.shield(self.writer.submit(lambda conn: ops.transfer(
                    conn, [e for e, _, _ in moved], [(lot.kind, lot.expires_at_ms, lot.purchase) for _, lot, _ in moved],
                    reference, created_by)))
            except Exception:
                for entry, into, drawn in reversed(moved):
                    self.book.revert_entry(entry, drawn, into.id)
                del self.transfers[reference]
                raise
            for (_, into, _), stored in zip(moved, ids, strict=True):
                self.book.rekey_lot(target, into.id, stored)
            return True, record

    async def restore_refund(self, terms: RefundTerms, expires_at_ms: int | None, record: Any) -> None:
        """A refund the payment rail refused for good: the credit (and the forfeited bonus) go
        back to the wallet as lots of the same purchase, and `record(conn)` marks it failed."""
        now = self.clock.now_ms()
        account = wallet(terms.org_id)
        back = [(Entry("refund_failed", REFUNDS, account, terms.amount, f"refund-failed:{terms.purchase_id}", now,
                       terms.org_id, memo=f"refund of purchase {terms.purchase_id} failed"), "purchase")]
        if terms.forfeited:
            back.append((Entry("forfeit_failed", BONUSES, account, terms.forfeited,
                               f"refund-failed:{terms.purchase_id}:bonus", now, terms.org_id,
                               memo=f"bonus restored: refund of purchase {terms.purchase_id} failed"), "bonus"))
        future = self.writer.submit(lambda conn: ops.restore_refund(conn, [e for e, _ in back], [k for _, k in back],
                                                                    expires_at_ms, terms.purchase_id, record))

        def applied(f: asyncio.Future[list[Entry]]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            lot_ids = []
            for stored, (_, kind) in zip(f.result(), back, strict=True):
                assert stored.id is not None
                self.book.apply(stored, Lot(stored.id, kind, stored.amount, stored.created_at, expires_at_ms,
                                            purchase=terms.purchase_id))
                lot_ids.append(stored.id)
            self._mark_visible(lot_ids)

        future.add_done_callback(applied)
        await asyncio.shield(future)
        self.refunds[terms.purchase_id] = dataclasses.replace(terms, status="failed")

    def _mark_visible(self, lot_ids: list[int]) -> None:
        """Record, after the fact, when credit lots joined the book. A grant's, purchase's or
        failed refund's lots are applied only once their entries have committed (credit is
        never spendable before it is durable), so a charge settled meanwhile, submitted after
        them, has a higher entry id but could not draw from them; replaying by id alone would
        let it. Called in the done-callback right after the lots are applied: the writer is
        FIFO, so this op stores the highest entry id at a point after every entry the book
        applied before the lots and before every entry it applies after them, and replay
        (ledger/lots.py) lets only entries above it draw from them.

        Fire-and-forget: the grant has committed and must neither wait for nor fail with its
        mark. Without it (a failed write, a crash first) the lots replay as spendable from
        their own entries, as before migration 6; after a crash the memory that differed is
        gone, so only a failure while running is worth an error in the log."""
        if not lot_ids:
            return
        try:
            future = self.writer.submit(lambda conn: ops.mark_visible(conn, lot_ids))
        except Exception as e:   # the writer has stopped: shutting down
            log.error("could not record when lots %s became spendable: %r", lot_ids, e)
            return

        def logged(f: asyncio.Future[int]) -> None:
            error = None if f.cancelled() else f.exception()
            if f.cancelled() or error is not None:
                log.error("could not record when lots %s became spendable: %r; a restart may draw them"
                          " in another order than this process did", lot_ids, error)

        future.add_done_callback(logged)

    async def commit(self, settlement: Settlement, generation: dict[str, Any],
                     content: dict[str, Any] | None = None) -> None:
        """Make a settlement and its generation record (and, with prompt logging, its
        content) durable, or undo it in memory.

        A lone request (defined below) has nobody to share a group commit with, and
        waiting for SQLite would be most of its added latency: with a journal, one append
        makes its charge durable and the writer commits it behind the answer. Under load the
        charge joins the next group commit, whose cost is shared, and the answer waits.

        Lone means no other request holds credit and none waits for its own commit. Holds
        alone are not enough: under load most requests in flight have settled and wait for
        the next batch, holding nothing, and one in eight charges at 64 connections looked
        alone; journaling them broke the batches up (+92 µs of CPU a request, bench/ab.py).
        Whether the writer is busy is not a test either: at one connection it is usually
        still committing the previous request's charge, off the event loop's thread."""
        op = ops.SettleOp(settlement.entries, generation, content)
        lone = not self.book.holds and not self._waiting
        journal = self.journal
        if lone and journal is not None and journal.usable:
            try:
                journal.record(op)
            except Exception as e:   # nothing was written: a failed write is cut off
                self.book.revert(settlement)
                log.error("could not journal charge for %s: %r", generation.get("id"), e)
                raise InternalError("The charge for this request could not be recorded; it was not billed") from e
            return
        def reverted(error: BaseException) -> None:
            # Called by the writer, not from an except clause here: the book must follow the
            # database even if the task waiting here is cancelled before the write fails.
            self.book.revert(settlement)
            log.error("could not commit charge for %s: %r", generation.get("id"), error)

        try:
            future = self.writer.submit(op, inline=lone, on_error=reverted)
        except BaseException as e:
            # Nothing was committed: stopped (shutting down), or interrupted inside an inline
            # transaction, which rolled back.
            self.book.revert(settlement)
            log.error("could not commit charge for %s: %r", generation.get("id"), e)
            if isinstance(e, Exception):
                raise InternalError("The charge for this request could not be recorded; it was not billed") from e
            raise
        self._waiting += 1
        try:
            # No shield: cancelling this task cancels only our wait, never the write (the
            # writer ignores a cancelled future), and a failure reverts the book by itself.
            await future
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise InternalError("The charge for this request could not be recorded; it was not billed") from e
        finally:
            self._waiting -= 1

    # -- hold expiry ---------------------------------------------------------------
    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            expired = self.book.expire_old()
            if expired:
                self.expired_holds += len(expired)
                log.warning("expired %d holds older than %ss", len(expired), self.book.hold_timeout_s)
            try:
                await self.expire_lots()
            except Exception:
                log.exception("the credit expiry sweep failed; it runs again at the next sweep")

    async def expire_lots(self) -> int:
        async with self._naming:
            return await self._expire_lots()

    async def _expire_lots(self) -> int:
        """Move what expired lots have left from their wallet to system:expired, one entry per
        lot (its reference names the lot and how much of it was spent before, so a partial
        expiry held back by open holds gets a reference of its own later). Returns the
        nano-dollars expired."""
        total = 0
        now = self.clock.now_ms()
        for account, lot_id, amount in self.book.expiring(now):
            lot = self.book.lots[account].by_id[lot_id]
            org_id = int(account.split(":")[1])
            entry = Entry("expiry", account, EXPIRED, amount, f"expire:lot:{lot_id}:{lot.amount - lot.remaining}",
                          now, org_id, memo=f"{lot.kind} credit expired unused")
            self.book.apply(entry, from_lot=lot_id)
            future = self.writer.submit(lambda conn, e=entry: ops.post_entries(conn, [e]))
            try:
                await asyncio.shield(future)
            except Exception:
                self.book.revert_entry(entry, lot_id)
                raise
            total += amount
        return total
