"""Group commit: one thread owns the write connection and commits whatever has queued
up while the previous commit ran, as one transaction.

A caller submits an operation and awaits its future; the future resolves only after the
transaction holding the operation has committed, which is what lets the relay send a
response's final bytes only once its charge is durable. Futures of a batch are resolved
with a single hop back to the event loop. If a batch fails, its operations are retried
one by one so one bad operation cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("farebox.writer")

Op = Callable[[sqlite3.Connection], Any]
_STOP = object()


class WriterStopped(RuntimeError):
    pass


class GroupWriter:
    def __init__(self, conn: sqlite3.Connection, batch_max: int = 2048) -> None:
        self._conn = conn
        self._batch_max = batch_max
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="farebox-writer", daemon=True)
        self._stopped = False
        self._checkpoint_wanted = False   # set by the checkpointer's thread, read by this one
        self.batches = 0
        self.ops = 0
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Op) -> asyncio.Future[Any]:
        if self._stopped:
            raise WriterStopped("the writer has stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((op, future, loop))
        return future

    def finish_checkpoint(self) -> None:
        """Ask the writer thread to checkpoint, after its next batch, the frames the
        checkpointer's own pass could not reach (store/checkpoint.py). No lock: a flag one
        thread sets and the other clears, where a lost or a repeated request is harmless."""
        self._checkpoint_wanted = True

    def run_sync(self, op: Op) -> Any:
        """Run one operation in its own transaction on the caller's thread; only for
        start-up and tools, before the writer thread starts."""
        assert not self._thread.is_alive()
        return self._transaction([op])[0]

    def stop(self) -> None:
        """Commit everything already submitted, then stop the thread."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # -- the writer thread ---------------------------------------------------------
    def _transaction(self, ops: list[Op]) -> list[Any]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = _run(conn, ops)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch = []
            while True:
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
                if len(batch) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
            if self._checkpoint_wanted:
                self._checkpoint_wanted = False
                self._checkpoint()

    def _checkpoint(self) -> None:
        # Outside any transaction, and nothing else writes meanwhile: this pass reaches the
        # end of the WAL, so the next transaction starts it over from its beginning.
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
        except sqlite3.Error as e:
            log.warning("WAL checkpoint on the writer failed: %r", e)

    def _commit(self, batch: list[tuple[Op, asyncio.Future[Any], asyncio.AbstractEventLoop]]) -> None:
        outcomes: list[tuple[bool, Any]]
        try:
            results = self._transaction([op for op, _, _ in batch])
            outcomes = [(True, r) for r in results]
        except Exception:
            outcomes = []
            for op, _, _ in batch:
                try:
                    outcomes.append((True, self._transaction([op])[0]))
                except Exception as e:
                    log.warning("write failed: %r", e)
                    outcomes.append((False, e))
        self.batches += 1
        self.ops += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, future, loop), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop closed while we committed; nobody is waiting
                pass


def _run(conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    """Run ops in order. A run of consecutive ops of one type that knows how to write many
    at once (a `run_many` static method) is handed over as a group."""
    results: list[Any] = []
    i, n = 0, len(ops)
    while i < n:
        kind = type(ops[i])
        run_many = getattr(kind, "run_many", None)
        if run_many is None:
            results.append(ops[i](conn))
            i += 1
            continue
        j = i + 1
        while j < n and type(ops[j]) is kind:
            j += 1
        results.extend(run_many(conn, ops[i:j]))
        i = j
    return results


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
