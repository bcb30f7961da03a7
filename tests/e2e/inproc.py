"""A real gateway served in this process, with a FakeClock: for tests of what time does
(period resets, key expiry) without waiting for it.

Everything but the clock is real: `farebox.app.create_app` builds the gateway from settings
read the way `farebox serve` reads them, our server (api/server.py) serves it on a real socket from a
background thread (its own event loop), and the database is a real SQLite file in
FAREBOX_HOME. The object is a `procs.Gateway`, so every helper there (admin, org, key,
member, verify...) works on it unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farebox.api.router import Api
from farebox.api.server import Server
from farebox.app import create_app
from farebox.catalog.simulated import sim_catalog
from farebox.clock import FakeClock
from farebox.settings import load_settings
from tests.e2e.procs import BROKEN, READY_S, Gateway

# Thursday 2026-01-01T00:00:00Z, FakeClock's own default start.
START = 1_767_225_600.0


@dataclass
class InProcessGateway(Gateway):
    """A gateway in this process whose wall time is `clock`: advance it between requests.
    Stopping and starting again reopens the same FAREBOX_HOME with the same clock, as a
    restart of `farebox serve` would (the clock goes on where it was)."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    # ASGI middleware the server runs the gateway's app through: a test's window on what the
    # application sends (the app itself is unchanged).
    wrap: Callable[[Api], Any] | None = None
    app: Api | None = None
    _server: Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> InProcessGateway:
        assert self._thread is None, "already started"
        self.home.mkdir(parents=True, exist_ok=True)
        catalog = self.home / "catalog.toml"
        catalog.write_text(sim_catalog(f"{self.sim_url}/v1") + BROKEN.format(sim=self.sim_url))
        env = {"FAREBOX_HOME": str(self.home), "FAREBOX_PORT": "0", "FAREBOX_CATALOG_PATH": str(catalog),
               "FAREBOX_CATALOG_BUILTIN": "false", "FAREBOX_LOG_LEVEL": "warning",
               # the smallest scrypt cost: member passwords hash in a millisecond
               "FAREBOX_PASSWORD_SCRYPT_N": "1024", **self.env_overrides}
        settings = load_settings(env=env)
        # Built here, like `farebox serve` builds it before serving: a configuration error
        # or a database in use fails the test at once, in the test's own thread.
        self.app = create_app(settings, clock=self.clock)
        # The standard asyncio loop (not uvloop) and no signal handlers: not the main thread.
        server = Server(self.app if self.wrap is None else self.wrap(self.app), host="127.0.0.1", port=0)
        self._server = server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve(signals=False)),
                                        name="farebox-inproc", daemon=True)
        self._thread.start()
        for _ in range(int(READY_S / 0.01)):
            if server.started or not self._thread.is_alive():
                break
            self._thread.join(0.01)
        if not server.started:
            self.stop()
            raise RuntimeError("the in-process gateway did not start (see the log above)")
        port = server.bound_port
        self.url = f"http://127.0.0.1:{port}"
        self.management_key = settings.management_key_file.read_text().strip()
        return self

    def stop(self) -> None:
        """Shut down like SIGTERM does: stop accepting, finish in-flight requests, then the
        lifespan's shutdown stops the gateway (flushes the writer, closes the database)."""
        if self._server is not None and self._thread is not None:
            self._server.loop.call_soon_threadsafe(self._server.stop)
            self._thread.join(30)
            assert not self._thread.is_alive(), "the in-process gateway did not stop"
        self._server = self._thread = None

    def kill(self) -> None:
        raise NotImplementedError("an in-process gateway cannot be killed; use procs.Gateway for crash tests")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def advance(self, seconds: float) -> None:
        """Move wall time (and monotonic time) forward. Do it between requests: a hold open
        while the clock jumps past hold_timeout_s would be expired by the sweeper."""
        self.clock.advance(seconds)

    def advance_to(self, when: float) -> None:
        """Move wall time forward to the epoch second `when`."""
        self.clock.advance(when - self.clock.now())
