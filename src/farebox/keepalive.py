"""A stream waiting for its first token: keep-alive comments meanwhile, and the client
leaving cancels the wait at once.

The wait runs in the request's own task. An earlier version ran it in a task of its own
and woke every `sse_keepalive_s` through `asyncio.wait` (a task, a future and a timer a
stream; a paired A/B over 24 rounds measured no CPU difference either way), and noticed a
client that left only at the next tick, so the upstream request ran on until then. Now a
timer writes the comment, in a small task made only when it is due (a first token within
the interval costs none), and the sink's disconnect callback cancels the waiting task.

One timer serves every waiting stream (`Keepalives`), not one each: a libuv timer made and
cancelled per stream cost several microseconds of CPU in the request path (a connection's
timer shared the same way saved 8-13 µs a request, docs/performance.md). It runs only while
streams wait and fires at most once every eighth of the interval: a comment may go out up
to that much early, which no client can tell from a slightly shorter interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

log = logging.getLogger("farebox.relay")

T = TypeVar("T")


class Waiter(Protocol):
    """What a waiting stream needs of its sink."""

    disconnected: bool

    def on_disconnect(self, callback: Any) -> None: ...
    async def keepalive(self) -> None: ...


class ClientGone(Exception):
    """The client went away while the stream waited for its first token."""


class Keepalives:
    """The keep-alive clock of every stream waiting for its first token: a comment to each
    every `every_s` seconds of its wait, on one timer of the event loop."""

    def __init__(self, every_s: float) -> None:
        assert every_s > 0
        self.every_s = every_s
        self.slack_s = every_s / 8   # how early a comment may go: bounds how often the timer fires
        self._waiting: dict[_Keeping, float] = {}   # -> loop time its next comment is due
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, keeping: _Keeping) -> None:
        loop = keeping.loop
        if self._loop is not loop:
            assert not self._waiting, "a Keepalives serves one event loop at a time"
            self._loop, self._timer = loop, None
        due = loop.time() + self.every_s
        self._waiting[keeping] = due
        self._arm(due)

    def remove(self, keeping: _Keeping) -> None:
        # The timer stays: when it fires with nobody due it re-arms for the soonest (or not at
        # all), which costs less than cancelling it here and making a new one for the next stream.
        self._waiting.pop(keeping, None)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            if self._timer_at <= due:
                return     # it fires first, and re-arms for whoever is due then
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        soonest: float | None = None
        for keeping, due in self._waiting.items():
            if due <= now + self.slack_s:
                due = self._waiting[keeping] = now + self.every_s   # a value, not a key: no resize
                keeping.due()
            if soonest is None or due < soonest:
                soonest = due
        if soonest is not None:
            self._arm(soonest)


async def first_token(wait: Awaitable[T], sink: Waiter, keepalives: Keepalives) -> T:
    """Await `wait` (the upstream's first token) in this task, writing a keep-alive to `sink`
    every `keepalives.every_s` seconds meanwhile. Raises ClientGone when the client leaves
    first; a cancellation from anywhere else propagates as it came."""
    if sink.disconnected:
        if asyncio.iscoroutine(wait):
            wait.close()
        raise ClientGone
    task = asyncio.current_task()
    assert task is not None
    keeping = _Keeping(task, sink)
    keepalives.add(keeping)
    sink.on_disconnect(keeping.client_left)
    try:
        return await wait
    except asyncio.CancelledError:
        # Ours only if we asked and nobody else did too (uncancel counts the requests).
        if keeping.left and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        sink.on_disconnect(None)
        keepalives.remove(keeping)
        keeping.stop()


class _Keeping:
    __slots__ = ("left", "loop", "sink", "task", "writing")

    def __init__(self, task: asyncio.Task[Any], sink: Waiter) -> None:
        self.task, self.sink = task, sink
        self.loop = task.get_loop()
        self.left = False
        self.writing: asyncio.Task[None] | None = None

    def due(self) -> None:
        if self.writing is None or self.writing.done():   # a client not reading gets no pile-up
            self.writing = self.loop.create_task(_write(self.sink))

    def client_left(self) -> None:
        if not self.left:
            self.left = True
            self.task.cancel()

    def stop(self) -> None:
        # A comment not yet written is dropped: the first token (or the error) goes out
        # now, and nothing may follow a stream's end.
        if self.writing is not None and not self.writing.done():
            self.writing.cancel()


async def _write(sink: Waiter) -> None:
    try:
        await sink.keepalive()
    except Exception as e:  # the client is gone or the stream ended; the waiting task will see it
        log.debug("keep-alive not written: %r", e)
