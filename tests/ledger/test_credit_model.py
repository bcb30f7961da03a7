"""A stateful model test of credits: the real Ledger (its Book, a real SQLite store, the
group-commit writer) driven by random grants, purchases and their replays, top-ups,
transfers between an organization's wallet and its workspaces' pools (and their replays),
spending from any wallet (holds kept open across other steps, settlements, overruns),
clock moves, expiry sweeps, refunds and failed refunds, and restarts. After every step it
is checked against a small reference model that keeps lots as a plain list and computes
every expectation on its own: the draw order is promotional (bonus, grant, trial) before
paid (purchase), then the soonest expiry (never-expiring last), then creation order; a
transfer moves the source's lots in that order, each becoming a lot of the same kind,
expiry and purchase in the target."""

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

import orjson
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from farebox.clock import FakeClock
from farebox.errors import Conflict, InsufficientCredits
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
    org_of,
    wallet,
    workspace_wallet,
)
from farebox.ledger.ledger import Ledger, RefundTerms, Transfer
from farebox.ledger.verify import verify_store
from farebox.money import usd_json
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

T = TypeVar("T")
CENT = 10**7           # a refund is paid back in whole cents
DAY_MS = 86_400_000
HOLD_TIMEOUT_S = 10**9  # no hold sweeper runs here: a hold ends only when settled or released
ORGS = (1, 2)
ORG = st.sampled_from((1, 1, 2))  # mostly one organization, so its lots and holds meet; the other stays apart
# Every organization's wallets: its own (where all credit arrives, and the only one refunds
# see) and its workspaces' pools, two for one organization and one for the other.
WALLETS = {1: (wallet(1), workspace_wallet(1, 1), workspace_wallet(1, 2)),
           2: (wallet(2), workspace_wallet(2, 3))}
ALL_WALLETS = tuple(a for org in ORGS for a in WALLETS[org])
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
    account: str           # the wallet it is in
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
    account: str
    amount: int
    hold: Hold


