"""Credit lots: where an organization's balance came from, and in what order it is spent.

Every credit that enters a wallet (a purchase, its bonus, an administrator's grant, a
trial) is a lot with an amount and an expiry. Spending draws from the live lots in one
documented order:

    promotional lots (bonuses, grants, trial credit) before paid ones,
    then the soonest expiry first (lots that never expire last),
    then the oldest first.

So a customer's paid credit, the only kind that can be refunded, is kept longest, and
what expires soonest is used before it can expire. The sum of the lots' remaining
amounts is the wallet's balance at every moment; `ledger verify` checks it.

Lots are a sub-ledger of the wallet: drawing moves no money between accounts, so it
posts no entry. What a lot has left is therefore derived, not stored: replaying the
wallet's entries in order through `Lots` reproduces it exactly, which is how a restart
rebuilds them and how verify re-derives them. Exactly means in the order the book saw
them: a lot that joined the book only after its entry committed carries the entry id it
became spendable after (`visible_after`), and the replay lets no earlier entry draw from it. Expiry and refunds do move money (wallet →
expired, wallet → refunds) and name the lot they take from.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

KINDS = ("purchase", "bonus", "grant", "trial")
PROMOTIONAL = frozenset({"bonus", "grant", "trial"})
NEVER = 2**63 - 1  # the expiry of a lot that never expires, so it sorts last


@dataclass(slots=True)
class Lot:
    id: int                      # creation order within the store; ties in the draw order break by it
    kind: str
    amount: int                  # nano-dollars credited
    created_at_ms: int
    expires_at_ms: int | None    # None: never
    remaining: int = -1          # -1 means "the whole amount" at construction
    purchase: str | None = None  # the purchase a purchase or bonus lot belongs to (refunds)

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.amount > 0
        if self.remaining == -1:
            self.remaining = self.amount
        assert 0 <= self.remaining <= self.amount

    @property
    def promotional(self) -> bool:
        return self.kind in PROMOTIONAL

    def order(self) -> tuple[int, int, int]:
        expiry = NEVER if self.expires_at_ms is None else self.expires_at_ms
        return (0 if self.promotional else 1, expiry, self.id)


@dataclass(slots=True)
class Lots:
    """One organization's lots. Live lots are kept sorted in draw order, so a draw starts at
    the front: one charge usually touches one lot, whatever the number of lots."""

    live: list[Lot] = field(default_factory=list)
    _keys: list[tuple[int, int, int]] = field(default_factory=list)
    by_id: dict[int, Lot] = field(default_factory=dict)

    def add(self, lot: Lot) -> None:
        assert lot.id not in self.by_id, lot.id
        self.by_id[lot.id] = lot
        if lot.remaining:
            key = lot.order()
            i = bisect.bisect(self._keys, key)
            self._keys.insert(i, key)
            self.live.insert(i, lot)

    def total(self) -> int:
        return sum(lot.remaining for lot in self.live)

    def draw(self, amount: int) -> list[tuple[int, int]]:
        """Spend `amount` from the live lots in draw order; returns (lot id, amount) pairs.
        The caller has checked the wallet can pay: drawing more than the lots hold is a bug."""
        assert amount > 0
        taken: list[tuple[int, int]] = []
        while amount:
            assert self.live, f"drawing {amount} more than the lots hold"
            lot = self.live[0]
            part = min(amount, lot.remaining)
            lot.remaining -= part
            amount -= part
            taken.append((lot.id, part))
            if not lot.remaining:
                self._drop(0)
        return taken

    def plan(self, amount: int) -> list[tuple[Lot, int]]:
        """What `draw(amount)` would take, lot by lot, without taking it."""
        parts: list[tuple[Lot, int]] = []
        for lot in self.live:
            if not amount:
                break
            part = min(amount, lot.remaining)
            parts.append((lot, part))
            amount -= part
        assert not amount, "planning to draw more than the lots hold"
        return parts

    def rekey(self, old: int, new: int) -> None:
        """Give a lot made before its entry was stored (a transfer's) the stored entry's id.
        The new id sorts where the old one did: both are above every stored id before them."""
        lot = self.by_id.pop(old)
        lot.id = new
        self.by_id[new] = lot
        for i, live in enumerate(self.live):
            if live is lot:
                self._keys[i] = lot.order()
                assert (i == 0 or self._keys[i - 1] <= self._keys[i]) and (
                    i + 1 == len(self._keys) or self._keys[i] <= self._keys[i + 1]), "rekey moved a lot"
                break

    def remove(self, lot_id: int) -> None:
        """Forget a lot whose entry could not be stored (its whole amount must be left)."""
        lot = self.by_id.pop(lot_id)
        assert lot.remaining == lot.amount, lot
        self._drop(self.live.index(lot))

    def take(self, lot_id: int, amount: int) -> None:
        """Take `amount` from one named lot (its expiry, or a refund of its purchase)."""
        lot = self.by_id[lot_id]
        assert 0 < amount <= lot.remaining, (lot_id, amount, lot.remaining)
        lot.remaining -= amount
        if not lot.remaining:
            self._drop(self.live.index(lot))

    def give_back(self, taken: list[tuple[int, int]]) -> None:
        """Undo a draw (a charge whose entries could not be committed)."""
        for lot_id, amount in taken:
            lot = self.by_id[lot_id]
            if not lot.remaining:
                lot.remaining = amount
                key = lot.order()
                i = bisect.bisect(self._keys, key)
                self._keys.insert(i, key)
                self.live.insert(i, lot)
            else:
                lot.remaining += amount
            assert lot.remaining <= lot.amount

    def expiring(self, at_ms: int) -> list[Lot]:
        """Live lots whose expiry has passed, soonest first."""
        return [lot for lot in self.live if lot.expires_at_ms is not None and lot.expires_at_ms <= at_ms]

    def _drop(self, i: int) -> None:
        del self.live[i]
        del self._keys[i]


def replay(entries: Iterable[tuple[int, str, str, int, int, str]],
           stored: dict[int, tuple[str, int | None, str | None]],
           visible_after: Mapping[int, int] | None = None) -> dict[str, Lots]:
    """Rebuild every wallet's lots from its entries, in id order: (id, from, to, amount,
    created_at ms, reference) rows, the stored lot rows by entry id (kind, expiry,
    purchase), and, by entry id, the entry id after which a lot became spendable
    (`visible_after`). Credit without a stored lot (older databases) is a grant that never
    expires; an `expire:lot:<id>...` or `refund:lot:<id>...` entry takes from the lot it
    names (as does a `transfer:lot:<id>...` entry, whose credit becomes a lot of the same kind,
    expiry and purchase in the receiving wallet); any other money out of a wallet is drawn in order. Raises AssertionError when
    the entries spend more than the lots hold, or name a lot they could not see.

    A lot with a `visible_after` joins the live lots only when the replay passes that id, so
    an entry the book applied before the lot was there (a charge settled while the lot's
    entry was committing: a higher id, yet it could not draw from it) does not draw from it
    here either. Without one, a lot is live from its own entry on."""
    visible = visible_after or {}
    wallets: dict[str, Lots] = {}
    waiting: list[tuple[int, int, str, Lot]] = []  # heap of (visible after, lot id, wallet, lot)
    for entry_id, source, target, amount, created_at, reference in entries:
        while waiting and waiting[0][0] < entry_id:
            _, _, account, lot = heapq.heappop(waiting)
            wallets[account].add(lot)
        if target.endswith(":wallet"):
            kind, expires, purchase = stored.get(entry_id, ("grant", None, None))
            lot = Lot(entry_id, kind, amount, created_at, expires, purchase=purchase)
            lots = wallets.setdefault(target, Lots())
            after = visible.get(entry_id, entry_id)
            if after > entry_id:
                heapq.heappush(waiting, (after, entry_id, target, lot))
            else:
                lots.add(lot)
        if source.endswith(":wallet"):
            lots = wallets.setdefault(source, Lots())
            named = named_lot(reference)
            if named is None:
                lots.draw(amount)
            else:
                assert named in lots.by_id, f"entry {entry_id} takes from lot {named}, not (yet) in {source}"
                lots.take(named, amount)
    for _, _, account, lot in waiting:  # visible after the last wallet entry: nothing drew from them
        wallets[account].add(lot)
    return wallets


def named_lot(reference: str) -> int | None:
    """The lot an entry takes from by name: `expire:lot:<id>...`, `refund:lot:<id>...` or
    `transfer:lot:<id>...`."""
    parts = reference.split(":")
    if len(parts) >= 3 and parts[0] in ("expire", "refund", "transfer") and parts[1] == "lot":
        return int(parts[2])
    return None
