"""A stateful model test of credits: the real Ledger (its Book, a real SQLite store, the
group-commit writer) driven by random grants, purchases and their replays, top-ups,
spending (holds kept open across other steps, settlements, overruns), clock moves, expiry
sweeps, refunds and failed refunds, and restarts. After every step it is checked against a
small reference model that keeps lots as a plain list and computes every expectation on
its own: the draw order is promotional (bonus, grant, trial) before paid (purchase), then
the soonest expiry (never-expiring last), then creation order."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from farebox.clock import FakeClock
from farebox.errors import Conflict
from farebox.ledger.book import Book, Hold, Shortfall
from farebox.ledger.entries import (
    BONUSES,
    EXPIRED,
    FEES,
    GRANTS,
    OVERRUN,
    PAYMENTS,
    REFUNDS,
    REVENUE,
    SYSTEM_ACCOUNTS,
    TAXES,
    wallet,
)
from farebox.ledger.ledger import Ledger, RefundTerms
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

T = TypeVar("T")
CENT = 10**7           # a refund is paid back in whole cents
DAY_MS = 86_400_000
HOLD_TIMEOUT_S = 10**9  # no hold sweeper runs here: a hold ends only when settled or released
ORGS = (1, 2)
ORG = st.sampled_from((1, 1, 2))  # mostly one organization, so its lots and holds meet; the other stays apart
NEVER = float("inf")
REFERENCES = ("a", "b", "c")  # few grant references, so replays (and conflicting replays) happen
EXPIRY_DAYS = st.sampled_from([None, 1, 7, 30, 365])
# Whole cents mostly (so refunds have something to pay back), and odd nano amounts.
AMOUNT = st.one_of(st.integers(1, 300).map(lambda c: c * CENT), st.integers(1, 3 * CENT))
FEE = st.one_of(st.just(0), st.integers(1, 50).map(lambda c: c * CENT), st.integers(1, CENT))


def generation(gid: str, org_id: int, total: int, charged: int) -> dict[str, Any]:
    return {"id": gid, "org_id": org_id, "workspace_id": None, "key_hash": "k", "created_at_ms": 1,
            "model": "acme/m", "provider_name": "Acme", "total_cost_nanos": total, "charged_nanos": charged,
            "tokens_prompt": 1, "tokens_completion": 1, "streamed": False, "cancelled": False,
            "finish_reason": "stop"}


@dataclass
class MLot:
    seq: int               # the model's own creation order
    lot_id: int            # the real lot's id, to compare lot by lot
    org: int
    kind: str
    amount: int
    expires: int | None
    purchase: str | None
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = self.amount

    def order(self) -> tuple[int, float, int]:
        return (0 if self.kind in ("bonus", "grant", "trial") else 1,
                NEVER if self.expires is None else self.expires, self.seq)


@dataclass
class MPurchase:
    org: int
    credits: int
    fee: int
    bonus: int
    tax: int
    credit_lot: MLot
    bonus_lot: MLot | None


@dataclass
class MHold:
    org: int
    amount: int
    hold: Hold


def restart_equivalent(live: Ledger, fresh: Ledger) -> None:
    """A ledger rebuilt from the store equals the live one: balances, flows, spending, every
    lot's remaining (and its terms), the live draw order, pending expiries and refunds."""
    def nonzero(d: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in d.items() if v}

    a, b = live.book, fresh.book
    assert nonzero(a.balances) == nonzero(b.balances)
    assert nonzero(a.inflow) == nonzero(b.inflow)
    assert nonzero(a.outflow) == nonzero(b.outflow)
    assert nonzero(a.spent) == nonzero(b.spent)
    for account in set(a.lots) | set(b.lots):
        mine, theirs = a.lots.get(account), b.lots.get(account)
        assert mine is not None and theirs is not None, account
        assert {i: (x.kind, x.amount, x.remaining, x.expires_at_ms, x.purchase) for i, x in mine.by_id.items()} == \
               {i: (x.kind, x.amount, x.remaining, x.expires_at_ms, x.purchase) for i, x in theirs.by_id.items()}
        assert [x.id for x in mine.live] == [x.id for x in theirs.live]

    def pending(book: Book) -> set[tuple[int, str, int]]:
        # The live heap keeps entries of lots drained since (dropped when popped): compare the rest.
        return {e for e in book.expiries if book.lots[e[1]].by_id[e[2]].remaining}

    assert pending(a) == pending(b)
    assert live.refunds == fresh.refunds


class CreditMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="farebox-credits-"))
        self.path = self.dir / "ledger.db"
        self.clock = FakeClock()
        self.loop = asyncio.new_event_loop()  # one loop drives every async ledger call
        self.store = Store(self.path)
        self.ledger = self._ledger()
        self.seq = 0
        # The reference model.
        self.m_balance: dict[str, int] = {a: 0 for a in SYSTEM_ACCOUNTS}
        self.m_lots: list[MLot] = []
        self.m_spent = dict.fromkeys(ORGS, 0)
        self.m_credited = dict.fromkeys(ORGS, 0)  # into the wallet: grants, purchases, bonuses, restored refunds
        self.m_taken = dict.fromkeys(ORGS, 0)     # out other than by spending: refunds, forfeits, expiries
        self.m_grants: dict[tuple[str, str], tuple[int, int]] = {}  # (kind, reference) -> (org, amount)
        self.m_purchases: dict[str, MPurchase] = {}
        self.m_refunds: dict[str, RefundTerms] = {}
        self.m_holds: dict[str, MHold] = {}
        self.invoices = 0

    def _ledger(self) -> Ledger:
        ledger = Ledger(Book(self.clock, HOLD_TIMEOUT_S), GroupWriter(self.store.writer_conn), self.clock,
                        sweep_interval_s=3600)
        ledger.writer.start()
        return ledger

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            # The final check runs only after a clean run: after a failure it would bury it.
            if sys.exc_info()[0] is None:
                fresh = self.reopen()
                restart_equivalent(self.ledger, fresh)
                report = verify_store(self.store.reader_conn)
                assert report.ok, report.violations
        finally:
            self.ledger.writer.stop()
            self.store.close()
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def reopen(self) -> Ledger:
        """Stop the writer, close the store, open it again and load a fresh Ledger from it."""
        self.ledger.writer.stop()
        self.store.close()
        self.store = Store(self.path)
        fresh = self._ledger()
        fresh.load(self.store.reader_conn)
        return fresh

    # -- the model's own arithmetic -------------------------------------------------------
    def next_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def move(self, source: str, target: str, amount: int) -> None:
        self.m_balance[source] = self.m_balance.get(source, 0) - amount
        self.m_balance[target] = self.m_balance.get(target, 0) + amount

    def m_available(self, org: int) -> int:
        return self.m_balance[wallet(org)] - sum(h.amount for h in self.m_holds.values() if h.org == org)

    def m_live(self, org: int) -> list[MLot]:
        return sorted((x for x in self.m_lots if x.org == org and x.remaining), key=MLot.order)

    def m_add_lot(self, org: int, lot_id: int, kind: str, amount: int, expires: int | None,
                  purchase: str | None) -> MLot:
        self.seq += 1
        lot = MLot(self.seq, lot_id, org, kind, amount, expires, purchase)
        self.m_lots.append(lot)
        self.m_credited[org] += amount
        return lot

    def m_draw(self, org: int, amount: int) -> list[tuple[int, int]]:
        taken = []
        for lot in self.m_live(org):
            part = min(amount, lot.remaining)
            if part:
                lot.remaining -= part
                amount -= part
                taken.append((lot.lot_id, part))
        assert amount == 0, "the model drew more than its lots hold"
        return taken

    def expiry(self, days: int | None) -> int | None:
        return None if days is None else self.clock.now_ms() + days * DAY_MS

    def snapshot(self) -> dict[str, int]:
        return {a: v for a, v in self.ledger.book.balances.items() if v}

    # -- set-up ---------------------------------------------------------------------------
    @initialize()
    def organizations(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for org in ORGS:
                conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (org, f"o{org}"))
                ops.ensure_account(conn, wallet(org), org, "wallet")

        async def write() -> None:  # submit needs the running loop
            await self.ledger.writer.submit(op)

        self.run(write())
        for org in ORGS:
            self.m_balance[wallet(org)] = 0

    # -- money in ---------------------------------------------------------------------------
    @rule(org=ORG, kind=st.sampled_from(["grant", "trial"]), amount=AMOUNT,
          reference=st.sampled_from(REFERENCES), days=EXPIRY_DAYS, same=st.booleans())
    def grant(self, org: int, kind: str, amount: int, reference: str, days: int | None, same: bool) -> None:
        before = self.snapshot()
        prior = self.m_grants.get((kind, reference))
        if prior is not None and same:  # a replay of the first grant's terms
            org, amount = prior
        if prior is not None and prior != (org, amount):
            event("grant replayed with other terms")
            with pytest.raises(Conflict):
                self.run(self.ledger.grant(org, amount, reference, kind=kind, expires_at_ms=self.expiry(days)))
            assert self.snapshot() == before
            return
        new, stored = self.run(self.ledger.grant(org, amount, reference, kind=kind, expires_at_ms=self.expiry(days)))
        assert new == (prior is None)
        if not new:
            event("grant replayed")
            assert self.snapshot() == before
            return
        assert stored.id is not None and stored.amount == amount
        self.m_grants[(kind, reference)] = (org, amount)
        self.move(GRANTS, wallet(org), amount)
        self.m_add_lot(org, stored.id, kind, amount, self.expiry(days), None)

    def buy(self, org: int, purchase_id: str, credits: int, fee: int, bonus: int, tax: int, days: int | None) -> None:
        expires = self.expiry(days)
        new, stored = self.run(self.ledger.purchase(org, purchase_id, method="card", credits=credits, fee=fee,
                                                    bonus=bonus, tax=tax, expires_at_ms=expires,
                                                    invoice={"purchase": purchase_id}))
        assert new
        assert [(e.kind, e.amount) for e in stored] == [("purchase", credits)] + ([("bonus", bonus)] if bonus else [])
        self.move(PAYMENTS, wallet(org), credits)
        self.move(PAYMENTS, FEES, fee)
        self.move(BONUSES, wallet(org), bonus)
        self.move(PAYMENTS, TAXES, tax)
        assert stored[0].id is not None
        credit_lot = self.m_add_lot(org, stored[0].id, "purchase", credits, expires, purchase_id)
        bonus_lot = None
        if bonus:
            assert stored[1].id is not None
            bonus_lot = self.m_add_lot(org, stored[1].id, "bonus", bonus, expires, purchase_id)
        self.m_purchases[purchase_id] = MPurchase(org, credits, fee, bonus, tax, credit_lot, bonus_lot)
        self.invoices += 1

    @rule(org=ORG, credits=AMOUNT, fee=FEE, bonus=st.one_of(st.just(0), AMOUNT),
          tax=st.one_of(st.just(0), FEE), days=EXPIRY_DAYS, topup=st.booleans())
    def purchase(self, org: int, credits: int, fee: int, bonus: int, tax: int, days: int | None,
                 topup: bool) -> None:
        if topup:  # an auto top-up credits a purchase named topup-<n>: whole cents, no bonus, a year's expiry
            self.buy(org, self.next_id("topup"), credits // CENT * CENT or CENT, fee, 0, 0, 365)
        else:
            self.buy(org, self.next_id("co"), credits, fee, bonus, tax, days)

    @precondition(lambda self: self.m_purchases)
    @rule(data=st.data(), how=st.sampled_from(["same", "same", "other credits", "other org"]))
    def replay_purchase(self, data: st.DataObject, how: str) -> None:
        purchase_id = data.draw(st.sampled_from(sorted(self.m_purchases)))
        p = self.m_purchases[purchase_id]
        org = p.org if how != "other org" else next(o for o in ORGS if o != p.org)
        credits = p.credits + (CENT if how == "other credits" else 0)
        before = self.snapshot()
        call = self.ledger.purchase(org, purchase_id, method="card", credits=credits, fee=p.fee, bonus=p.bonus,
                                    tax=p.tax, expires_at_ms=None, invoice={"purchase": purchase_id})
        if how == "same":
            new, stored = self.run(call)
            assert not new
            assert [(e.id, e.amount) for e in stored] == [(x.lot_id, x.amount) for x in (p.credit_lot, p.bonus_lot)
                                                         if x is not None]
        else:
            with pytest.raises(Conflict):
                self.run(call)
        event(f"purchase replayed: {how}")
        assert self.snapshot() == before

    # -- spending ---------------------------------------------------------------------------
    def hold_amount(self, data: st.DataObject, org: int) -> int:
        available = max(self.m_available(org), 0)
        # Mostly what fits; sometimes all of it, one nano too many, or whole cents (which may not fit).
        return data.draw(st.one_of(st.integers(0, available), st.integers(0, available), st.just(available),
                                   st.just(available + 1), st.integers(1, 30).map(lambda c: c * CENT)))

    def place(self, org: int, amount: int) -> Hold | None:
        """A hold, refused exactly when it does not fit what the model says is available."""
        available = self.m_available(org)
        try:
            hold = self.ledger.book.hold(self.next_id("g"), wallet(org), amount)
        except Shortfall as s:
            event("hold refused")
            assert amount > available and (s.scope, s.available) == ("wallet", available)
            return None
        assert amount <= available
        return hold

    def settle(self, org: int, hold: Hold, cost: int) -> None:
        """Settle as the relay does and commit with the generation record; the model draws
        the charge from its own lots and must agree lot by lot."""
        charged = min(cost, hold.amount)
        s = self.ledger.book.settle(hold, cost, reference=f"charge:{hold.id}", created_at=self.clock.now_ms(),
                                    org_id=org, key_hash="k", generation_id=hold.id)
        self.run(self.ledger.commit(s, generation(hold.id, org, cost, s.charged)))
        assert (s.charged, s.overrun) == (charged, cost - charged)
        draws = self.m_draw(org, charged) if charged else []
        assert s.draws == draws
        self.move(wallet(org), REVENUE, charged)
        self.move(OVERRUN, REVENUE, cost - charged)
        self.m_spent[org] += charged
        if cost > charged:
            event("overrun")

    @staticmethod
    def cost(data: st.DataObject, held: int) -> int:
        # The hold's amount, less, or more (an overrun, paid by system:overrun).
        return data.draw(st.one_of(st.just(held), st.integers(0, held), st.integers(held, 2 * held + 1)))

    @rule(data=st.data(), org=ORG, keep_open=st.booleans())
    def spend(self, data: st.DataObject, org: int, keep_open: bool) -> None:
        """A request: hold, then settle at once, or keep the hold open (a request in flight)
        across the steps that follow."""
        amount = self.hold_amount(data, org)
        hold = self.place(org, amount)
        if hold is None:
            return
        if keep_open:
            self.m_holds[hold.id] = MHold(org, amount, hold)
        else:
            self.settle(org, hold, self.cost(data, amount))

    @precondition(lambda self: self.m_holds)
    @rule(data=st.data(), release=st.booleans())
    def finish_hold(self, data: st.DataObject, release: bool) -> None:
        """A request in flight ends: settled, or released (nothing billable)."""
        h = self.m_holds.pop(data.draw(st.sampled_from(sorted(self.m_holds))))
        if release:
            self.ledger.book.release(h.hold)
        else:
            self.settle(h.org, h.hold, self.cost(data, h.amount))

    # -- time and expiry ----------------------------------------------------------------------
    @rule(hours=st.sampled_from([0, 1, 24, 7 * 24, 30 * 24, 400 * 24]), sweep=st.booleans())
    def advance(self, hours: int, sweep: bool) -> None:
        """Move the clock, then maybe sweep. A sweep may come later: an expired lot not yet
        swept is still spent in the draw order like any other."""
        self.clock.advance(hours * 3600)
        if sweep:
            self.sweep()

    def sweep(self) -> None:
        """Expire lots past their expiry, soonest first (then oldest), each as far as what the
        wallet's open holds leave available: the rest waits for a later sweep."""
        now = self.clock.now_ms()
        expected = 0
        for org in ORGS:
            due = sorted((x for x in self.m_lots if x.org == org and x.remaining and x.expires is not None
                          and x.expires <= now), key=lambda x: (x.expires, x.seq))
            for lot in due:
                amount = min(lot.remaining, max(self.m_available(org), 0))
                if amount < lot.remaining:
                    event("expiry held back by open holds")
                lot.remaining -= amount
                self.move(wallet(org), EXPIRED, amount)
                self.m_taken[org] += amount
                expected += amount
        if expected:
            event("lots expired")
        assert self.run(self.ledger.expire_lots()) == expected

    # -- refunds ------------------------------------------------------------------------------
    @precondition(lambda self: self.m_purchases)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        purchase_id = data.draw(st.sampled_from(sorted(self.m_purchases)))
        p = self.m_purchases[purchase_id]
        before = self.snapshot()
        now = self.clock.now_ms()

        def record(conn: sqlite3.Connection, t: RefundTerms) -> None:  # as billing/payments.py records it
            conn.execute("INSERT INTO refunds (purchase_id, org_id, amount, forfeited, status, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, 'pending', ?, ?)", (t.purchase_id, t.org_id, t.amount, t.forfeited,
                                                                   now, now))

        prior = self.m_refunds.get(purchase_id)
        if prior is not None:
            event("refund replayed")
            new, terms = self.run(self.ledger.refund(p.org, purchase_id, unit=CENT, record=record))
            assert (new, terms) == (False, prior)
            assert self.snapshot() == before
            return
        available = max(self.m_available(p.org), 0)
        amount = min(p.credit_lot.remaining, available) // CENT * CENT
        if amount == 0:
            event("nothing to refund")
            with pytest.raises(Conflict):
                self.run(self.ledger.refund(p.org, purchase_id, unit=CENT, record=record))
            assert self.snapshot() == before
            return
        forfeit = min(p.bonus_lot.remaining, available - amount) if p.bonus_lot is not None else 0
        if available < p.credit_lot.remaining + (p.bonus_lot.remaining if p.bonus_lot else 0):
            event("refund bounded by open holds")
        new, terms = self.run(self.ledger.refund(p.org, purchase_id, unit=CENT, record=record))
        assert new and terms == RefundTerms(purchase_id, p.org, amount, forfeit, "pending")
        p.credit_lot.remaining -= amount
        self.move(wallet(p.org), REFUNDS, amount)
        if p.bonus_lot is not None:
            p.bonus_lot.remaining -= forfeit
            self.move(wallet(p.org), BONUSES, forfeit)
        self.m_taken[p.org] += amount + forfeit
        self.m_refunds[purchase_id] = terms
        event("refund with forfeit" if forfeit else "refund")

    @precondition(lambda self: any(t.status == "pending" for t in self.m_refunds.values()))
    @rule(data=st.data())
    def restore_refund(self, data: st.DataObject) -> None:
        """The payment rail refused the refund for good: the credit and the forfeited bonus
        come back as new lots of the purchase, with the purchase's expiry."""
        purchase_id = data.draw(st.sampled_from(sorted(k for k, t in self.m_refunds.items() if t.status == "pending")))
        terms, p = self.m_refunds[purchase_id], self.m_purchases[purchase_id]
        account = wallet(p.org)
        seen = set(self.ledger.book.lots[account].by_id)

        def record(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE refunds SET status = 'failed' WHERE purchase_id = ?", (purchase_id,))

        self.run(self.ledger.restore_refund(terms, p.credit_lot.expires, record))
        added = sorted(set(self.ledger.book.lots[account].by_id) - seen)
        assert len(added) == (2 if terms.forfeited else 1)
        self.move(REFUNDS, account, terms.amount)
        self.m_add_lot(p.org, added[0], "purchase", terms.amount, p.credit_lot.expires, purchase_id)
        if terms.forfeited:
            self.move(BONUSES, account, terms.forfeited)
            self.m_add_lot(p.org, added[1], "bonus", terms.forfeited, p.credit_lot.expires, purchase_id)
        # The refund is undone: what it took comes back, and it is not new credit.
        self.m_credited[p.org] -= terms.amount + terms.forfeited
        self.m_taken[p.org] -= terms.amount + terms.forfeited
        self.m_refunds[purchase_id] = RefundTerms(purchase_id, p.org, terms.amount, terms.forfeited, "failed")
        event("refund restored")
        status = self.store.reader_conn.execute("SELECT status FROM refunds WHERE purchase_id = ?",
                                                (purchase_id,)).fetchone()
        assert status == ("failed",)

    # -- restart ---------------------------------------------------------------------------------
    # Only with no request in flight: holds live in memory alone (a crash drops them, which
    # is trivially right), and open holds are what the expiry and refund rules need most.
    @precondition(lambda self: not self.m_holds)
    @rule()
    def restart(self) -> None:
        """A restart: the ledger rebuilt from the store must be the live one, then carries on
        in its place."""
        fresh = self.reopen()
        restart_equivalent(self.ledger, fresh)
        self.ledger = fresh
        event("restarted")

    # -- invariants --------------------------------------------------------------------------------
    @invariant()
    def wallets_match_the_model(self) -> None:
        book = self.ledger.book
        for org in ORGS:
            account = wallet(org)
            balance = book.balance(account)
            assert balance == self.m_balance[account]
            assert book.available(account) == self.m_available(org) >= 0
            lots = book.lots.get(account)
            assert (lots.total() if lots else 0) == balance  # the balance is the sum of live lots
            assert book.spent.get(account, 0) == self.m_spent[org]
            # total_credits as GET /credits shows it: what came in, less what left other than by spending.
            assert balance + book.spent.get(account, 0) == self.m_credited[org] - self.m_taken[org]

    @invariant()
    def lots_match_the_model(self) -> None:
        for org in ORGS:
            lots = self.ledger.book.lots.get(wallet(org))
            live = [(x.id, x.kind, x.remaining, x.expires_at_ms, x.purchase) for x in lots.live] if lots else []
            assert live == [(x.lot_id, x.kind, x.remaining, x.expires, x.purchase) for x in self.m_live(org)]
            by_id = {i: x.remaining for i, x in lots.by_id.items()} if lots else {}
            assert by_id == {x.lot_id: x.remaining for x in self.m_lots if x.org == org}

    @invariant()
    def system_accounts_match_the_model(self) -> None:
        book = self.ledger.book
        assert {a: book.balance(a) for a in self.m_balance} == self.m_balance
        assert all(v == 0 for a, v in book.balances.items() if a not in self.m_balance)
        assert sum(book.balances.values()) == 0

    @invariant()
    def store_matches_the_book(self) -> None:
        conn = self.store.reader_conn
        stored = dict(conn.execute("SELECT id, balance FROM accounts"))
        assert stored == {a: self.ledger.book.balance(a) for a in stored}
        assert set(stored) >= set(self.snapshot())
        numbers = [n for (n,) in conn.execute("SELECT number FROM invoices ORDER BY number")]
        assert numbers == list(range(1, self.invoices + 1))  # one per purchase, no gaps
        refunds = {pid: RefundTerms(pid, org, amount, forfeited, status) for pid, org, amount, forfeited, status
                   in conn.execute("SELECT purchase_id, org_id, amount, forfeited, status FROM refunds")}
        assert refunds == self.m_refunds == self.ledger.refunds
        report = verify_store(conn)
        assert report.ok, report.violations


# No explain phase: on a failure it replays the shrunk case hundreds of times (minutes) to
# annotate it, and the shrunk steps already say what happened.
CreditMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow],
                                           phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
TestCreditModel = CreditMachine.TestCase


def test_one_sweep_expires_no_more_than_open_holds_leave(tmp_path: Path) -> None:
    """The shortest case the machine finds, pinned: two lots expire in the same sweep while
    a hold reserves more than either leaves available. Only what the hold leaves may expire,
    so the request reserved before the sweep still gets paid in full."""
    clock = FakeClock()
    store = Store(tmp_path / "ledger.db")
    ledger = Ledger(Book(clock, HOLD_TIMEOUT_S), GroupWriter(store.writer_conn), clock, sweep_interval_s=3600)
    account = wallet(1)

    def org(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
        ops.ensure_account(conn, account, 1, "wallet")

    async def main() -> None:
        await ledger.writer.submit(org)
        tomorrow = clock.now_ms() + DAY_MS
        await ledger.grant(1, 50 * CENT, "a", kind="trial", expires_at_ms=tomorrow)
        await ledger.grant(1, 50 * CENT, "b", kind="trial", expires_at_ms=tomorrow)
        hold = ledger.book.hold("g", account, 60 * CENT)
        clock.advance(DAY_MS / 1000)
        assert await ledger.expire_lots() == 40 * CENT  # 100 held in lots, 60 reserved
        assert ledger.book.available(account) == 0
        s = ledger.book.settle(hold, 60 * CENT, reference="charge:g", created_at=clock.now_ms(), org_id=1,
                               key_hash="k", generation_id="g")
        await ledger.commit(s, generation("g", 1, 60 * CENT, s.charged))
        assert s.charged == 60 * CENT and ledger.book.balance(account) == 0
        assert await ledger.expire_lots() == 0

    ledger.writer.start()
    try:
        asyncio.run(main())
    finally:
        ledger.writer.stop()
        report = verify_store(store.reader_conn)
        store.close()
    assert report.ok, report.violations
