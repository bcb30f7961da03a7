"""The book: holds against wallets and key caps, settlement, release, expiry, revert."""

from __future__ import annotations

import calendar
import copy

import pytest

from farebox.clock import FakeClock
from farebox.ledger.book import Book, Hold, Settlement, Shortfall
from farebox.ledger.caps import Cap, key_cap
from farebox.ledger.entries import GRANTS, OVERRUN, REVENUE, SYSTEM_ACCOUNTS, Entry, is_floored, wallet

W = wallet(1)
W2 = wallet(2)
TIMEOUT = 900.0
MIDNIGHT = calendar.timegm((2026, 3, 4, 0, 0, 0, 0, 0, 0))  # a Wednesday


def make_book(balance: int = 1000, clock: FakeClock | None = None, account: str = W) -> Book:
    book = Book(clock or FakeClock(), TIMEOUT)
    if balance:
        book.apply(Entry("grant", GRANTS, account, balance, f"grant:{account}", 0, 1))
    return book


_seq = iter(range(10**9))


def settle(book: Book, hold: Hold, cost: int) -> Settlement:
    gid = f"gen-{next(_seq)}"
    return book.settle(hold, cost, reference=f"charge:{gid}", created_at=book.clock.now_ms(), org_id=1,
                       key_hash="k", generation_id=gid)


def assert_consistent(book: Book) -> None:
    """available == balance − open holds, for every account; floors hold; all sums to zero."""
    open_by_account: dict[str, int] = {}
    for h in book.holds.values():
        assert h.open
        open_by_account[h.account] = open_by_account.get(h.account, 0) + h.amount
    for account in set(book.balances) | set(book.held):
        assert book.held.get(account, 0) == open_by_account.get(account, 0)
        assert book.available(account) == book.balance(account) - open_by_account.get(account, 0)
        if is_floored(account):
            assert book.balance(account) >= 0
            assert book.available(account) >= 0
    assert sum(book.balances.values()) == 0


# -- holds ---------------------------------------------------------------------------

def test_hold_within_available() -> None:
    book = make_book(1000)
    h = book.hold("a", W, 600)
    assert (h.amount, h.account, h.open, h.expired) == (600, W, True, False)
    assert book.balance(W) == 1000
    assert book.available(W) == 400
    book.hold("b", W, 400)  # exactly what is left
    assert book.available(W) == 0
    book.hold("c", W, 0)    # a zero hold always fits
    assert_consistent(book)


def test_hold_beyond_available_raises_wallet_shortfall() -> None:
    book = make_book(1000)
    book.hold("a", W, 700)
    with pytest.raises(Shortfall) as info:
        book.hold("b", W, 301)
    assert (info.value.scope, info.value.available, info.value.period) == ("wallet", 300, None)
    assert "b" not in book.holds
    assert book.available(W) == 300
    assert_consistent(book)


def test_hold_on_unknown_or_empty_wallet() -> None:
    book = make_book(0)
    with pytest.raises(Shortfall) as info:
        book.hold("a", W, 1)
    assert (info.value.scope, info.value.available) == ("wallet", 0)


def test_holds_on_one_wallet_do_not_touch_another() -> None:
    book = make_book(1000)
    book.apply(Entry("grant", GRANTS, W2, 50, "grant:2", 0, 2))
    book.hold("a", W, 1000)
    book.hold("b", W2, 50)
    assert (book.available(W), book.available(W2)) == (0, 0)
    assert_consistent(book)


def test_lifetime_key_cap() -> None:
    book = make_book(10_000)
    cap = key_cap(limit=500)
    h = book.hold("a", W, 300, (cap,))
    assert cap.held == 300
    with pytest.raises(Shortfall) as info:
        book.hold("b", W, 201, (cap,))
    assert (info.value.scope, info.value.available, info.value.period) == ("key", 200, "lifetime")
    settle(book, h, 250)
    assert (cap.held, cap.usage.total) == (0, 250)
    assert cap.room(book.clock.now()) == 250
    with pytest.raises(Shortfall):
        book.hold("c", W, 251, (cap,))
    book.hold("d", W, 250, (cap,))
    assert cap.room(book.clock.now()) == 0


