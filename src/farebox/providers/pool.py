"""What the HTTP/1.1 pool (`providers/client.py`) and the HTTP/2 pool
(`providers/h2client.py`) share: the settings of connections to one origin, and the one
socket option every upstream connection gets."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farebox.providers.client import _Target


class PoolBase:
    """Connections to one origin for one provider: `limit` (0: none) bounds open
    connections; the timeouts are the client's (`Client`)."""

    def __init__(self, target: _Target, *, limit: int, connect_timeout_s: float, idle_timeout_s: float,
                 keepalive_s: float, tls: ssl.SSLContext | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.keepalive_s = keepalive_s
        self.tls = tls


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Requests and stream events are small writes that must leave at once: no Nagle."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
