"""load.CpuLoad: busy when this process used at least `busy_at` CPU seconds per wall second
over the last window, measured only when a window has passed."""

from __future__ import annotations

from farebox.clock import FakeClock
from farebox.load import CpuLoad


def fresh() -> tuple[FakeClock, CpuLoad]:
    clock = FakeClock()
    return clock, CpuLoad(clock, window_s=0.1, busy_at=0.5)


def test_idle_until_a_window_has_passed_whatever_the_cpu_used() -> None:
    clock, load = fresh()
    clock.use_cpu(5.0)
    clock.advance(0.05)
    assert load.busy() is False


def test_busy_from_half_a_cpu_and_judged_again_only_each_window() -> None:
    clock, load = fresh()
    clock.advance(0.11)
    clock.use_cpu(0.056)         # just over half a CPU over the window (0.11 s)
    assert load.busy() is True
    clock.advance(0.05)          # within the next window: the verdict stands, no new reading
    assert load.busy() is True
    clock.advance(0.1)           # a window (0.15 s) with no more CPU
    assert load.busy() is False
    clock.advance(0.2)
    clock.use_cpu(0.099)         # just under half of 0.2 s
    assert load.busy() is False


def test_a_long_quiet_spell_is_judged_as_a_whole() -> None:
    clock, load = fresh()
    clock.advance(0.1)
    clock.use_cpu(0.1)
    assert load.busy() is True
    clock.use_cpu(0.4)           # a burst, then ten quiet seconds
    clock.advance(10.0)
    assert load.busy() is False  # 0.4 s of CPU in 10 s
