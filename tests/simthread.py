"""A real simulator on a free port, served from a background thread's event loop, for
tests that call upstreams from their own `asyncio.run`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from farebox.sim.server import start


@contextmanager
def running_sim(starter: Callable[[], Awaitable[tuple[Any, int]]] | None = None) -> Iterator[str]:
    """`starter` returns (an aiohttp runner, its port); by default the sim as `farebox sim`
    starts it, on a free port."""
    starter = starter or (lambda: start(port=0))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        box["runner"], box["port"] = loop.run_until_complete(starter())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "sim server did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
