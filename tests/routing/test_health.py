from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farebox.clock import FakeClock
from farebox.routing.health import EndpointStats, Health, Percentiles

EP = "sim-fast/sim-small"


def make(**options: float) -> tuple[Health, FakeClock]:
    clock = FakeClock()
    return Health(clock, **options), clock  # type: ignore[arg-type]


def answers(health: Health, outcome: str, count: int, endpoint: str = EP) -> None:
    for _ in range(count):
        health.record(endpoint, outcome)


# --- endpoints never seen --------------------------------------------------------------

def test_unknown_endpoint_is_healthy_and_has_no_stats() -> None:
    health, _ = make()
    assert health.state("nobody/none") == "ok"
    assert health.admit("nobody/none") is True
    assert health.stats("nobody/none") == EndpointStats(None, None, None, None, None)


def test_rate_limited_only_is_seen_but_counts_toward_nothing() -> None:
    health, _ = make()
    answers(health, "rate_limited", 10)
    assert health.state(EP) == "ok"
    assert health.admit(EP) is True
    assert health.stats(EP) == EndpointStats(None, None, None, None, None)


def test_unknown_outcome_and_negative_measures_are_refused() -> None:
    health, _ = make()
    with pytest.raises(AssertionError):
        health.record(EP, "timeout")
    with pytest.raises(AssertionError):
        health.record(EP, "ok", ttft_s=-0.1)
    with pytest.raises(AssertionError):
        health.record(EP, "ok", tokens_per_s=-1.0)


# --- uptime ----------------------------------------------------------------------------

def test_uptime_windows_differ_as_time_passes() -> None:
    health, clock = make()
    answers(health, "error", 1)         # t = 0
    answers(health, "ok", 1)
    clock.advance(2 * 3600)
    answers(health, "ok", 1)            # t = 2 h
    answers(health, "error", 2)
    answers(health, "ok", 1)
    clock.advance(20 * 60)
    answers(health, "ok", 3)            # t = 2 h 20 min
    answers(health, "error", 1)
    stats = health.stats(EP)
    assert stats.uptime_5m == pytest.approx(75.0)     # 3 ok, 1 error
    assert stats.uptime_30m == pytest.approx(62.5)    # 5 ok, 3 errors
    assert stats.uptime_1d == pytest.approx(60.0)     # 6 ok, 4 errors

    clock.advance(6 * 60)                   # t = 2 h 26 min
    stats = health.stats(EP)
    assert stats.uptime_5m is None
    assert stats.uptime_30m == pytest.approx(62.5)
    assert stats.uptime_1d == pytest.approx(60.0)

    clock.advance(40 * 60)                  # t = 3 h 6 min
    stats = health.stats(EP)
    assert (stats.uptime_5m, stats.uptime_30m) == (None, None)
    assert stats.uptime_1d == pytest.approx(60.0)

    clock.advance(22 * 3600)                # t = 25 h 6 min: the answers at t = 0 are gone
    assert health.stats(EP).uptime_1d == pytest.approx(62.5)
    clock.advance(2 * 3600)
    assert health.stats(EP) == EndpointStats(None, None, None, None, None)


def test_rate_limited_answers_are_excluded_from_uptime() -> None:
    health, _ = make()
    answers(health, "ok", 3)
    answers(health, "error", 1)
    answers(health, "rate_limited", 50)
    stats = health.stats(EP)
    assert stats.uptime_5m == stats.uptime_30m == stats.uptime_1d == pytest.approx(75.0)


def test_window_edges_follow_the_documented_precision() -> None:
    health, clock = make()
    clock.advance(10 - clock.monotonic() % 10)     # at the start of a 10 s bucket
    answers(health, "ok", 1)
    clock.advance(300)                             # exactly 5 min old: still counted
    assert health.stats(EP).uptime_5m == 100.0
    clock.advance(9.9)                             # 5 min 9.9 s: still in the oldest bucket
    assert health.stats(EP).uptime_5m == 100.0
    clock.advance(0.1)                             # 5 min 10 s: gone
    assert health.stats(EP).uptime_5m is None


# --- outage ----------------------------------------------------------------------------

def test_two_errors_are_unstable_not_outage() -> None:
    health, _ = make()
    answers(health, "error", 2)
    assert health.state(EP) == "unstable"
    assert health.admit(EP) is True


def test_three_errors_at_half_the_answers_is_an_outage() -> None:
    health, _ = make()
    answers(health, "ok", 3)
    answers(health, "error", 3)
    assert health.state(EP) == "outage"
    assert health.admit(EP) is False


def test_three_errors_below_the_ratio_is_unstable() -> None:
    health, _ = make()
    answers(health, "ok", 4)
    answers(health, "error", 3)
    assert health.state(EP) == "unstable"
    assert health.admit(EP) is True


