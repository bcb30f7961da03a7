"""keepalive.first_token: the wait for a stream's first token, its keep-alive comments and
the client leaving, with a sink that records what it was asked to do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from farebox.keepalive import ClientGone, Keepalives, first_token


class Sink:
    def __init__(self) -> None:
        self.disconnected = False
        self.keepalives = 0
        self.callback: Any = None
        self.callbacks_set: list[Any] = []

    def on_disconnect(self, callback: Any) -> None:
        self.callback = callback
        self.callbacks_set.append(callback)

    async def keepalive(self) -> None:
        self.keepalives += 1

    def leave(self) -> None:
        self.disconnected = True
        if self.callback is not None:
            self.callback()


class Upstream:
    """The first token, when `token` is set; records whether its wait was cancelled."""

    def __init__(self) -> None:
        self.token = asyncio.Event()
        self.cancelled = False

    async def first(self) -> str:
        try:
            await self.token.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "token"


def test_a_quick_first_token_returns_with_no_keepalive_and_leaves_no_callback() -> None:
    async def main() -> None:
        sink, upstream = Sink(), Upstream()
        upstream.token.set()
        assert await first_token(upstream.first(), sink, Keepalives(0.05)) == "token"
        await asyncio.sleep(0.12)  # the timer was cancelled with the wait
        assert sink.keepalives == 0
        assert sink.callback is None and sink.callbacks_set[0] is not None

    asyncio.run(main())


def test_keepalives_are_written_while_waiting_and_stop_with_the_first_token() -> None:
    async def main() -> None:
        sink, upstream = Sink(), Upstream()
        waiting = asyncio.ensure_future(first_token(upstream.first(), sink, Keepalives(0.01)))
        while sink.keepalives < 3:
            await asyncio.sleep(0.005)
        upstream.token.set()
        assert await waiting == "token"
        after = sink.keepalives
        await asyncio.sleep(0.05)
        assert sink.keepalives == after

    asyncio.run(main())


def test_the_client_leaving_ends_the_wait_at_once_and_cancels_the_upstream_read() -> None:
    async def main() -> None:
        sink, upstream = Sink(), Upstream()
        waiting = asyncio.ensure_future(first_token(upstream.first(), sink, Keepalives(3600)))
        await asyncio.sleep(0.01)
        sink.leave()
        with pytest.raises(ClientGone):
            await waiting
        assert upstream.cancelled
        assert sink.callback is None
        assert waiting.cancelling() == 0  # the cancellation it asked for was taken back

    asyncio.run(main())


def test_a_client_already_gone_never_starts_the_wait() -> None:
    async def main() -> None:
        sink, upstream = Sink(), Upstream()
        sink.disconnected = True
        wait = upstream.first()
        with pytest.raises(ClientGone):
            await first_token(wait, sink, Keepalives(1))
        assert wait.cr_frame is None  # closed, not left to warn that it was never awaited
        assert sink.callbacks_set == []

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_is_not_mistaken_for_the_client_leaving() -> None:
    async def main() -> None:
        sink, upstream = Sink(), Upstream()
        waiting = asyncio.ensure_future(first_token(upstream.first(), sink, Keepalives(3600)))
        await asyncio.sleep(0.01)
        waiting.cancel()       # the server shutting down, say...
        sink.leave()           # ...as the client leaves
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert upstream.cancelled and sink.callback is None

    asyncio.run(main())


def test_a_keepalive_that_fails_is_dropped_and_the_wait_goes_on() -> None:
    class Broken(Sink):
        async def keepalive(self) -> None:
            self.keepalives += 1
            raise RuntimeError("the response already ended")

    async def main() -> None:
        sink, upstream = Broken(), Upstream()
        waiting = asyncio.ensure_future(first_token(upstream.first(), sink, Keepalives(0.01)))
        while sink.keepalives < 2:
            await asyncio.sleep(0.005)
        upstream.token.set()
        assert await waiting == "token"

    asyncio.run(main())


def test_streams_waiting_together_share_the_clock_and_each_gets_its_comments() -> None:
    """One Keepalives serves every waiting stream: each gets comments for as long as it
    waits, one stream's first token stops only its own, and none come once nobody waits."""
    async def main() -> None:
        keepalives = Keepalives(0.01)
        (a, up_a), (b, up_b) = (Sink(), Upstream()), (Sink(), Upstream())
        wait_a = asyncio.ensure_future(first_token(up_a.first(), a, keepalives))
        while a.keepalives < 2:
            await asyncio.sleep(0.005)
        wait_b = asyncio.ensure_future(first_token(up_b.first(), b, keepalives))
        while b.keepalives < 2:
            await asyncio.sleep(0.005)
        up_a.token.set()
        assert await wait_a == "token"
        a_done = a.keepalives
        seen_b = b.keepalives
        while b.keepalives < seen_b + 3:       # b still waits, and still hears
            await asyncio.sleep(0.005)
        assert a.keepalives == a_done
        up_b.token.set()
        assert await wait_b == "token"
        b_done = b.keepalives
        await asyncio.sleep(0.05)
        assert (a.keepalives, b.keepalives) == (a_done, b_done)

    asyncio.run(main())
