"""WAL checkpoints off the commit path.

SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, and
its fsyncs (1-55 ms measured here) then delay every response waiting on that commit.
So automatic checkpoints are off and this thread runs a PASSIVE checkpoint, which never
blocks the writer, on its own connection at a fixed interval.

Under steady load that alone never finishes: commits keep appending frames while its
fsyncs run (35-100 ms here), so the WAL is never fully copied, SQLite never starts it over,
and it grew by ~45 MB a second at one connection (666 MB after a 13 s run), each append extending the file and stalling behind the next fsync (p99 2.8-6.7
ms at one connection against 0.7 ms with no checkpoints). So once the WAL passes a size
(`finish_at_bytes`, the setting sqlite_wal_restart_mb), the writer thread is asked to copy
the rest itself between two batches (`finish`): nothing is appended meanwhile, only what
came in during this pass is left to sync, and the next transaction rewrites the WAL from
its start. That pauses commits for two small fsyncs (10-15 ms here), so it is done only
past that size: done after every pass, one connection's p99 was 11-16 ms.

The interval is short (0.1 s by default) for the same reason: each pass's fsync then has a
tenth of a second of WAL to write back, not a whole second's, and commits that meet it wait
that much less. One connection's p99 (bench/run): 10.9 ms at 1 s, 3.2 ms at 0.1 s; 2.2-3.4
ms at 0.02-0.1 s and 4.5-21 ms at 0.2-5 s in a side experiment. Throughput at 64 connections
did not change (alternating runs: 3,292 and 3,199 req/s at 1 s, 3,506 and 3,292 at 0.1 s).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("farebox.store")


class Checkpointer:
    def __init__(self, path: Path, interval_s: float, finish: Callable[[], None] | None = None,
                 finish_at_bytes: int = 256 * 2**20) -> None:
        assert interval_s > 0 and finish_at_bytes > 0
        self.path, self.interval_s, self._finish, self._finish_at_bytes = path, interval_s, finish, finish_at_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="farebox-checkpoint", daemon=True)
        self.checkpoints = 0
        self.finishes = 0   # times the writer was asked to finish a pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            page_bytes = conn.execute("PRAGMA page_size").fetchone()[0]
            while not self._stop.wait(self.interval_s):
                outcome = self.checkpoint(conn, "PASSIVE")
                # The WAL's size since it last started over, in frames of one page. Past the
                # limit the writer finishes the pass (SQLite's counts cannot tell whether
                # frames came in meanwhile; they nearly always do under load).
                if outcome is not None and self._finish is not None and outcome[1] * page_bytes >= self._finish_at_bytes:
                    self._finish()
                    self.finishes += 1
            self.checkpoint(conn, "TRUNCATE")  # leave a small WAL behind on shutdown
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection, mode: str) -> tuple[int, int, int] | None:
        """SQLite's answer (busy, frames in the WAL, frames copied), or None if it failed."""
        try:
            busy, wal_frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as e:  # busy or locked: the next interval tries again
            log.warning("WAL checkpoint (%s) failed: %r", mode, e)
            return None
        self.checkpoints += 1
        return busy, wal_frames, copied