def test_errors_older_than_the_window_are_forgotten() -> None:
    health, clock = make()
    answers(health, "error", 2)
    clock.advance(32)
    answers(health, "error", 1)
    assert health.state(EP) == "unstable"
    clock.advance(32)
    assert health.state(EP) == "ok"


def test_successes_leaving_the_window_can_start_an_outage() -> None:
    health, clock = make()
    answers(health, "ok", 5)
    clock.advance(20)
    answers(health, "error", 3)
    assert health.state(EP) == "unstable"     # 3 of 8
    clock.advance(15)                         # the successes are 35 s old, the errors 15 s
    assert health.state(EP) == "outage"
    assert health.admit(EP) is False


def test_thresholds_are_settings() -> None:
    health, _ = make(outage_failures=1, outage_ratio=1.0)
    answers(health, "ok", 1)
    answers(health, "error", 1)
    assert health.state(EP) == "unstable"
    health2, _ = make(outage_failures=1, outage_ratio=1.0)
    answers(health2, "error", 1)
    assert health2.state(EP) == "outage"


def test_outage_of_one_endpoint_leaves_the_others_alone() -> None:
    health, _ = make()
    answers(health, "error", 3)
    answers(health, "ok", 1, endpoint="other/one")
    assert health.state(EP) == "outage"
    assert health.state("other/one") == "ok"
    assert health.admit("other/one") is True


# --- the probe protocol ----------------------------------------------------------------

def tripped() -> tuple[Health, FakeClock]:
    health, clock = make(cooldown_s=20.0)
    answers(health, "error", 3)
    assert health.state(EP) == "outage"
    return health, clock


def test_exactly_one_probe_after_the_cooldown() -> None:
    health, clock = tripped()
    clock.advance(19.9)
    assert health.admit(EP) is False
    clock.advance(0.1)
    assert [health.admit(EP) for _ in range(5)] == [True, False, False, False, False]
    assert health.state(EP) == "outage"


def test_outage_outlasts_its_errors_until_a_probe_succeeds() -> None:
    health, clock = tripped()
    clock.advance(120)          # the errors have long left the 30 s window
    assert health.state(EP) == "outage"
    assert health.admit(EP) is True
    assert health.admit(EP) is False


def test_successful_probe_ends_the_outage() -> None:
    health, clock = tripped()
    clock.advance(20)
    assert health.admit(EP) is True
    health.record(EP, "ok")
    assert health.state(EP) == "ok"     # the outage's errors do not count against the probe
    assert all(health.admit(EP) for _ in range(5))


def test_failed_probe_restarts_the_cooldown() -> None:
    health, clock = tripped()
    clock.advance(25)
    assert health.admit(EP) is True
    clock.advance(3)
    health.record(EP, "error")
    clock.advance(19)
    assert health.admit(EP) is False    # 19 s after the probe's error
    clock.advance(1)
    assert health.admit(EP) is True
    health.record(EP, "ok")
    assert health.state(EP) == "ok"


def test_lost_probe_is_replaced_a_cooldown_after_it_was_admitted() -> None:
    health, clock = tripped()
    clock.advance(20)
    assert health.admit(EP) is True
    clock.advance(19)
    health.record(EP, "rate_limited")   # proves nothing either way
    assert health.admit(EP) is False
    clock.advance(1)
    assert health.admit(EP) is True


def test_success_before_any_probe_does_not_end_the_outage() -> None:
    health, clock = tripped()
    health.record(EP, "ok")             # a request sent before the outage began
    assert health.state(EP) == "outage"
    clock.advance(20)
    assert health.admit(EP) is True


def test_late_success_after_a_failed_probe_does_not_end_the_outage() -> None:
    health, clock = tripped()
    clock.advance(20)
    assert health.admit(EP) is True
    health.record(EP, "error")
    health.record(EP, "ok")
    assert health.state(EP) == "outage"


# --- latency and throughput ------------------------------------------------------------

def test_percentiles_by_nearest_rank() -> None:
    health, _ = make()
    for value in [70, 15, 100, 40, 90, 20, 60, 35, 80, 50]:
        health.record(EP, "ok", ttft_s=value / 1000, tokens_per_s=float(value))
    stats = health.stats(EP)
    # n = 10: ranks ceil(5) = 5, ceil(7.5) = 8, ceil(9) = 9, ceil(9.9) = 10.
    assert stats.throughput_30m == Percentiles(p50=50.0, p75=80.0, p90=90.0, p99=100.0)
    assert stats.latency_30m is not None
    assert stats.latency_30m.wire() == {"p50": 50.0, "p75": 80.0, "p90": 90.0, "p99": 100.0}


def test_percentiles_of_a_single_sample_are_that_sample() -> None:
    health, _ = make()
    health.record(EP, "ok", ttft_s=0.25)
    stats = health.stats(EP)
    assert stats.latency_30m == Percentiles(250.0, 250.0, 250.0, 250.0)
    assert stats.throughput_30m is None     # not measured


