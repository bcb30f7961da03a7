"""A stateful model test of the ledger: the real Book and a real SQLite store driven by
random grants, holds, resizes, settlements, releases and clock moves, checked after every
step against a small reference model that computes every expectation on its own."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from farebox.clock import FakeClock
from farebox.ledger.book import Book, Hold, Settlement, Shortfall
from farebox.ledger.caps import Cap, key_cap
from farebox.ledger.entries import GRANTS, OVERRUN, REVENUE, SYSTEM_ACCOUNTS, Entry, is_floored, wallet
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter

TIMEOUT = 600.0
DAY = 86400
REFERENCES = [f"pay-{i}" for i in range(5)]  # few, so replays happen


@dataclass
class ModelCap:
    limit: int
    daily: bool
    spent: list[tuple[int, int]]  # (UTC day number, amount charged)
    held: int = 0


@dataclass
class ModelHold:
    account: str
    amount: int
    caps: tuple[int, ...]  # indices into caps: a hold may span several
    created: float       # the model's own monotonic time


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="farebox-model-")
        self.store = Store(Path(self.dir) / "ledger.db")
        self.writer = GroupWriter(self.store.writer_conn)
        self.clock = FakeClock()
        self.book = Book(self.clock, TIMEOUT)
        self.wallets: list[str] = []
        self.caps: list[Cap] = []
        self.holds: dict[str, Hold] = {}       # the book's open holds, by id
        self.expired: dict[str, Hold] = {}     # expired holds not yet settled late
        self.seq = 0
        # The reference model.
        self.now = self.clock.now()
        self.mono = self.clock.monotonic()
        self.m_balance: dict[str, int] = dict.fromkeys(SYSTEM_ACCOUNTS, 0)
        self.m_holds: dict[str, ModelHold] = {}
        self.m_expired: dict[str, ModelHold] = {}
        self.m_caps: list[ModelCap] = []
        self.m_refs: set[str] = set()
        self.costs = self.charged = self.overrun = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's own arithmetic ------------------------------------------------------
    def m_available(self, account: str) -> int:
        return self.m_balance[account] - sum(h.amount for h in self.m_holds.values() if h.account == account)

    def m_cap_remaining(self, i: int) -> int:
        cap = self.m_caps[i]
        today = int(self.now // DAY)
        spent = sum(a for day, a in cap.spent if not cap.daily or day == today)
        return cap.limit - spent - cap.held

    def m_refusal(self, account: str, caps: tuple[int, ...], extra: int) -> tuple[str, int] | None:
        available = self.m_available(account)
        if extra > available:
            return ("wallet", available)
        for i in caps:
            if extra > self.m_cap_remaining(i):
                return ("key", self.m_cap_remaining(i))
        return None

    def next_id(self) -> str:
        self.seq += 1
        return f"gen-{self.seq}"

    def commit(self, settlement: Settlement, gid: str, org_id: int, cost: int) -> None:
        gen = {"id": gid, "org_id": org_id, "workspace_id": None, "key_hash": "k", "created_at_ms": self.clock.now_ms(),
               "model": "acme/m", "provider_name": "Acme", "total_cost_nanos": cost,
               "charged_nanos": settlement.charged, "tokens_prompt": 1, "tokens_completion": 1, "streamed": False,
               "cancelled": False, "finish_reason": "stop"}
        self.writer.run_sync(lambda conn: ops.settle(conn, settlement.entries, gen))

    # -- set-up ---------------------------------------------------------------------------
    @initialize(orgs=st.integers(1, 3),
                caps=st.lists(st.tuples(st.integers(0, 5000), st.booleans()), max_size=2),
                opening=st.lists(st.integers(0, 20_000), min_size=3, max_size=3))
    def setup(self, orgs: int, caps: list[tuple[int, bool]], opening: list[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for oid in range(1, orgs + 1):
                conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (oid, f"o{oid}"))
                ops.ensure_account(conn, wallet(oid), oid, "wallet")

        self.writer.run_sync(op)
        self.wallets = [wallet(oid) for oid in range(1, orgs + 1)]
        for w in self.wallets:
            self.book.balances.setdefault(w, 0)
            self.m_balance[w] = 0
        for limit, daily in caps:
            self.caps.append(key_cap(limit=limit, reset="daily" if daily else None))
            self.m_caps.append(ModelCap(limit, daily, []))
        for w, amount in zip(self.wallets, opening, strict=False):
            if amount:
                self.grant_to(w, amount, f"opening-{w}")

    def grant_to(self, account: str, amount: int, reference: str) -> None:
        org_id = int(account.split(":")[1])
        entry = Entry("grant", GRANTS, account, amount, f"grant:{reference}", self.clock.now_ms(), org_id)
        new, stored = self.writer.run_sync(lambda conn: ops.grant(conn, entry))
        if new:  # exactly as Ledger.grant does
            self.book.apply(stored)
        assert new == (reference not in self.m_refs)
        if not new:
            event("grant replayed")
            return
        self.m_refs.add(reference)
        self.m_balance[account] += amount
        self.m_balance[GRANTS] -= amount

    # -- rules ------------------------------------------------------------------------------
    @rule(data=st.data(), amount=st.integers(1, 10_000), reference=st.sampled_from(REFERENCES))
    def grant(self, data: st.DataObject, amount: int, reference: str) -> None:
        self.grant_to(data.draw(st.sampled_from(self.wallets)), amount, reference)

    @rule(data=st.data(), amount=st.integers(0, 3000))
    def hold(self, data: st.DataObject, amount: int) -> None:
        self.hold_on(data, data.draw(st.sampled_from(self.wallets)), amount)

    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 0, 1]))
    def hold_the_rest(self, data: st.DataObject, offset: int) -> None:
        """A greedy request: exactly what the wallet has left, or one nano either side."""
        account = data.draw(st.sampled_from(self.wallets))
        self.hold_on(data, account, max(self.m_available(account) + offset, 0))

    def hold_on(self, data: st.DataObject, account: str, amount: int) -> None:
        caps = tuple(data.draw(st.lists(st.sampled_from(range(len(self.caps))), unique=True))) if self.caps else ()
        hid = self.next_id()
        expected = self.m_refusal(account, caps, amount)
        try:
            h = self.book.hold(hid, account, amount, tuple(self.caps[i] for i in caps))
        except Shortfall as s:
            event(f"hold refused: {s.scope}")
            assert (s.scope, s.available) == expected
            return
        assert expected is None
        self.holds[hid] = h
        self.m_holds[hid] = ModelHold(account, amount, caps, self.mono)
        for i in caps:
            self.m_caps[i].held += amount

    @precondition(lambda self: self.m_holds)
    @rule(data=st.data(), amount=st.integers(0, 4000))
    def resize(self, data: st.DataObject, amount: int) -> None:
        hid = data.draw(st.sampled_from(sorted(self.m_holds)))
        mh, h = self.m_holds[hid], self.holds[hid]
        delta = amount - mh.amount
        expected = self.m_refusal(mh.account, mh.caps, delta) if delta > 0 else None
        try:
            self.book.resize(h, amount)
        except Shortfall as s:
            event(f"resize refused: {s.scope}")
            assert (s.scope, s.available) == expected
            assert h.amount == mh.amount and h.open  # a refused resize changes nothing
            return
        assert expected is None
        mh.amount = amount
        for i in mh.caps:
            self.m_caps[i].held += delta

    def _settled(self, mh: ModelHold, cost: int, charged: int) -> None:
        self.m_balance[mh.account] -= charged
        self.m_balance[REVENUE] += cost
        self.m_balance[OVERRUN] -= cost - charged
        self.costs += cost
        for i in mh.caps:
            if charged:
                self.m_caps[i].spent.append((int(self.now // DAY), charged))

    @precondition(lambda self: self.m_holds)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.m_holds)))
        mh, h = self.m_holds.pop(hid), self.holds.pop(hid)
        cost = data.draw(st.integers(0, max(2 * mh.amount, 1)))
        org_id = int(mh.account.split(":")[1])
        s = self.book.settle(h, cost, reference=f"charge:{hid}", created_at=self.clock.now_ms(), org_id=org_id,
                             key_hash="k", generation_id=hid)
        self.commit(s, hid, org_id, cost)
        for i in mh.caps:
            self.m_caps[i].held -= mh.amount
        charged = min(cost, mh.amount)
        assert (s.charged, s.overrun) == (charged, cost - charged)
        assert s.charged <= mh.amount  # never more than the hold
        self.charged += s.charged
        self.overrun += s.overrun
        if s.overrun:
            event("overrun")
        self._settled(mh, cost, charged)

    # Late settlement of an expired hold. Only holds without a key cap: with one, the
    # book lets the key overspend (see test_book.py::test_settle_after_expiry_respects_the_key_cap).
    @precondition(lambda self: any(not mh.caps for mh in self.m_expired.values()))
    @rule(data=st.data())
    def settle_late(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(k for k, mh in self.m_expired.items() if not mh.caps)))
        mh, h = self.m_expired.pop(hid), self.expired.pop(hid)
        cost = data.draw(st.integers(0, max(2 * mh.amount, 1)))
        org_id = int(mh.account.split(":")[1])
        charged = min(cost, mh.amount, max(self.m_available(mh.account), 0))
        s = self.book.settle(h, cost, reference=f"charge:{hid}", created_at=self.clock.now_ms(), org_id=org_id,
                             key_hash="k", generation_id=hid)
        self.commit(s, hid, org_id, cost)
        event("late settlement")
        assert (s.charged, s.overrun) == (charged, cost - charged)
        self.charged += s.charged
        self.overrun += s.overrun
        self._settled(mh, cost, charged)

    @precondition(lambda self: self.m_holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.m_holds)))
        mh, h = self.m_holds.pop(hid), self.holds.pop(hid)
        self.book.release(h)
        for i in mh.caps:
            self.m_caps[i].held -= mh.amount

    @rule(seconds=st.sampled_from([1, 60, TIMEOUT / 2, TIMEOUT, TIMEOUT + 1, 3 * 3600, DAY, 7 * DAY]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.now += seconds
        self.mono += seconds
        expired = {h.id for h in self.book.expire_old()}
        expected = {hid for hid, mh in self.m_holds.items() if mh.created < self.mono - TIMEOUT}
        assert expired == expected
        for hid in expected:
            mh = self.m_holds.pop(hid)
            self.m_expired[hid] = mh
            self.expired[hid] = self.holds.pop(hid)
            assert self.expired[hid].expired and not self.expired[hid].open
            for i in mh.caps:
                self.m_caps[i].held -= mh.amount

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def floors_hold(self) -> None:
        for account, balance in self.book.balances.items():
            if is_floored(account):
                assert balance >= 0, (account, balance)
                assert self.book.available(account) >= 0

    @invariant()
    def available_is_balance_minus_open_holds(self) -> None:
        for account in set(self.m_balance) | set(self.book.held):
            open_sum = sum(h.amount for h in self.book.holds.values() if h.account == account)
            model_sum = sum(h.amount for h in self.m_holds.values() if h.account == account)
            assert open_sum == model_sum
            assert self.book.available(account) == self.book.balance(account) - model_sum
            assert self.book.available(account) == self.m_available(account)
        assert set(self.book.holds) == set(self.m_holds)

    @invariant()
    def book_matches_model(self) -> None:
        assert {a: self.book.balance(a) for a in self.m_balance} == self.m_balance
        assert all(v == 0 for a, v in self.book.balances.items() if a not in self.m_balance)

    @invariant()
    def book_matches_store(self) -> None:
        stored = dict(self.store.reader_conn.execute("SELECT id, balance FROM accounts"))
        assert stored == {a: self.book.balance(a) for a in stored}
        assert set(stored) >= {a for a, v in self.book.balances.items() if v}

    @invariant()
    def store_verifies(self) -> None:
        report = verify_store(self.store.reader_conn)
        assert report.ok, report.violations

    @invariant()
    def charges_add_up(self) -> None:
        assert self.charged + self.overrun == self.costs
        assert self.m_balance[REVENUE] == self.costs
        assert -self.m_balance[OVERRUN] == self.overrun
        assert sum(self.book.balances.values()) == 0

    @invariant()
    def caps_hold(self) -> None:
        for i, (cap, m) in enumerate(zip(self.caps, self.m_caps, strict=True)):
            assert cap.held == m.held
            remaining = cap.room(self.clock.now())
            assert remaining == self.m_cap_remaining(i)
            assert remaining is not None and remaining >= 0
            assert cap.usage.total == sum(a for _, a in m.spent)


LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestLedgerModel = LedgerMachine.TestCase