def test_wallet_is_checked_before_the_key() -> None:
    book = make_book(100)
    with pytest.raises(Shortfall) as info:
        book.hold("a", W, 200, (key_cap(limit=50),))
    assert info.value.scope == "wallet"


def test_key_cap_without_limit_never_refuses() -> None:
    book = make_book(100)
    cap = key_cap()
    book.hold("a", W, 100, (cap,))
    assert cap.held == 100 and cap.room(book.clock.now()) is None


def test_daily_key_cap_frees_up_after_midnight() -> None:
    clock = FakeClock(MIDNIGHT - 60)
    book = make_book(10_000, clock)
    cap = key_cap(limit=100, reset="daily")
    settle(book, book.hold("a", W, 100, (cap,)), 100)
    with pytest.raises(Shortfall) as info:
        book.hold("b", W, 1, (cap,))
    assert (info.value.scope, info.value.available, info.value.period) == ("key", 0, "daily")
    clock.advance(59)
    with pytest.raises(Shortfall):
        book.hold("b", W, 1, (cap,))
    clock.advance(1)  # midnight UTC
    h = book.hold("b", W, 100, (cap,))
    assert cap.room(clock.now()) == 0
    assert cap.usage.total == 100
    book.release(h)
    assert cap.room(clock.now()) == 100


def test_cap_counts_open_holds_across_midnight() -> None:
    # A hold placed before midnight still reserves against the cap after it.
    clock = FakeClock(MIDNIGHT - 1)
    book = make_book(10_000, clock)
    cap = key_cap(limit=100, reset="daily")
    h = book.hold("a", W, 80, (cap,))
    clock.advance(1)
    with pytest.raises(Shortfall):
        book.hold("b", W, 21, (cap,))
    settle(book, h, 80)  # charged after midnight: counts in the new day
    assert cap.room(clock.now()) == 20


# -- resize --------------------------------------------------------------------------

def test_resize_up_and_down() -> None:
    book = make_book(1000)
    cap = key_cap(limit=800)
    h = book.hold("a", W, 300, (cap,))
    book.resize(h, 800)
    assert (h.amount, book.available(W), cap.held) == (800, 200, 800)
    book.resize(h, 100)
    assert (h.amount, book.available(W), cap.held) == (100, 900, 100)
    book.resize(h, 0)
    assert (h.amount, book.available(W), cap.held) == (0, 1000, 0)
    assert_consistent(book)


def test_resize_beyond_available_is_refused_and_changes_nothing() -> None:
    book = make_book(1000)
    book.hold("other", W, 500)
    h = book.hold("a", W, 300)
    with pytest.raises(Shortfall) as info:
        book.resize(h, 701)
    assert (info.value.scope, info.value.available) == ("wallet", 200)
    assert h.amount == 300 and h.open
    assert book.available(W) == 200
    book.resize(h, 500)  # exactly the rest fits
    assert book.available(W) == 0
    assert_consistent(book)


def test_resize_beyond_key_cap_is_refused_and_changes_nothing() -> None:
    book = make_book(1000)
    cap = key_cap(limit=400)
    h = book.hold("a", W, 300, (cap,))
    with pytest.raises(Shortfall) as info:
        book.resize(h, 401)
    assert (info.value.scope, info.value.available) == ("key", 100)
    assert (h.amount, cap.held, book.available(W)) == (300, 300, 700)


# -- settle --------------------------------------------------------------------------

