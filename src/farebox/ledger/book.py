"""The book: posted balances and open holds, in memory, for the one process that owns them.

Every method here is synchronous and runs on the event loop, so a check and the
reservation that follows it can never interleave with another request's: this is what
makes overspending impossible, however many requests run at once. Durable state lives in
the store; the book is rebuilt from it at start-up. Holds are never stored: a crash
releases them, which is correct because nothing they reserved was charged.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from farebox.clock import Clock
from farebox.ledger.caps import Cap
from farebox.ledger.entries import OVERRUN, REVENUE, SYSTEM_ACCOUNTS, Entry, is_floored, is_wallet
from farebox.ledger.lots import Lot, Lots

# Lots made before their entry has an id (a transfer's) take ids from here until it does:
# above every stored id, in submission order, so they sort in the draw order where the
# stored ids will (see Lots.rekey).
PROVISIONAL_LOT = 2**62


class Shortfall(Exception):
    """A hold does not fit. `scope` names what refused it: "wallet", or a cap's scope ("key",
    "project", "workspace") with the cap's name and the period whose limit binds."""

    def __init__(self, scope: str, available: int, period: str | None = None, name: str | None = None) -> None:
        super().__init__(scope, available)
        self.scope, self.available, self.period, self.name = scope, available, period, name


@dataclass(slots=True)
class Hold:
    id: str
    account: str
    amount: int               # credit reserved on the wallet (and on every cap)
    caps: tuple[Cap, ...]
    created: float            # clock.monotonic()
    byok: int = 0             # BYOK list-price cost reserved on the caps that count it
    # What is reserved on each cap (parallel to `caps`): released exactly, even if a cap's
    # include_byok changes while the hold is open.
    reserved: list[int] = field(default_factory=list)
    open: bool = True
    expired: bool = False
    settled: bool = False


@dataclass(slots=True)  # a value, never changed; not frozen: docs/architecture.md
class Settlement:
    entries: list[Entry]
    charged: int   # what the wallet paid
    overrun: int   # what the upstream billed beyond the hold, paid by system:overrun
    settled_at: float  # clock.now(), so a revert takes usage back from the right windows
    draws: list[tuple[int, int]] = field(default_factory=list)  # (lot id, amount) the charge spent
    caps: tuple[Cap, ...] = ()   # the caps the charge counted against, so a revert can take it back
    byok: int = 0                # BYOK list-price cost counted on the caps that include it