@dataclass(frozen=True)
class MTransfer:
    org: int
    source: str
    target: str
    amount: int


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
        # The live heap keeps entries of lots drained since, and of a transfer's lots under the
        # provisional ids they had before their commit (both skipped when popped): compare the rest.
        def due(e: tuple[int, str, int]) -> bool:
            lot = book.lots[e[1]].by_id.get(e[2])
            return lot is not None and lot.remaining > 0

        return {e for e in book.expiries if due(e)}

    assert pending(a) == pending(b)
    assert live.refunds == fresh.refunds
    assert live.transfers == fresh.transfers


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
        self.m_spent = dict.fromkeys(ALL_WALLETS, 0)
        # Per organization, over all its wallets (a transfer changes neither):
        self.m_credited = dict.fromkeys(ORGS, 0)  # came in: grants, purchases, bonuses
        self.m_taken = dict.fromkeys(ORGS, 0)     # left other than by spending: refunds, forfeits, expiries
        self.m_transfers: dict[str, MTransfer] = {}
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

    def m_available(self, account: str) -> int:
        return self.m_balance[account] - sum(h.amount for h in self.m_holds.values() if h.account == account)

    def m_live(self, account: str) -> list[MLot]:
        return sorted((x for x in self.m_lots if x.account == account and x.remaining), key=MLot.order)

    def m_new_lot(self, account: str, lot_id: int, kind: str, amount: int, expires: int | None,
                  purchase: str | None) -> MLot:
        self.seq += 1
        lot = MLot(self.seq, lot_id, account, kind, amount, expires, purchase)
        self.m_lots.append(lot)
        return lot

    def m_add_lot(self, org: int, lot_id: int, kind: str, amount: int, expires: int | None,
                  purchase: str | None) -> MLot:
        """New credit: a lot in the organization's own wallet."""
        self.m_credited[org] += amount
        return self.m_new_lot(wallet(org), lot_id, kind, amount, expires, purchase)

    @staticmethod
    def m_plan(lots: list[MLot], amount: int) -> list[tuple[MLot, int]]:
        """What taking `amount` from `lots`, in their order, takes from each."""
        parts = []
        for lot in lots:
            part = min(amount, lot.remaining)
            if part:
                parts.append((lot, part))
                amount -= part
        assert amount == 0, "the model drew more than its lots hold"
        return parts

    def m_draw(self, account: str, amount: int) -> list[tuple[int, int]]:
        parts = self.m_plan(self.m_live(account), amount)
        for lot, part in parts:
            lot.remaining -= part
        return [(lot.lot_id, part) for lot, part in parts]

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
                for account in WALLETS[org]:  # as tenancy/workspaces.py makes a pooled workspace's
                    ops.ensure_account(conn, account, org, "wallet")

        async def write() -> None:  # submit needs the running loop
            await self.ledger.writer.submit(op)

        self.run(write())
        for account in ALL_WALLETS:
            self.m_balance[account] = 0

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
    def hold_amount(self, data: st.DataObject, account: str) -> int:
        available = max(self.m_available(account), 0)
        # Mostly what fits; sometimes all of it, one nano too many, or whole cents (which may not fit).
        return data.draw(st.one_of(st.integers(0, available), st.integers(0, available), st.just(available),
                                   st.just(available + 1), st.integers(1, 30).map(lambda c: c * CENT)))

    def place(self, account: str, amount: int) -> Hold | None:
        """A hold, refused exactly when it does not fit what the model says is available."""
        available = self.m_available(account)
        try:
            hold = self.ledger.book.hold(self.next_id("g"), account, amount)
        except Shortfall as s:
            event("hold refused")
            assert amount > available and (s.scope, s.available) == ("wallet", available)
            return None
        assert amount <= available
        return hold

    def settle(self, account: str, hold: Hold, cost: int) -> None:
        """Settle as the relay does and commit with the generation record; the model draws
        the charge from its own lots and must agree lot by lot."""
        org = org_of(account)
        charged = min(cost, hold.amount)
        s = self.ledger.book.settle(hold, cost, reference=f"charge:{hold.id}", created_at=self.clock.now_ms(),
                                    org_id=org, key_hash="k", generation_id=hold.id)
        self.run(self.ledger.commit(s, generation(hold.id, org, cost, s.charged)))
        assert (s.charged, s.overrun) == (charged, cost - charged)
        draws = self.m_draw(account, charged) if charged else []
        assert s.draws == draws
        self.move(account, REVENUE, charged)
        self.move(OVERRUN, REVENUE, cost - charged)
        self.m_spent[account] += charged
        if cost > charged:
            event("overrun")
        if charged and account != wallet(org):
            event("spent from a pool")

    @staticmethod
    def cost(data: st.DataObject, held: int) -> int:
        # The hold's amount, less, or more (an overrun, paid by system:overrun).
        return data.draw(st.one_of(st.just(held), st.integers(0, held), st.integers(held, 2 * held + 1)))

    def pick_wallet(self, data: st.DataObject, org: int) -> str:
        """One of the organization's wallets: half the time one with credit available (pools
        have credit only once a transfer funded them)."""
        funded = [a for a in WALLETS[org] if self.m_available(a) > 0] or list(WALLETS[org])
        return data.draw(st.one_of(st.sampled_from(funded), st.sampled_from(WALLETS[org])))

    @rule(data=st.data(), org=ORG, keep_open=st.booleans())
    def spend(self, data: st.DataObject, org: int, keep_open: bool) -> None:
        """A request, on the organization's wallet or a workspace's pool: hold, then settle at
        once, or keep the hold open (a request in flight) across the steps that follow."""
        account = self.pick_wallet(data, org)
        amount = self.hold_amount(data, account)
        hold = self.place(account, amount)
        if hold is None:
            return
        if keep_open:
            self.m_holds[hold.id] = MHold(account, amount, hold)
        else:
            self.settle(account, hold, self.cost(data, amount))

    @precondition(lambda self: self.m_holds)
    @rule(data=st.data(), release=st.booleans())
    def finish_hold(self, data: st.DataObject, release: bool) -> None:
        """A request in flight ends: settled, or released (nothing billable)."""
        h = self.m_holds.pop(data.draw(st.sampled_from(sorted(self.m_holds))))
        if release:
            self.ledger.book.release(h.hold)
        else:
            self.settle(h.account, h.hold, self.cost(data, h.amount))

    # -- time and expiry ----------------------------------------------------------------------
    @rule(hours=st.sampled_from([0, 1, 24, 7 * 24, 30 * 24, 400 * 24]), sweep=st.booleans())
    def advance(self, hours: int, sweep: bool) -> None:
        """Move the clock, then maybe sweep. A sweep may come later: an expired lot not yet
        swept is still spent in the draw order like any other."""
        self.clock.advance(hours * 3600)
        if sweep:
            self.sweep()

    def sweep(self) -> None:
        """Expire lots past their expiry in every wallet, pools included, soonest first (then
        oldest), each as far as what its wallet's open holds leave available: the rest waits
        for a later sweep."""
        now = self.clock.now_ms()
        expected = 0
        for account in ALL_WALLETS:
            due = sorted((x for x in self.m_lots if x.account == account and x.remaining and x.expires is not None
                          and x.expires <= now), key=lambda x: (x.expires, x.seq))
            for lot in due:
                amount = min(lot.remaining, max(self.m_available(account), 0))
                if amount < lot.remaining:
                    event("expiry held back by open holds")
                if amount and account != wallet(org_of(account)):
                    event("pool credit expired")
                lot.remaining -= amount
                self.move(account, EXPIRED, amount)
                self.m_taken[org_of(account)] += amount
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
        # Only the organization's own wallet: credit of the purchase moved to a pool stays
        # there. There, every lot of the purchase (the first, and any a transfer brought back),
        # each taken in the draw order.
        account = wallet(p.org)
        mine = [x for x in self.m_live(account) if x.purchase == purchase_id]
        credit = [x for x in mine if x.kind == "purchase"]
        bonus = [x for x in mine if x.kind == "bonus"]
        if any(x.purchase == purchase_id and x.remaining and x.account != account for x in self.m_lots):
            event("refund leaves the purchase's credit in pools")
        if len(credit) > 1:
            event("refund of a purchase in several lots")
        available = max(self.m_available(account), 0)
        amount = min(sum(x.remaining for x in credit), available) // CENT * CENT
        if amount == 0:
            event("nothing to refund")
            with pytest.raises(Conflict):
                self.run(self.ledger.refund(p.org, purchase_id, unit=CENT, record=record))
            assert self.snapshot() == before
            return
        forfeit = min(sum(x.remaining for x in bonus), available - amount)
        if available < sum(x.remaining for x in mine):
            event("refund bounded by open holds")
        new, terms = self.run(self.ledger.refund(p.org, purchase_id, unit=CENT, record=record))
        assert new and terms == RefundTerms(purchase_id, p.org, amount, forfeit, "pending")
        for lots, total, sink in ((credit, amount, REFUNDS), (bonus, forfeit, BONUSES)):
            for lot, part in self.m_plan(lots, total) if total else []:
                lot.remaining -= part
            self.move(account, sink, total)
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

    # -- transfers -------------------------------------------------------------------------------
    def transfer_amount(self, data: st.DataObject, source: str) -> int:
        available = max(self.m_available(source), 0)
        # Mostly what fits (at least a nano: a transfer moves something); sometimes all of it,
        # one nano too many, or whole cents (which may not fit).
        return data.draw(st.one_of(st.integers(1, max(available, 1)), st.integers(1, max(available, 1)),
                                   st.just(max(available, 1)),
                                   st.just(available + 1), st.integers(1, 30).map(lambda c: c * CENT)))

    def call_transfer(self, t: MTransfer, reference: str) -> tuple[bool, Transfer]:
        return self.run(self.ledger.transfer(t.org, t.source, t.target, t.amount, reference, memo="m",
                                             created_by="member"))

    def funded_orgs(self) -> list[int]:
        return [org for org in ORGS if any(self.m_available(a) > 0 for a in WALLETS[org])]

    # Only while some wallet has credit available: most of the time every wallet is empty
    # (spending and expiry drain them), and refusals still come from an empty source or an
    # amount too large.
    @precondition(lambda self: self.funded_orgs())
    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        """Move credit between two wallets of one organization, its own and its pools, either way."""
        org = data.draw(st.sampled_from(self.funded_orgs()))
        before = self.snapshot()
        source = self.pick_wallet(data, org)
        target = data.draw(st.sampled_from([a for a in WALLETS[org] if a != source]))
        t = MTransfer(org, source, target, self.transfer_amount(data, source))
        reference = self.next_id("t")
        available = self.m_available(source)
        if t.amount > available:
            event("transfer refused")
            with pytest.raises(InsufficientCredits) as refused:
                self.call_transfer(t, reference)
            assert orjson.dumps(refused.value.metadata) == orjson.dumps({"available": usd_json(max(available, 0))})
            assert self.snapshot() == before and reference not in self.ledger.transfers
            return
        parts = self.m_plan(self.m_live(source), t.amount)
        seen = set(self.ledger.book.lots[target].by_id) if target in self.ledger.book.lots else set()
        new, record = self.call_transfer(t, reference)
        assert new and record == Transfer(reference, org, source, target, t.amount, "m", "member",
                                          self.clock.now_ms())
        # Each source lot drawn from (in the draw order) makes one lot of the same kind, expiry
        # and purchase in the target, known by its stored entry's id: one entry per lot, naming
        # the lot it was drawn from.
        added = sorted(set(self.ledger.book.lots[target].by_id) - seen)
        assert len(added) == len(parts)
        rows = self.store.reader_conn.execute(
            "SELECT e.id, e.reference, e.from_account, e.to_account, e.amount, l.kind, l.expires_at, l.purchase_id"
            " FROM entries e JOIN lots l ON l.entry_id = e.id WHERE e.kind = 'transfer' AND e.reference LIKE ?"
            " ORDER BY e.id", (f"transfer:lot:%:{reference}",)).fetchall()
        assert rows == [(i, f"transfer:lot:{lot.lot_id}:{reference}", source, target, part, lot.kind, lot.expires,
                         lot.purchase) for i, (lot, part) in zip(added, parts, strict=True)]
        for i, (lot, part) in zip(added, parts, strict=True):
            lot.remaining -= part
            self.m_new_lot(target, i, lot.kind, part, lot.expires, lot.purchase)
        self.move(source, target, t.amount)
        self.m_transfers[reference] = t
        event("transfer from a pool" if source != wallet(org) else "transfer to a pool")
        if len(parts) > 1:
            event("transfer of several lots")
        if any(h.account == source for h in self.m_holds.values()):
            event("transfer beside open holds")

    @precondition(lambda self: self.m_transfers)
    @rule(data=st.data(), how=st.sampled_from(["same", "same", "other amount", "other way"]))
    def replay_transfer(self, data: st.DataObject, how: str) -> None:
        """An earlier transfer's reference again: with its terms nothing moves and the first
        transfer is returned; with other terms it is a Conflict, and nothing moves."""
        before = self.snapshot()
        reference = data.draw(st.sampled_from(sorted(self.m_transfers)))
        prior = self.m_transfers[reference]
        if how == "same":
            new, record = self.call_transfer(prior, reference)
            assert not new and (record.org_id, record.source, record.target, record.amount) == (
                prior.org, prior.source, prior.target, prior.amount)
        else:
            other = (MTransfer(prior.org, prior.source, prior.target, prior.amount + 1) if how == "other amount"
                     else MTransfer(prior.org, prior.target, prior.source, prior.amount))
            with pytest.raises(Conflict):
                self.call_transfer(other, reference)
        event(f"transfer replayed: {how}")
        assert self.snapshot() == before

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
        for account in ALL_WALLETS:
            balance = book.balance(account)
            assert balance == self.m_balance[account]
            assert book.available(account) == self.m_available(account) >= 0
            lots = book.lots.get(account)
            assert (lots.total() if lots else 0) == balance  # the balance is the sum of live lots
            assert book.spent.get(account, 0) == self.m_spent[account]

    @invariant()
    def lots_match_the_model(self) -> None:
        for account in ALL_WALLETS:
            lots = self.ledger.book.lots.get(account)
            live = [(x.id, x.kind, x.remaining, x.expires_at_ms, x.purchase) for x in lots.live] if lots else []
            assert live == [(x.lot_id, x.kind, x.remaining, x.expires, x.purchase) for x in self.m_live(account)]
            by_id = {i: x.remaining for i, x in lots.by_id.items()} if lots else {}
            assert by_id == {x.lot_id: x.remaining for x in self.m_lots if x.account == account}

    @invariant()
    def organizations_conserve_credit(self) -> None:
        """Over all of an organization's wallets, transfers create and destroy nothing: what
        they hold plus what left them (charges, expiry, refunds, forfeits) is what came in
        (grants, purchases, bonuses; a failed refund's restored credit undoes its refund). In
        the book against the model's totals, and in the stored entries, where only transfers
        move money between two of its wallets and none crosses to another organization's."""
        book = self.ledger.book
        org_of_wallet = {a: org for org in ORGS for a in WALLETS[org]}
        came: dict[int, dict[str, int]] = {org: {} for org in ORGS}    # into the wallets from outside, by kind
        left: dict[int, dict[str, int]] = {org: {} for org in ORGS}    # out of them to elsewhere, by kind
        inside: dict[int, set[str]] = {org: set() for org in ORGS}     # kinds between two of its wallets
        for kind, source, target, amount in self.store.reader_conn.execute(
                "SELECT kind, from_account, to_account, SUM(amount) FROM entries"
                " WHERE from_account LIKE '%:wallet' OR to_account LIKE '%:wallet' GROUP BY 1, 2, 3"):
            a, b = org_of_wallet.get(source), org_of_wallet.get(target)
            if a is not None and a == b:
                inside[a].add(kind)
                continue
            assert a is None or b is None, (kind, source, target)  # never from one organization to another
            if b is not None:
                came[b][kind] = came[b].get(kind, 0) + amount
            if a is not None:
                left[a][kind] = left[a].get(kind, 0) + amount
        for org in ORGS:
            held = sum(book.balance(a) for a in WALLETS[org])
            spent = sum(book.spent.get(a, 0) for a in WALLETS[org])
            # total_credits as GET /credits shows it: what came in, less what left other than by spending.
            assert held + spent == self.m_credited[org] - self.m_taken[org]
            i, o = came[org], left[org]
            assert set(i) <= {"grant", "trial", "purchase", "bonus", "refund_failed", "forfeit_failed"}, i
            assert set(o) <= {"charge", "expiry", "refund", "forfeit"}, o
            assert inside[org] <= {"transfer"}, inside[org]
            restored = i.get("refund_failed", 0) + i.get("forfeit_failed", 0)
            assert sum(i.values()) - restored == self.m_credited[org]
            assert sum(o.values()) - o.get("charge", 0) - restored == self.m_taken[org]
            assert o.get("charge", 0) == spent
            assert sum(i.values()) - sum(o.values()) == held

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
        transfers = {r: MTransfer(o, s, t, a) for r, o, s, t, a in
                     conn.execute("SELECT reference, org_id, from_account, to_account, amount FROM transfers")}
        assert transfers == self.m_transfers == {r: MTransfer(t.org_id, t.source, t.target, t.amount)
                                                 for r, t in self.ledger.transfers.items()}
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