def test_settle_below_hold_releases_the_rest() -> None:
    book = make_book(1000)
    cap = key_cap(limit=1000)
    h = book.hold("a", W, 600, (cap,))
    s = settle(book, h, 250)
    assert (s.charged, s.overrun) == (250, 0)
    assert len(s.entries) == 1
    e = s.entries[0]
    assert (e.kind, e.from_account, e.to_account, e.amount) == ("charge", W, REVENUE, 250)
    assert (e.org_id, e.key_hash) == (1, "k")
    assert e.reference == f"charge:{e.generation_id}"
    assert not h.open and "a" not in book.holds
    assert book.balance(W) == 750 and book.available(W) == 750
    assert book.balance(REVENUE) == 250
    assert (cap.held, cap.usage.total) == (0, 250)
    assert_consistent(book)


def test_settle_equal_to_hold() -> None:
    book = make_book(1000)
    h = book.hold("a", W, 1000)
    s = settle(book, h, 1000)
    assert (s.charged, s.overrun, len(s.entries)) == (1000, 0, 1)
    assert book.balance(W) == 0 and book.available(W) == 0
    assert_consistent(book)


def test_settle_zero_posts_nothing() -> None:
    book = make_book(1000)
    cap = key_cap(limit=10)
    h = book.hold("a", W, 10, (cap,))
    s = settle(book, h, 0)
    assert (s.entries, s.charged, s.overrun) == ([], 0, 0)
    assert book.balance(W) == 1000 and cap.held == 0 and cap.usage.total == 0


def test_settle_above_hold_charges_the_hold_and_flags_the_overrun() -> None:
    book = make_book(1000)
    cap = key_cap(limit=1000)
    h = book.hold("a", W, 400, (cap,))
    s = settle(book, h, 1500)  # more than the hold and more than the whole balance
    assert (s.charged, s.overrun) == (400, 1100)
    charge, overrun = s.entries
    assert (charge.kind, charge.from_account, charge.to_account, charge.amount) == ("charge", W, REVENUE, 400)
    assert (overrun.kind, overrun.from_account, overrun.to_account, overrun.amount) == (
        "overrun", OVERRUN, REVENUE, 1100)
    assert overrun.memo and "beyond the hold" in overrun.memo
    assert overrun.reference == charge.reference + ":overrun"
    assert overrun.generation_id == charge.generation_id
    assert book.balance(W) == 600
    assert book.balance(OVERRUN) == -1100
    assert book.balance(REVENUE) == 1500
    assert cap.usage.total == 400  # the key is charged what the wallet paid
    assert_consistent(book)


def test_settle_above_a_zero_hold_is_all_overrun() -> None:
    book = make_book(1000)
    s = settle(book, book.hold("a", W, 0), 7)
    assert (s.charged, s.overrun) == (0, 7)
    assert [e.kind for e in s.entries] == ["overrun"]
    assert book.balance(W) == 1000


def test_concurrent_holds_never_overdraw() -> None:
    book = make_book(1000)
    holds = []
    for i in range(20):
        try:
            holds.append(book.hold(f"h{i}", W, 150))
        except Shortfall:
            pass
    assert len(holds) == 6
    for h in holds:
        settle(book, h, 10_000)  # every upstream bills far beyond its hold
    assert book.balance(W) == 100
    assert_consistent(book)


# -- expiry --------------------------------------------------------------------------

def test_expire_old_with_fake_clock() -> None:
    clock = FakeClock()
    book = make_book(1000, clock)
    cap = key_cap(limit=1000)
    old = book.hold("old", W, 300, (cap,))
    clock.advance(TIMEOUT / 2)
    young = book.hold("young", W, 200)
    assert book.oldest_hold_age() == TIMEOUT / 2
    clock.advance(TIMEOUT / 2)
    assert book.expire_old() == []  # exactly the timeout is not yet older than it
    clock.advance(0.001)
    expired = book.expire_old()
    assert expired == [old]
    assert old.expired and not old.open and "old" not in book.holds
    assert young.open and not young.expired
    assert book.available(W) == 800 and cap.held == 0
    assert book.oldest_hold_age() == pytest.approx(TIMEOUT / 2 + 0.001)
    clock.advance(TIMEOUT)
    assert book.expire_old() == [young]
    assert book.oldest_hold_age() == 0.0
    assert book.expire_old() == []
    assert book.balance(W) == 1000 == book.available(W)
    assert_consistent(book)


