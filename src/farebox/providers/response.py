"""One upstream response as its reader sees it: status and headers, then a body that the
connection (`providers/client.py` Connection) fills and the caller drains with `read`,
`read_some`, `readline` or `buffered_line`. Split from the client so each stays small: this is
the reading side, that the connection and its pool.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farebox.providers.client import Connection
    from farebox.providers.h2client import H2Stream

LINE_MAX = 16 << 20       # an SSE line longer than this is not an answer we can use


class TransportError(Exception):
    """The connection failed or the server sent something that is not HTTP."""


class Response:
    """One response: `status` and `headers` (lower-case names) once `post` returns; the
    body arrives into a buffer that the reader drains. `release()` hands the connection
    back for reuse when the body was read to its end, and closes it otherwise;
    `close()` always closes it."""

    __slots__ = ("_buffer", "_complete", "_conn", "_decoder", "_done", "_error", "_headers_ready", "_scan",
                 "_waiter", "headers", "status")

    def __init__(self, conn: Connection | H2Stream) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buffer = bytearray()
        self._scan = 0                 # readline: where the search for b"\n" resumes
        self._complete = False         # the whole body has arrived
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers_ready: asyncio.Future[None] = conn.loop.create_future()
        self._decoder: Any = None
        self._done = False             # released or closed

    # -- fed by the connection --------------------------------------------------------
    def _headers_complete(self) -> None:
        """Status and headers are in: pick the body's decoder and wake `post`'s caller.
        Raises TransportError for an encoding we cannot read."""
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding not in ("identity", ""):
            raise TransportError(f"unsupported content-encoding {encoding!r}")
        if not self._headers_ready.done():
            self._headers_ready.set_result(None)

    def _feed(self, body: bytes) -> None:
        """Body bytes as they came off the wire. Raises TransportError on a corrupt compressed body."""
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as e:
                raise TransportError(f"corrupt compressed body: {e}") from None
        if self._done:
            return  # draining what the caller no longer wants
        self._buffer += body
        self._wake()

    def _end(self) -> None:
        """The whole body has arrived."""
        if self._decoder is not None:
            self._buffer += self._decoder.flush()
        self._complete = True
        if not self._done:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        if not self._headers_ready.done():
            self._headers_ready.set_exception(error)
            self._headers_ready.exception()  # retrieved: nobody may be waiting any more
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(error)

    # -- read by the caller ------------------------------------------------------------
    async def _more(self) -> None:
        if self._error is not None:
            raise self._error
        conn = self._conn
        if conn.paused:
            conn.resume()
        waiter = self._waiter = conn.loop.create_future()
        await waiter

    async def read(self) -> bytes:
        while not self._complete:
            await self._more()
        if self._error is not None:
            raise self._error
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def read_some(self, limit: int) -> bytes:
        """Up to `limit` bytes: for error bodies, which may be endless."""
        while not self._complete and len(self._buffer) < limit:
            await self._more()
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return data

    def buffered_line(self) -> bytes | None:
        """The next line with its b"\\n" if a whole one is already here, else None (then await
        `readline`). A stream's lines mostly arrive several to a read; taking those already
        here without awaiting a coroutine for each saves a few microseconds a line."""
        buffer = self._buffer
        end = buffer.find(b"\n", self._scan)
        if end < 0:
            self._scan = len(buffer)
            return None
        line = bytes(buffer[:end + 1])
        del buffer[:end + 1]
        self._scan = 0
        return line

    async def readline(self) -> bytes:
        """The next line with its b"\\n"; what is left at the end of the body (b"" once nothing is)."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scan)
            if end >= 0:
                line = bytes(buffer[:end + 1])
                del buffer[:end + 1]
                self._scan = 0
                return line
            if self._complete:
                line = bytes(buffer)
                buffer.clear()
                return line
            if len(buffer) > LINE_MAX:
                raise TransportError(f"a line longer than {LINE_MAX} bytes")
            self._scan = len(buffer)
            await self._more()

    def started(self) -> None:
        """The caller has what it waited for first (a stream's first token): from now on
        only the total bound applies, not `first_byte_s` (Client.post). The connection's
        timer, if set for the earlier bound, fires, finds time left and re-arms."""
        conn = self._conn
        if conn._response is self:
            conn.deadline = conn.full_deadline

    @property
    def closed(self) -> bool:
        """Released or closed: the caller is done with it."""
        return self._done

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        self._conn.finished(reusable=self._complete and self._error is None)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        self._conn.close()