def test_wire_rounds_to_one_decimal() -> None:
    assert Percentiles(1.04, 2.06, 3.0, 123.456).wire() == {"p50": 1.0, "p75": 2.1, "p90": 3.0, "p99": 123.5}


def test_failed_answers_are_not_sampled() -> None:
    health, _ = make()
    health.record(EP, "error", ttft_s=0.001, tokens_per_s=1.0)
    health.record(EP, "rate_limited", ttft_s=0.001, tokens_per_s=1.0)
    health.record(EP, "ok", ttft_s=0.5, tokens_per_s=40.0)
    stats = health.stats(EP)
    assert stats.latency_30m == Percentiles(500.0, 500.0, 500.0, 500.0)
    assert stats.throughput_30m == Percentiles(40.0, 40.0, 40.0, 40.0)


def test_samples_older_than_30_minutes_are_ignored() -> None:
    health, clock = make()
    health.record(EP, "ok", tokens_per_s=10.0)
    clock.advance(15 * 60)
    health.record(EP, "ok", tokens_per_s=20.0)
    clock.advance(15 * 60)
    assert health.stats(EP).throughput_30m == Percentiles(10.0, 20.0, 20.0, 20.0)   # 30 min exactly
    clock.advance(0.001)
    assert health.stats(EP).throughput_30m == Percentiles(20.0, 20.0, 20.0, 20.0)
    clock.advance(15 * 60)
    assert health.stats(EP).throughput_30m is None


def test_sample_ring_keeps_only_the_newest() -> None:
    health, _ = make(samples_max=4)
    for value in range(1, 11):
        health.record(EP, "ok", tokens_per_s=float(value))
    assert health.stats(EP).throughput_30m == Percentiles(8.0, 9.0, 10.0, 10.0)   # 7, 8, 9, 10


# --- the endpoints bound ---------------------------------------------------------------

def test_least_recently_recorded_endpoint_is_evicted() -> None:
    health, _ = make(endpoints_max=3)
    for endpoint in ["a/1", "b/1", "c/1"]:
        answers(health, "error", 3, endpoint=endpoint)
    health.record("a/1", "rate_limited")    # seen again: now the most recent
    assert health.state("a/1") == "outage"  # reads do not refresh: b/1 stays the oldest
    assert health.state("b/1") == "outage"
    answers(health, "ok", 1, endpoint="d/1")
    assert health.state("b/1") == "ok"      # evicted: forgotten
    assert health.stats("b/1") == EndpointStats(None, None, None, None, None)
    assert [health.state(e) for e in ["a/1", "c/1", "d/1"]] == ["outage", "outage", "ok"]
    answers(health, "ok", 1, endpoint="e/1")
    assert health.state("c/1") == "ok"
    assert health.state("a/1") == "outage"


# --- uptime against a naive reference --------------------------------------------------

# (window in seconds, bucket width in seconds) for each uptime figure.
WINDOWS = {"uptime_5m": (300.0, 10.0), "uptime_30m": (1800.0, 10.0), "uptime_1d": (86400.0, 600.0)}
EPS = 1e-6   # float slack at bucket edges


def reference_uptimes(events: list[tuple[float, str]], now: float, window: float, width: float) -> list[float | None]:
    """Every uptime an exact window of some length in [window, window + width) gives:
    the bucketed figure must be one of them."""
    ages = sorted((now - at, outcome) for at, outcome in events if outcome != "rate_limited")
    cutoffs = [window - EPS] + [age for age, _ in ages if window - EPS <= age < window + width + EPS]
    out: list[float | None] = []
    for cutoff in cutoffs:
        for inclusive in (True, False):
            counted = [o for age, o in ages if age < cutoff or (inclusive and age == cutoff)]
            ok = counted.count("ok")
            out.append(None if not counted else 100.0 * ok / len(counted))
    return out


def matches(value: float | None, candidates: list[float | None]) -> bool:
    if value is None:
        return None in candidates
    return any(c is not None and math.isclose(value, c) for c in candidates)


gaps = st.one_of(st.integers(0, 20_000), st.integers(0, 900_000), st.integers(0, 7_200_000)).map(lambda ms: ms / 1000)
events_strategy = st.lists(st.tuples(gaps, st.sampled_from(["ok", "ok", "error", "rate_limited"])),
                           min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(events=events_strategy, final_gap=gaps)
def test_uptime_matches_a_naive_reference(events: list[tuple[float, str]], final_gap: float) -> None:
    health, clock = make()
    seen: list[tuple[float, str]] = []

    def check() -> None:
        stats = health.stats(EP)
        now = clock.monotonic()
        for name, (window, width) in WINDOWS.items():
            value = getattr(stats, name)
            assert matches(value, reference_uptimes(seen, now, window, width)), (name, value, now, seen)

    for gap, outcome in events:
        clock.advance(gap)
        health.record(EP, outcome)
        seen.append((clock.monotonic(), outcome))
        check()
    clock.advance(final_gap)
    check()
