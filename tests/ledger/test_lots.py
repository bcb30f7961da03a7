"""Credit lots: the draw order, named takes, undoing a draw, and a hypothesis comparison
with a naive reference that re-sorts every lot on every draw."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farebox.ledger.lots import NEVER, Lot, Lots

DAY = 86_400_000


def lot(i: int, kind: str, amount: int, expires: int | None = None) -> Lot:
    return Lot(id=i, kind=kind, amount=amount, created_at_ms=i, expires_at_ms=expires)


def test_promotional_credit_is_spent_before_paid_credit():
    lots = Lots()
    lots.add(lot(1, "purchase", 100, expires=DAY))
    lots.add(lot(2, "bonus", 10, expires=5 * DAY))
    assert lots.draw(15) == [(2, 10), (1, 5)]
    assert lots.total() == 95 and [x.id for x in lots.live] == [1]


def test_then_soonest_expiry_then_oldest_and_never_expiring_last():
    lots = Lots()
    lots.add(lot(1, "purchase", 10))                    # never expires
    lots.add(lot(2, "purchase", 10, expires=9 * DAY))
    lots.add(lot(3, "purchase", 10, expires=3 * DAY))
    lots.add(lot(4, "purchase", 10, expires=3 * DAY))   # same expiry as 3, younger
    assert [x.id for x in lots.live] == [3, 4, 2, 1]
    assert lots.draw(25) == [(3, 10), (4, 10), (2, 5)]


def test_take_from_a_named_lot_and_expiring():
    lots = Lots()
    lots.add(lot(1, "grant", 50, expires=DAY))
    lots.add(lot(2, "purchase", 50, expires=10 * DAY))
    assert [x.id for x in lots.expiring(DAY)] == [1] and lots.expiring(DAY - 1) == []
    lots.take(1, 50)
    assert [x.id for x in lots.live] == [2] and lots.total() == 50
    with pytest.raises(AssertionError):
        lots.take(2, 51)


def test_give_back_undoes_a_draw_exactly():
    lots = Lots()
    lots.add(lot(1, "bonus", 5))
    lots.add(lot(2, "purchase", 20))
    taken = lots.draw(12)
    assert taken == [(1, 5), (2, 7)] and lots.total() == 13
    lots.give_back(taken)
    assert lots.total() == 25 and [x.id for x in lots.live] == [1, 2]
    assert [x.remaining for x in lots.live] == [5, 20]


def test_drawing_more_than_the_lots_hold_is_a_bug():
    lots = Lots()
    lots.add(lot(1, "purchase", 5))
    with pytest.raises(AssertionError):
        lots.draw(6)


KIND = st.sampled_from(["purchase", "bonus", "grant", "trial"])
EXPIRY = st.one_of(st.none(), st.integers(1, 30).map(lambda d: d * DAY))
ACTION = st.one_of(
    st.tuples(st.just("add"), KIND, st.integers(1, 1_000), EXPIRY),
    st.tuples(st.just("draw"), st.integers(1, 1_500)),
    st.tuples(st.just("undo")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTION, max_size=60))
def test_matches_a_naive_reference(actions):
    lots = Lots()
    reference: list[Lot] = []
    remaining: dict[int, int] = {}
    last: list[tuple[int, int]] = []
    next_id = 1
    for action in actions:
        if action[0] == "add":
            _, kind, amount, expires = action
            lots.add(lot(next_id, kind, amount, expires))
            reference.append(lot(next_id, kind, amount, expires))
            remaining[next_id] = amount
            next_id += 1
        elif action[0] == "draw":
            amount = min(action[1], sum(remaining.values()))
            if not amount:
                continue
            last = lots.draw(amount)
            expected, left = [], amount
            for ref in sorted(reference, key=lambda r: (not r.promotional,
                                                        NEVER if r.expires_at_ms is None else r.expires_at_ms, r.id)):
                part = min(left, remaining[ref.id])
                if part:
                    expected.append((ref.id, part))
                    remaining[ref.id] -= part
                    left -= part
            assert last == expected
        elif last:
            lots.give_back(last)
            for lot_id, part in last:
                remaining[lot_id] += part
            last = []
        assert lots.total() == sum(remaining.values())
        assert {x.id: x.remaining for x in lots.live} == {i: r for i, r in remaining.items() if r}