def test_oldest_hold_age() -> None:
    clock = FakeClock()
    book = make_book(1000, clock)
    assert book.oldest_hold_age() == 0.0
    a = book.hold("a", W, 1)
    clock.advance(10)
    book.hold("b", W, 1)
    clock.advance(5)
    assert book.oldest_hold_age() == 15
    book.release(a)
    assert book.oldest_hold_age() == 5


def test_settle_after_expiry_charges_only_what_is_available() -> None:
    clock = FakeClock()
    book = make_book(1000, clock)
    h = book.hold("a", W, 600)
    clock.advance(TIMEOUT + 1)
    assert book.expire_old() == [h]
    other = book.hold("b", W, 700)  # the expired hold's reservation was given to another request
    s = settle(book, h, 500)
    assert (s.charged, s.overrun) == (300, 200)
    assert book.balance(W) == 700 and book.available(W) == 0
    settle(book, other, 700)
    assert book.balance(W) == 0
    assert_consistent(book)


def test_settle_after_expiry_within_available_is_charged_in_full() -> None:
    clock = FakeClock()
    book = make_book(1000, clock)
    h = book.hold("a", W, 600)
    clock.advance(TIMEOUT + 1)
    book.expire_old()
    s = settle(book, h, 800)  # still at most the hold
    assert (s.charged, s.overrun) == (600, 200)
    assert book.balance(W) == 400


def test_settle_after_expiry_respects_the_key_cap() -> None:
    clock = FakeClock()
    book = make_book(10_000, clock)
    cap = key_cap(limit=100)
    late = book.hold("late", W, 100, (cap,))
    clock.advance(TIMEOUT + 1)
    book.expire_old()
    settle(book, book.hold("next", W, 100, (cap,)), 100)  # the cap's room went to the next request
    s = settle(book, late, 100)
    assert cap.usage.total <= cap.limits["lifetime"]
    assert s.charged + s.overrun == 100


# -- release and revert ---------------------------------------------------------------

def test_release() -> None:
    book = make_book(1000)
    cap = key_cap(limit=500)
    h = book.hold("a", W, 500, (cap,))
    book.release(h)
    assert not h.open and "a" not in book.holds
    assert book.available(W) == 1000 and cap.held == 0 and cap.usage.total == 0
    book.release(h)  # releasing twice is harmless
    assert book.available(W) == 1000 and cap.held == 0
    assert_consistent(book)


def _snapshot(book: Book, cap: Cap) -> tuple:
    return (dict(book.balances), dict(book.inflow), dict(book.outflow), copy.deepcopy(cap.usage))


@pytest.mark.parametrize("cost", [0, 1, 250, 400, 5000])
def test_revert_undoes_a_settlement_exactly(cost: int) -> None:
    clock = FakeClock(MIDNIGHT + 3600)
    book = make_book(1000, clock)
    cap = key_cap(limit=1000, reset="daily")
    settle(book, book.hold("earlier", W, 100, (cap,)), 60)
    before = _snapshot(book, cap)
    h = book.hold("a", W, 400, (cap,))
    s = settle(book, h, cost)
    book.revert(s)
    balances, inflow, outflow, usage = before
    assert book.balances == balances
    assert {a: v for a, v in book.inflow.items() if v or a in inflow} == inflow
    assert {a: v for a, v in book.outflow.items() if v or a in outflow} == outflow
    assert cap.usage.total == usage.total
    for period in ("daily", "weekly", "monthly"):
        assert cap.usage.in_period(period, clock.now()) == usage.in_period(period, clock.now())
    assert cap.held == 0 and book.available(W) == balances[W]
    assert_consistent(book)


