"""The timeouts of one upstream exchange, shared by an HTTP/1.1 connection
(`providers/client.py`) and an HTTP/2 stream (`providers/h2client.py`): one timer per
exchange, re-armed only when it fires.

A timer that fires early does no harm: `_check_time` looks at the response in flight then,
if any, and re-arms for it. So a response that ends leaves its timer running, and the next
one keeps it unless it needs an earlier one: with the default timeouts, one timer per
connection every `upstream_idle_timeout_s` instead of one per request (a libuv timer made
and closed, 1.1 µs alone).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farebox.providers.response import Response


class Deadlines:
    """Mixed into a class that carries one response at a time and has: `loop`, `pool` (with
    `idle_timeout_s`), `_response`, `closed`, `paused`, `deadline` (loop time after which the
    whole attempt has taken too long), `last_read` (loop time data last arrived), `_timer`,
    `_timer_at`, and `close()` and `_broken(error)`."""

    __slots__ = ()

    loop: asyncio.AbstractEventLoop
    pool: Any
    _response: Response | None
    closed: bool
    paused: bool
    deadline: float
    last_read: float
    _timer: asyncio.TimerHandle | None
    _timer_at: float

    def _arm(self, now: float) -> None:
        when = max(min(self.last_read + self.pool.idle_timeout_s, self.deadline), now)
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._check_time)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_time(self) -> None:
        self._timer = None
        response = self._response
        if response is None or response._complete or self.closed:
            return
        now = self.loop.time()
        if response._done:  # drained too long: not worth waiting for
            self.close()  # type: ignore[attr-defined]
        elif now >= self.deadline:
            self._broken(TimeoutError("the attempt took longer than its total timeout"))  # type: ignore[attr-defined]
        elif not self.paused and now - self.last_read >= self.pool.idle_timeout_s:
            self._broken(TimeoutError("the server went silent"))  # type: ignore[attr-defined]
        else:
            if self.paused:
                self.last_read = now
            self._arm(now)
