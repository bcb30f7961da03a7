"""Checkpoints run in their own thread and keep the WAL from growing without bound."""

from __future__ import annotations

import time

from farebox.ledger.entries import GRANTS, Entry, wallet
from farebox.store import sqlite as ops
from farebox.store.checkpoint import Checkpointer
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter


def test_checkpoints_move_the_wal_into_the_database(tmp_path):
    path = tmp_path / "c.db"
    store = Store(path)
    writer = GroupWriter(store.writer_conn)
    writer.run_sync(lambda conn: conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)"))
    writer.run_sync(lambda conn: ops.ensure_account(conn, wallet(1), 1, "wallet"))
    for i in range(200):
        writer.run_sync(lambda conn, i=i: ops.post_entries(
            conn, [Entry("grant", GRANTS, wallet(1), 1, f"grant:{i}", 1, 1, memo="x" * 500)]))
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0  # automatic checkpoints are off: everything is still in the WAL
    checkpointer = Checkpointer(path, interval_s=0.01)
    checkpointer.start()
    deadline = time.monotonic() + 30
    while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    checkpointer.stop()
    assert checkpointer.checkpoints >= 2  # at least one passive, and the truncating one at stop
    assert wal.stat().st_size == 0
    store.close()
    # The data made it into the database file itself.
    import sqlite3

    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 200
    conn.close()


def _store_with_wal(path):
    """A store whose WAL holds 50 commits of about 4 KB each (automatic checkpoints are off)."""
    store = Store(path)
    writer = GroupWriter(store.writer_conn)
    writer.run_sync(lambda conn: conn.execute("CREATE TABLE filler (x)"))
    for _ in range(50):
        writer.run_sync(lambda conn: conn.execute("INSERT INTO filler VALUES (randomblob(4000))"))
    return store


def _wait_for(predicate, what):
    deadline = time.monotonic() + 30   # a guard against a hang, not a measurement
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_past_its_size_limit_the_wal_is_finished_by_the_writer(tmp_path):
    # Under steady load a checkpointer pass never reaches the end of the WAL (commits keep
    # coming during its fsyncs), so SQLite would never start the WAL over: past the limit,
    # the checkpointer asks the writer to finish the pass between two batches.
    store = _store_with_wal(tmp_path / "c.db")
    asked = []
    checkpointer = Checkpointer(store.path, interval_s=0.01, finish=lambda: asked.append(1), finish_at_bytes=4096)
    checkpointer.start()
    _wait_for(lambda: checkpointer.finishes >= 2, "the checkpointer never asked the writer to finish")
    checkpointer.stop()
    assert len(asked) == checkpointer.finishes
    store.close()


def test_below_its_size_limit_the_writer_is_left_alone(tmp_path):
    store = _store_with_wal(tmp_path / "c.db")
    asked = []
    checkpointer = Checkpointer(store.path, interval_s=0.01, finish=lambda: asked.append(1),
                                finish_at_bytes=2**30)
    checkpointer.start()
    _wait_for(lambda: checkpointer.checkpoints >= 3, "no checkpoint ran")
    checkpointer.stop()
    assert asked == [] and checkpointer.finishes == 0
    store.close()


def test_the_writer_finishes_a_checkpoint_with_its_next_batch_and_the_wal_starts_over(tmp_path):
    import asyncio
    import sqlite3

    store = _store_with_wal(tmp_path / "c.db")
    frames_before = sqlite3.connect(store.path).execute("PRAGMA wal_checkpoint(NOOP)").fetchone()
    writer = GroupWriter(store.writer_conn)
    writer.start()

    async def main():
        writer.finish_checkpoint()
        await writer.submit(lambda conn: conn.execute("INSERT INTO filler VALUES (1)"))
        await writer.submit(lambda conn: conn.execute("INSERT INTO filler VALUES (2)"))
        # On the writer thread, once, with the first batch (the request queued ahead of it).
        assert writer.checkpoints == 1

    asyncio.run(main())
    writer.stop()
    # The WAL was copied whole, so the next transaction started it over: it now holds only
    # that transaction's frames, not the 50 commits before.
    _, frames_after, _ = sqlite3.connect(store.path).execute("PRAGMA wal_checkpoint(NOOP)").fetchone()
    assert frames_before[1] >= 50 and frames_after < 10, (frames_before, frames_after)
    store.close()


def test_a_checkpoint_asked_for_is_finished_even_when_every_commit_is_inline(tmp_path):
    # A lone client's charges commit on the event loop's thread and never wake the writer
    # thread; the request itself must, or the WAL would grow without bound.
    import asyncio
    import sqlite3

    store = _store_with_wal(tmp_path / "c.db")
    writer = GroupWriter(store.writer_conn)
    writer.start()

    async def main():
        await writer.submit(lambda conn: conn.execute("INSERT INTO filler VALUES (0)"), inline=True)
        assert writer.inlined == 1 and writer.checkpoints == 0
        writer.finish_checkpoint()
        await asyncio.to_thread(_wait_for, lambda: writer.checkpoints == 1, "the writer never checkpointed")
        await writer.submit(lambda conn: conn.execute("INSERT INTO filler VALUES (1)"), inline=True)
        assert writer.inlined == 2

    asyncio.run(main())
    writer.stop()
    _, frames_after, _ = sqlite3.connect(store.path).execute("PRAGMA wal_checkpoint(NOOP)").fetchone()
    assert frames_after < 10, frames_after
    store.close()
