"""WAL checkpoints off the commit path.

SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, and
its fsyncs (1-55 ms measured here) then delay every response waiting on that commit.
So automatic checkpoints are off and this thread runs a PASSIVE checkpoint, which never
blocks the writer, on its own connection at a fixed interval.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("farebox.store")


class Checkpointer:
    def __init__(self, path: Path, interval_s: float) -> None:
        self.path, self.interval_s = path, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="farebox-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self.interval_s):
                self.checkpoint(conn, "PASSIVE")
            self.checkpoint(conn, "TRUNCATE")  # leave a small WAL behind on shutdown
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            self.checkpoints += 1
        except sqlite3.Error as e:  # busy or locked: the next interval tries again
            log.warning("WAL checkpoint (%s) failed: %r", mode, e)