def test_revert_across_midnight_does_not_raise_the_cap() -> None:
    clock = FakeClock(MIDNIGHT - 1)
    book = make_book(10_000, clock)
    cap = key_cap(limit=100, reset="daily")
    s = settle(book, book.hold("a", W, 100, (cap,)), 100)  # settled at 23:59:59
    clock.advance(2)                                     # the commit fails after midnight
    book.revert(s)
    assert cap.usage.in_period("daily", clock.now()) == 0
    assert cap.room(clock.now()) == 100


def test_load_sets_balances() -> None:
    book = Book(FakeClock(), TIMEOUT)
    assert all(book.balance(a) == 0 for a in SYSTEM_ACCOUNTS)
    book.load({W: 70, GRANTS: -70}, {W: 70}, {GRANTS: 70})
    assert book.balance(W) == 70 and book.available(W) == 70
    book.hold("a", W, 70)
    assert_consistent(book)


def test_apply_refuses_to_overdraw_a_wallet() -> None:
    book = make_book(10)
    with pytest.raises(AssertionError):
        book.apply(Entry("charge", W, REVENUE, 11, "x", 0, 1))


def test_resizing_an_expired_hold_reserves_it_afresh() -> None:
    clock = FakeClock()
    book = make_book(1000, clock)
    h = book.hold("a", W, 300)
    clock.advance(TIMEOUT + 1)
    book.expire_old()
    assert not h.open and book.available(W) == 1000
    book.resize(h, 400)
    assert h.open and book.available(W) == 600 and "a" in book.holds
    with pytest.raises(Shortfall):
        book.resize(h, 1001)
    assert_consistent(book)


def test_a_hold_settles_once() -> None:
    book = make_book(1000)
    h = book.hold("a", W, 300)
    settle(book, h, 100)
    with pytest.raises(AssertionError):
        settle(book, h, 100)
    assert book.balance(W) == 900


# -- credit lots ------------------------------------------------------------------------

def test_a_charge_draws_from_the_lots_in_order_and_a_revert_gives_it_back():
    from farebox.ledger.lots import Lot

    book = Book(FakeClock(), TIMEOUT)
    book.apply(Entry("purchase", GRANTS, W, 1000, "p", 0, 1), Lot(10, "purchase", 1000, 0, None))
    book.apply(Entry("bonus", GRANTS, W, 100, "b", 0, 1), Lot(11, "bonus", 100, 0, None))
    hold = book.hold("g", W, 500)
    settlement = settle(book, hold, 300)
    assert settlement.draws == [(11, 100), (10, 200)]  # promotional first
    assert book.lots[W].total() == book.balance(W) == 800
    book.revert(settlement)
    assert book.lots[W].total() == book.balance(W) == 1100
    assert [(lot.id, lot.remaining) for lot in book.lots[W].live] == [(11, 100), (10, 1000)]


def test_credit_without_a_stored_lot_is_a_never_expiring_grant():
    book = make_book(250)
    [lot] = book.lots[W].live
    assert (lot.kind, lot.expires_at_ms, lot.remaining) == ("grant", None, 250) and lot.id < 0


def test_a_hold_releases_exactly_what_it_reserved_even_if_a_cap_changes_meanwhile() -> None:
    """A key's include_byok_in_limit (or a workspace's) may change while BYOK requests run:
    each hold gives back what it took from each cap, not what the cap would take now."""
    book = make_book(10_000)
    counted = key_cap(limit=5_000, include_byok=True)
    plain = Cap("workspace", "w", {"daily": 5_000})
    h = book.hold("a", W, 100, (counted, plain), byok=2_000)
    assert (counted.held, plain.held, book.available(W)) == (2_100, 100, 9_900)
    counted.include_byok = False
    plain.include_byok = True
    book.resize(h, 150, 2_500)      # the growth is reserved by today's rule...
    assert (counted.held, plain.held) == (2_150, 650)   # +50 on both, +500 BYOK on the workspace now
    book.release(h)                 # ...and everything reserved comes back
    assert (counted.held, plain.held, book.available(W)) == (0, 0, 10_000)
