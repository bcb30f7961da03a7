"""Sticky routing: which conversations stick, for how long, and the memory bound."""

from __future__ import annotations

from farebox.catalog.load import parse_layers
from farebox.catalog.simulated import sim_catalog
from farebox.clock import FakeClock
from farebox.routing.sticky import Sticky, caches, conversation_key

_, MODELS = parse_layers([("t", sim_catalog("http://sim/v1"))])
CACHED = MODELS["sim/small"].endpoints[0]            # cache reads at half the prompt price
UNCACHED = MODELS["sim/open"].endpoints[0]           # the budget provider: no cache price


def test_conversation_keys():
    assert conversation_key({"session_id": "s1", "messages": []}) == "session_id:s1"
    assert conversation_key({"prompt_cache_key": "k"}) == "prompt_cache_key:k"
    a = conversation_key({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q1"},
                                       {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]})
    b = conversation_key({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q1"}]})
    c = conversation_key({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "other"}]})
    assert a == b != c and a.startswith("hash:")
    assert conversation_key({"messages": []}) is None


def test_only_endpoints_with_cheaper_cache_reads_stick():
    assert caches(CACHED) and not caches(UNCACHED)
    sticky = Sticky(FakeClock())
    sticky.served((1, "m", "session_id:s"), UNCACHED, cache_hit=True)
    assert sticky.get((1, "m", "session_id:s")) is None


def test_named_sessions_stick_at_once_hashed_ones_after_a_cache_hit():
    sticky = Sticky(FakeClock())
    sticky.served((1, "m", "session_id:s"), CACHED, cache_hit=False)
    assert sticky.get((1, "m", "session_id:s")) == CACHED.id
    sticky.served((1, "m", "hash:h"), CACHED, cache_hit=False)
    assert sticky.get((1, "m", "hash:h")) is None
    sticky.served((1, "m", "hash:h"), CACHED, cache_hit=True)
    assert sticky.get((1, "m", "hash:h")) == CACHED.id
    assert sticky.get((2, "m", "hash:h")) is None  # per organization


def test_ten_minutes_idle_forgets_and_each_success_refreshes():
    clock = FakeClock()
    sticky = Sticky(clock, idle_s=600)
    key = (1, "m", "session_id:s")
    sticky.served(key, CACHED, cache_hit=False)
    clock.advance(590)
    assert sticky.get(key) == CACHED.id
    sticky.served(key, CACHED, cache_hit=False)
    clock.advance(590)
    assert sticky.get(key) == CACHED.id
    clock.advance(11)
    assert sticky.get(key) is None and len(sticky) == 0


def test_bounded_least_recently_used_first():
    sticky = Sticky(FakeClock(), entries_max=2)
    for i in range(3):
        sticky.served((i, "m", "session_id:s"), CACHED, cache_hit=False)
    assert len(sticky) == 2 and sticky.get((0, "m", "session_id:s")) is None
