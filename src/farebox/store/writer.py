"""Group commit: a thread of its own commits whatever has queued up while the previous
commit ran, as one transaction, on the one write connection.

A caller submits an operation and awaits its future; the future resolves only after the
transaction holding the operation has committed, which is what lets the relay send a
response's final bytes only once its charge is durable. Futures of a batch are resolved
with a single hop back to the event loop. If a batch fails, its operations are retried
one by one so one bad operation cannot fail its neighbours.

A caller with nobody to batch with (the relay, when no other request holds credit) may
ask for its operation to commit inline: if nothing submitted before it is still waiting
to commit and the writer thread is not using the connection, the transaction runs on the
caller's thread and the future comes back resolved. That skips waking the writer thread and the hop back to the event
loop: 22 µs of CPU a request at one connection (bench/ab.py, 16 rounds of 16 cheaper).
It blocks the event loop for the commit, ~0.1 ms, or as long as a WAL write stalls behind
a checkpoint's writeback (docs/performance.md), which is why it is only for a lone request
(nothing else in flight holds credit: no stream waits behind it) and only when a commit
does not wait for the disk (`synchronous=NORMAL`). Under load the operation is queued and
batched as before.

A caller may pass `on_error` with an operation: it is called on the event loop with the
error if the operation fails, whether or not anyone still awaits the future. The ledger
reverts a charge's book there, so it can await the future itself (cancelling the future when
its task is cancelled changes nothing the writer does) instead of a shield's second future
and extra loop pass (2.6 µs a request, measured alone).

An operation can also be posted: queued like any other, but nobody waits for it. The
settlement journal (store/journal.py) posts the charges it has already made durable, so
their answers need not wait for SQLite. The writer counts posted operations done and
failed; `caught_up` lets a reader wait until every posted operation has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("farebox.writer")

Op = Callable[[sqlite3.Connection], Any]
OnError = Callable[[BaseException], None]
# A posted operation has neither a future nor a loop: nobody waits for it.
Queued = tuple[Op, "asyncio.Future[Any] | None", "asyncio.AbstractEventLoop | None", "OnError | None"]
_STOP = object()
_CHECKPOINT = object()


class WriterStopped(RuntimeError):
    pass


class GroupWriter:
    def __init__(self, conn: sqlite3.Connection, batch_max: int = 2048, inline: bool = True) -> None:
        self._conn = conn
        self._batch_max = batch_max
        self._inline = inline
        # Held by whichever thread is using the connection: the writer's for a batch or a
        # checkpoint, the caller's for an inline commit.
        self._conn_lock = threading.Lock()
        # Operations queued and not yet committed, whether still in the queue or taken by
        # the writer thread. An inline commit waits for none: it must not overtake an
        # operation submitted before it (the writer is FIFO, and Ledger._mark_visible
        # relies on that). Counted under its own lock: both threads change it.
        self._outstanding = 0
        self._count_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="farebox-writer", daemon=True)
        self._stopped = False
        self.batches = 0
        self.ops = 0
        self.inlined = 0   # of `ops`, those committed on the caller's thread
        self.checkpoints = 0
        # Posted operations: how many, and of those how many the writer thread has finished
        # (committed or failed) and how many failed. Only the poster's thread changes
        # `posts`, only the writer thread the other two.
        self.posts = 0
        self.posts_done = 0
        self.posts_failed = 0
        # Posted operations that failed, for the poster to post again (`failed_posts`). The
        # writer thread appends; the poster swaps the list out.
        self._failed_posts: list[Op] = []

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Op, inline: bool = False, on_error: OnError | None = None) -> asyncio.Future[Any]:
        """Queue `op` for the next transaction; the future resolves once it has committed.
        With `inline`, commit it right here instead when that would be a batch of one
        anyway (see the module's docstring); the future then comes back already done, and
        `on_error` has already been called if it failed. `on_error` is called on the event
        loop with the error of a failed `op`, before its future is failed, even if the
        future was cancelled meanwhile."""
        if self._stopped:
            raise WriterStopped("the writer has stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if inline and self._inline and self._conn_lock.acquire(blocking=False):
            if self._outstanding:
                self._conn_lock.release()
            else:
                return self._commit_inline(op, future, on_error)
        with self._count_lock:
            self._outstanding += 1
        self._queue.put((op, future, loop, on_error))
        return future

    def post(self, op: Op) -> None:
        """Queue `op` for the next transaction without a future: nobody waits for it. A
        failure is logged, counted in `posts_failed` and listed for `failed_posts`; the
        poster (the journal) keeps what is needed to apply it again."""
        if self._stopped:
            raise WriterStopped("the writer has stopped")
        with self._count_lock:
            self._outstanding += 1
        self.posts += 1
        self._queue.put((op, None, None, None))

    @property
    def has_failed_posts(self) -> bool:
        return bool(self._failed_posts)

    def failed_posts(self) -> list[Op]:
        """Take the posted operations that failed since the last call, to post them again."""
        taken, self._failed_posts = self._failed_posts, []
        return taken

    async def caught_up(self) -> None:
        """Return once every operation posted before this call has been committed (or has
        failed): what a reader waits for to see every charge already answered."""
        if self.posts_done < self.posts:
            # FIFO: done only after everything queued before it. If its batch could not
            # commit either (the database locked or full), the reader still goes on to read.
            with contextlib.suppress(Exception):
                await self.submit(_nothing)

    def _commit_inline(self, op: Op, future: asyncio.Future[Any], on_error: OnError | None) -> asyncio.Future[Any]:
        """Commit `op` on the caller's thread; the caller holds the connection's lock."""
        try:
            ok, value = self._commit_alone(op)
            self.batches += 1
            self.ops += 1
            self.inlined += 1
        finally:
            self._conn_lock.release()
        _resolve([(future, ok, value, on_error)])
        return future

    def finish_checkpoint(self) -> None:
        """Ask the writer thread to checkpoint the frames the checkpointer's own pass could
        not reach (store/checkpoint.py). Queued like an operation, so it also wakes a writer
        thread that inline commits have left idle."""
        self._queue.put(_CHECKPOINT)

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
            # Let the event loop run on first. The writer wakes holding the GIL, often while
            # the loop is still answering the request that queued this; the two threads then
            # hand the GIL back and forth at every SQLite call, each time a futex wake and
            # a context switch. After one yield the loop runs until it waits in epoll (or
            # for the 5 ms switch interval), queueing more, and the batch runs mostly alone.
            # bench/ab.py: -32 µs of CPU a request at 1 connection (8 of 8 rounds), -50 at 8
            # (6 of 6), -6 at 64 (7 of 10), and p50 0.43 -> 0.39 ms at 1 connection.
            time.sleep(0)
            batch = []
            checkpoint = False
            while True:
                if item is _STOP:
                    stop = True
                elif item is _CHECKPOINT:
                    checkpoint = True   # after the batch, whatever else came with it
                else:
                    batch.append(item)
                if len(batch) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            with self._conn_lock:
                outcomes = self._commit(batch) if batch else []
                with self._count_lock:
                    self._outstanding -= len(batch)
                if checkpoint:
                    self._checkpoint()
            # Only now, with the connection free: a caller resumed by this could otherwise
            # find it busy and queue an operation it could have committed inline.
            if batch:
                self._hand_back(batch, outcomes)

    def _checkpoint(self) -> None:
        # Outside any transaction, and nothing else writes meanwhile: this pass reaches the
        # end of the WAL, so the next transaction starts it over from its beginning.
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
        except sqlite3.Error as e:
            log.warning("WAL checkpoint on the writer failed: %r", e)

    def _commit_alone(self, op: Op) -> tuple[bool, Any]:
        try:
            return True, self._transaction([op])[0]
        except Exception as e:
            log.warning("write failed: %r", e)
            return False, e

    def _commit(self, batch: list[Queued]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]]
        try:
            results = self._transaction([item[0] for item in batch])
            outcomes = [(True, r) for r in results]
        except Exception:
            outcomes = [self._commit_alone(item[0]) for item in batch]
        self.batches += 1
        self.ops += len(batch)
        return outcomes

    def _hand_back(self, batch: list[Queued], outcomes: list[tuple[bool, Any]]) -> None:
        """Resolve a batch's futures with one hop to each event loop that waits on them, and
        count its posted operations."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Resolution]] = {}
        done = failed = 0
        for (op, future, loop, on_error), (ok, value) in zip(batch, outcomes, strict=True):
            if future is None:
                done += 1
                if not ok:
                    failed += 1
                    self._failed_posts.append(op)
                    log.error("a posted write failed (%r): %r", op, value)
                continue
            assert loop is not None
            by_loop.setdefault(loop, []).append((future, ok, value, on_error))
        # Failed first (and the failed ops listed): a reader of `posts_done` then never
        # sees a failure as a commit.
        self.posts_failed += failed
        self.posts_done += done
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop closed while we committed; nobody is waiting
                pass


def _nothing(conn: sqlite3.Connection) -> None:
    return None


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


Resolution = tuple["asyncio.Future[Any]", bool, Any, "OnError | None"]


def _resolve(items: list[Resolution]) -> None:
    """On the event loop: tell each caller how its operation went. A failure reaches
    `on_error` even when nobody awaits the future any more (it was cancelled)."""
    for future, ok, value, on_error in items:
        if not ok and on_error is not None:
            try:
                on_error(value)
            except Exception:
                log.exception("on_error of a failed write raised")
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