class Book:
    def __init__(self, clock: Clock, hold_timeout_s: float) -> None:
        self.clock = clock
        self.hold_timeout_s = hold_timeout_s
        self.balances: dict[str, int] = dict.fromkeys(SYSTEM_ACCOUNTS, 0)
        self.inflow: dict[str, int] = {}
        self.outflow: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.holds: dict[str, Hold] = {}
        self.lots: dict[str, Lots] = {}   # wallet account -> its credit lots (sum = its balance)
        self.expiries: list[tuple[int, str, int]] = []  # heap of (expires_at_ms, wallet, lot id)
        self._synthetic_lot = 0            # ids for credit applied without a stored lot (tests, old rows)
        self._provisional_lot = PROVISIONAL_LOT  # ids of lots whose entry is not stored yet (transfers)
        self.spent: dict[str, int] = {}   # wallet -> what charges took from it (`total_usage`)
        # Called on every change of a wallet's balance, synchronously, as (wallet, before, after,
        # charged; negative when a charge is undone): low-balance alerts and auto top-up watch here. It must be cheap and must not
        # raise: it runs inside every settlement.
        self.watch: Callable[[str, int, int, int], None] | None = None

    # -- reading -----------------------------------------------------------------
    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def available(self, account: str) -> int:
        return self.balances.get(account, 0) - self.held.get(account, 0)

    # -- holds -------------------------------------------------------------------
    def _check(self, account: str, caps: tuple[Cap, ...], amount: int, byok: int) -> None:
        """Raise Shortfall unless `amount` more credit (and `byok` more BYOK cost) fits the
        wallet and every cap, checked in that order (the caps in the order given)."""
        available = self.available(account)
        if amount > available:
            raise Shortfall("wallet", available)
        if caps:
            now = self.clock.now()
            for cap in caps:
                room = cap.remaining(now)
                if room is not None and cap.reservation(amount, byok) > room[0]:
                    raise Shortfall(cap.scope, room[0], room[1], cap.name)

    def _reserve(self, hold: Hold, amount: int, byok: int) -> None:
        self.held[hold.account] = self.held.get(hold.account, 0) + amount
        if not hold.reserved:
            hold.reserved = [0] * len(hold.caps)
        for i, cap in enumerate(hold.caps):
            part = cap.reservation(amount, byok)
            cap.held += part
            hold.reserved[i] += part
            assert cap.held >= 0 and hold.reserved[i] >= 0
        hold.amount += amount
        hold.byok += byok

    def hold(self, hold_id: str, account: str, amount: int, caps: tuple[Cap, ...] = (), byok: int = 0) -> Hold:
        assert amount >= 0 and byok >= 0 and hold_id not in self.holds
        self._check(account, caps, amount, byok)
        hold = Hold(hold_id, account, 0, caps, self.clock.monotonic())
        self._reserve(hold, amount, byok)
        self.holds[hold_id] = hold
        return hold

    def resize(self, hold: Hold, amount: int, byok: int = 0) -> None:
        """Grow or shrink a hold, e.g. when failover moves to a dearer endpoint. A hold the
        sweeper expired meanwhile (a very long failover) is reserved afresh."""
        assert not hold.settled and amount >= 0 and byok >= 0
        if not hold.open:
            self._check(hold.account, hold.caps, amount, byok)
            hold.open, hold.expired, hold.amount, hold.byok = True, False, 0, 0
            hold.reserved = [0] * len(hold.caps)
            hold.created = self.clock.monotonic()
            self.holds[hold.id] = hold
        delta, delta_byok = amount - hold.amount, byok - hold.byok
        if delta > 0 or delta_byok > 0:
            self._check(hold.account, hold.caps, max(delta, 0), max(delta_byok, 0))
        self._reserve(hold, delta, delta_byok)

    def _close(self, hold: Hold) -> None:
        if not hold.open:
            return
        hold.open = False
        self.held[hold.account] -= hold.amount
        assert self.held[hold.account] >= 0
        for i, cap in enumerate(hold.caps):
            cap.held -= hold.reserved[i]
            hold.reserved[i] = 0
            assert cap.held >= 0, cap
        del self.holds[hold.id]

    def release(self, hold: Hold) -> None:
        self._close(hold)

    def expire_old(self) -> list[Hold]:
        cutoff = self.clock.monotonic() - self.hold_timeout_s
        old = [h for h in self.holds.values() if h.created < cutoff]
        for hold in old:
            hold.expired = True
            self._close(hold)
        return old

    def oldest_hold_age(self) -> float:
        now = self.clock.monotonic()
        return max((now - h.created for h in self.holds.values()), default=0.0)

    # -- posting -----------------------------------------------------------------
    def settle(self, hold: Hold, cost: int, *, reference: str, created_at: int,
               org_id: int | None, key_hash: str | None, generation_id: str, byok: int = 0) -> Settlement:
        """Turn a hold into a charge of `cost` (and `byok` BYOK list-price cost counted on the
        caps that include it). The wallet pays at most the hold: the customer never pays more
        than was reserved. Anything an upstream billed beyond it is posted from system:overrun,
        flagged, so it is seen and never silently absorbed."""
        assert cost >= 0 and byok >= 0 and not hold.settled, hold
        hold.settled = True
        was_open = hold.open
        self._close(hold)
        now = self.clock.now()
        ceiling = hold.amount
        if not was_open:
            # Expired: what it reserved may have gone to other requests since; pay only
            # what the wallet and every cap can still cover.
            ceiling = min(ceiling, max(self.available(hold.account), 0))
            for cap in hold.caps:
                room = cap.remaining(now)
                if room is not None:
                    ceiling = min(ceiling, max(room[0], 0))
        charged = min(cost, ceiling)
        overrun = cost - charged
        entries = []
        draws: list[tuple[int, int]] = []
        if charged:
            entries.append(Entry("charge", hold.account, REVENUE, charged, reference, created_at,
                                 org_id, key_hash, generation_id))
        if overrun:
            entries.append(Entry("overrun", OVERRUN, REVENUE, overrun, reference + ":overrun", created_at,
                                 org_id, key_hash, generation_id, memo="upstream billed beyond the hold"))
        for entry in entries:
            draws += self.apply(entry)
        for cap in hold.caps:
            cap.add(charged, byok, now)
        return Settlement(entries, charged, overrun, now, draws, hold.caps, byok)

    def apply(self, entry: Entry, lot: Lot | None = None, from_lot: int | None = None) -> list[tuple[int, int]]:
        """Post an entry to the balances. Credit into a wallet becomes a lot (`lot`, or a
        never-expiring grant lot when none is given); money out of a wallet is drawn from its
        lots in the draw order, or taken from `from_lot` (an expiry or a refund). Returns the
        draws, so a failed commit can give them back."""
        self.balances[entry.from_account] = self.balances.get(entry.from_account, 0) - entry.amount
        self.balances[entry.to_account] = self.balances.get(entry.to_account, 0) + entry.amount
        self.outflow[entry.from_account] = self.outflow.get(entry.from_account, 0) + entry.amount
        self.inflow[entry.to_account] = self.inflow.get(entry.to_account, 0) + entry.amount
        assert not is_floored(entry.from_account) or self.balances[entry.from_account] >= 0, entry
        if entry.kind == "charge":
            self.spent[entry.from_account] = self.spent.get(entry.from_account, 0) + entry.amount
        if self.watch is not None:
            for account, sign in ((entry.from_account, -1), (entry.to_account, 1)):
                if is_wallet(account):
                    after = self.balances[account]
                    self.watch(account, after - sign * entry.amount, after,
                               entry.amount if entry.kind == "charge" else 0)
        if is_wallet(entry.to_account):
            if lot is None:
                self._synthetic_lot -= 1  # negative: never confused with a stored entry's id
                lot = Lot(self._synthetic_lot, "grant", entry.amount, entry.created_at, None)
            assert lot.amount == entry.amount, (lot, entry)
            self.lots.setdefault(entry.to_account, Lots()).add(lot)
            if lot.expires_at_ms is not None:
                heapq.heappush(self.expiries, (lot.expires_at_ms, entry.to_account, lot.id))
        if is_wallet(entry.from_account):
            lots = self.lots.setdefault(entry.from_account, Lots())
            if from_lot is not None:
                lots.take(from_lot, entry.amount)
                return [(from_lot, entry.amount)]
            return lots.draw(entry.amount)
        return []

    def revert(self, settlement: Settlement) -> None:
        """Undo a settlement whose entries could not be committed."""
        for e in settlement.entries:
            self._unpost(e)
            if is_wallet(e.from_account) and settlement.draws:
                self.lots[e.from_account].give_back(settlement.draws)
        for cap in settlement.caps:
            cap.remove(settlement.charged, settlement.byok, settlement.settled_at)

    def revert_entry(self, entry: Entry, lot_id: int, into_lot: int | None = None) -> None:
        """Undo an expiry, refund or transfer taken from `lot_id` whose entry could not be
        committed; a transfer's receiving lot `into_lot` is forgotten."""
        self._unpost(entry)
        if into_lot is not None:
            self.lots[entry.to_account].remove(into_lot)
        self.lots[entry.from_account].give_back([(lot_id, entry.amount)])
        lot = self.lots[entry.from_account].by_id[lot_id]
        if lot.expires_at_ms is not None:
            heapq.heappush(self.expiries, (lot.expires_at_ms, entry.from_account, lot_id))

    def _unpost(self, e: Entry) -> None:
        self.balances[e.from_account] += e.amount
        self.balances[e.to_account] -= e.amount
        self.outflow[e.from_account] -= e.amount
        self.inflow[e.to_account] -= e.amount
        if e.kind == "charge":
            self.spent[e.from_account] -= e.amount
        if self.watch is not None and is_wallet(e.from_account):
            after = self.balances[e.from_account]
            self.watch(e.from_account, after - e.amount, after, -e.amount if e.kind == "charge" else 0)

    def provisional_lot_id(self) -> int:
        self._provisional_lot += 1
        return self._provisional_lot

    def rekey_lot(self, account: str, old: int, new: int) -> None:
        """A provisional lot's entry was stored as `new`."""
        lots = self.lots[account]
        lots.rekey(old, new)
        lot = lots.by_id[new]
        if lot.expires_at_ms is not None:
            heapq.heappush(self.expiries, (lot.expires_at_ms, account, new))  # the old id's entry is skipped

    def set_lots(self, lots: dict[str, Lots]) -> None:
        """Lots rebuilt from the store at start-up, with their pending expiries."""
        self.lots = lots
        self.expiries = [(lot.expires_at_ms, account, lot.id) for account, wallet_lots in lots.items()
                         for lot in wallet_lots.live if lot.expires_at_ms is not None]
        heapq.heapify(self.expiries)

    def expiring(self, now_ms: int) -> list[tuple[str, int, int]]:
        """(wallet, lot id, amount to expire now) for every lot past its expiry. The amount is
        what the lot has left, but never more than the wallet's open holds leave available: a
        request reserved before the expiry still gets paid, and the rest of the lot expires
        at a later sweep, when those holds have settled."""
        due: list[tuple[str, int, int]] = []
        keep: list[tuple[int, str, int]] = []
        taken: dict[str, int] = {}   # per wallet, what earlier lots of this sweep already expire
        while self.expiries and self.expiries[0][0] <= now_ms:
            expires, account, lot_id = heapq.heappop(self.expiries)
            lot = self.lots[account].by_id.get(lot_id)
            if lot is None or not lot.remaining:
                continue   # spent, or known by its stored id now
            amount = min(lot.remaining, max(self.available(account) - taken.get(account, 0), 0))
            if amount:
                due.append((account, lot_id, amount))
                taken[account] = taken.get(account, 0) + amount
            if amount < lot.remaining:
                keep.append((expires, account, lot_id))  # held back by open holds: next sweep
        for item in keep:
            heapq.heappush(self.expiries, item)
        return due

    def load(self, balances: dict[str, int], inflow: dict[str, int], outflow: dict[str, int],
             spent: dict[str, int] | None = None) -> None:
        self.spent.update(spent or {})
        self.balances.update(balances)
        self.inflow.update(inflow)
        self.outflow.update(outflow)
