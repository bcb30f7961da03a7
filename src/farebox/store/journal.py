"""The settlement journal: an append-only file beside the database that makes a lone
request's charge durable with one write, so that its answer need not wait for SQLite.

Why: at one connection, waiting for the SQLite commit of the charge (~0.15 ms in the
request's path: seven WAL frames and B-tree updates, with caches gone cold while the
upstream answered) was nearly the whole gap between the gateway and a proxy with no
features (docs/performance.md). A record here is one write(2) of the settlement as a line
of JSON. That is as durable against a crash of the process as a commit under
`synchronous=NORMAL`, and like that commit it is not fsynced, so it is used only under
NORMAL. The writer thread commits the same settlement to SQLite right behind it
(`GroupWriter.post`), and every read waits for that (`Store.read_after`).

Rules:
- A settlement is recorded here before its answer's final bytes go, then posted to the
  writer. Records are in the order the ledger settled them, which is the writer's order.
- The file may hold settlements already committed: replay skips a record whose
  generation is in the database, so the file is emptied lazily, once it has grown past
  `reset_bytes` and every posted settlement has committed.
- A posted settlement that failed to commit (a full disk, a lock held past the busy
  timeout) is posted again with the next record, after 1 s, then after twice as long each
  time up to a minute, until it commits. Meanwhile the file is not emptied. If the process
  ends first, the next start applies it; if it fails there too, the start fails and names
  it: a charge a client was answered for is never dropped silently.
- A last line without its newline is a write a crash cut short. The request it belongs
  to was not answered, so it is dropped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson

from farebox.clock import Clock
from farebox.ledger.entries import Entry
from farebox.store.sqlite import SettleOp
from farebox.store.writer import GroupWriter, WriterStopped

log = logging.getLogger("farebox.journal")

# Emptying the file is a truncate (and an inode update) on the event loop's thread: done at
# most once per this many bytes, ~1,000 settlements, which is also the most a start replays.
RESET_BYTES = 1 << 20
RETRY_FIRST_S = 1.0    # the first wait before a failed settlement is posted again; it doubles
RETRY_MAX_S = 60.0


class JournalError(RuntimeError):
    pass


def journal_path(database: Path) -> Path:
    return database.with_name(database.name + "-settlements")


def encode(op: SettleOp) -> bytes:
    return orjson.dumps((op.generation, op.entries, op.content), option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> SettleOp:
    generation, entries, content = orjson.loads(line)
    assert isinstance(generation, dict) and isinstance(generation.get("id"), str), generation
    return SettleOp([Entry(**e) for e in entries], generation, content)


def records(path: Path) -> Iterator[tuple[int, SettleOp]]:
    """The journal's complete records with their line numbers; nothing if there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    if lines[-1]:
        log.warning("%s: dropped a last record cut short (%d bytes): its request was not answered",
                    path, len(lines[-1]))
    for number, line in enumerate(lines[:-1], 1):
        try:
            yield number, decode(line)
        except (ValueError, TypeError, AssertionError) as e:
            raise JournalError(f"{path}, line {number}: not a settlement record ({e})") from None


def unapplied(conn: sqlite3.Connection, path: Path) -> list[str]:
    """The generation ids of the journal's records not in the database (yet)."""
    return [op.generation["id"] for _, op in records(path) if not _applied(conn, op)]


def _applied(conn: sqlite3.Connection, op: SettleOp) -> bool:
    return conn.execute("SELECT 1 FROM generations WHERE id = ?", (op.generation["id"],)).fetchone() is not None


