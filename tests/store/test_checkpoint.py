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