def replay(path: Path, writer: GroupWriter) -> int:
    """Apply the records a previous process left unapplied, in one transaction, then empty
    the file. Runs at start, before the ledger loads its balances and before the writer
    thread starts. Returns how many were applied."""
    pending = list(records(path))

    def apply(conn: sqlite3.Connection) -> int:
        applied = 0
        for number, op in pending:
            if _applied(conn, op):
                continue
            try:
                op(conn)
            except sqlite3.Error as e:
                raise JournalError(
                    f"{path}, line {number}: the charge for generation {op.generation['id']} could not be"
                    f" applied ({e}). A client was answered for it. Fix the cause, or move the file aside"
                    f" to start without it (its charges are then not billed).") from e
            applied += 1
        return applied

    applied = writer.run_sync(apply) if pending else 0
    if applied:
        log.warning("applied %d charges from %s that the last process answered but had not committed",
                    applied, path)
    if path.exists():
        os.truncate(path, 0)
    return applied


class Journal:
    """The open journal a running gateway appends to; see the module's docstring."""

    def __init__(self, path: Path, writer: GroupWriter, clock: Clock, reset_bytes: int = RESET_BYTES) -> None:
        self.path = path
        self._writer = writer
        self._clock = clock
        self._retry_wait = RETRY_FIRST_S
        self._retry_at: float | None = None   # when failed settlements are next posted again
        self.retried = 0
        self._reset_bytes = reset_bytes
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        # Set when a record may be needed by the next start beyond what the writer's failed
        # posts show: it was written, or failed before, and could not be posted (the writer
        # had stopped).
        self._keep = False
        self.usable = True   # false once a failed write could not be undone
        self.records = 0
        self.resets = 0

    def record(self, op: SettleOp) -> None:
        """Make `op` durable here, then post it to the writer. Raises if `op` could not be
        written (an OSError, or a TypeError for a value JSON cannot carry): the file is then
        as it was, and `op` is not posted."""
        assert self.usable
        w = self._writer
        if w.has_failed_posts:
            self._retry_failed()
        elif self._retry_at is not None and w.posts_done == w.posts:
            self._retry_at = None   # what failed has committed since: a new failure starts over
        if self._size >= self._reset_bytes and self._all_committed():
            os.ftruncate(self._fd, 0)
            self._size = 0
            self.resets += 1
        self._write(encode(op))
        self.records += 1
        try:
            self._writer.post(op)
        except WriterStopped:
            # Shutting down: the record is durable here and the next start applies it.
            self._keep = True

    def _retry_failed(self) -> None:
        """Post the settlements whose commit failed again, once their wait is over. They are
        still in the file, which is not emptied until they commit."""
        now = self._clock.monotonic()
        if self._retry_at is None:   # a new failure: wait the first interval
            self._retry_at, self._retry_wait = now + RETRY_FIRST_S, RETRY_FIRST_S
            return
        if now < self._retry_at:
            return
        failed = self._writer.failed_posts()
        try:
            for op in failed:
                self._writer.post(op)
        except WriterStopped:
            # Shutting down: they stay in the file, and `_keep` stops close() emptying it.
            self._keep = True
            return
        self.retried += len(failed)
        log.warning("posting %d charges again whose commit failed", len(failed))
        self._retry_wait = min(self._retry_wait * 2, RETRY_MAX_S)
        self._retry_at = now + self._retry_wait

    def _write(self, line: bytes) -> None:
        written = 0
        try:
            while written < len(line):
                written += os.write(self._fd, memoryview(line)[written:])
        except BaseException:
            if written:
                # A torn record would glue itself to the next one: cut it off.
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self.usable = False
                    log.error("%s: could not cut off a torn record; the journal is off until restart", self.path)
            raise
        self._size += len(line)

    def _all_committed(self) -> bool:
        w = self._writer
        # A failed post is listed before posts_done counts it, so it is never read as a commit.
        return not self._keep and not w.has_failed_posts and w.posts_done == w.posts

    def close(self) -> None:
        """After the writer has stopped: empty the file if everything in it committed."""
        if self._all_committed():
            os.ftruncate(self._fd, 0)
        else:
            log.error("%s keeps charges that were answered but not committed; the next start applies them",
                      self.path)
        os.close(self._fd)
