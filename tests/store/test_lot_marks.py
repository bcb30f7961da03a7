"""Migration 6: when a lot became spendable (`lots.visible_after`). An existing database
migrates and its lots replay as before; the lots table stays append-only except for
setting that mark once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from farebox.clock import FakeClock
from farebox.ledger.book import Book
from farebox.ledger.entries import EXPIRED, GRANTS, REVENUE, Entry, wallet
from farebox.ledger.ledger import Ledger
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.schema import MIGRATIONS
from farebox.store.sqlite import Store, connect, migrate
from farebox.store.writer import GroupWriter

W = wallet(1)
APPEND_ONLY = "lots are append-only"


def database_at_version_5(path: Path) -> None:
    """A database as the release before migration 6 left it: migrations 1 to 5, applied as
    `migrate` applies them, with a wallet that has two lots and a charge that drew from one."""
    conn = connect(path, "NORMAL")
    assert migrate(conn, through=5) == 5
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
    ops.ensure_account(conn, W, 1, "wallet")
    ops.grant(conn, Entry("grant", GRANTS, W, 100, "grant:never", 1, 1))           # entry 1
    ops.grant(conn, Entry("trial", GRANTS, W, 50, "trial:soon", 1, 1), 10**12)     # entry 2: drawn first
    ops.post_entries(conn, [Entry("charge", W, REVENUE, 30, "charge:g", 2, 1, "k", "g")])  # entry 3
    conn.execute("INSERT INTO generations (id, org_id, key_hash, created_at, model, total_cost, charged,"
                 " tokens_prompt, tokens_completion, streamed, cancelled, data)"
                 " VALUES ('g', 1, 'k', 2, 'm', 30, 30, 1, 1, 0, 0, x'7b7d')")
    conn.execute("COMMIT")
    with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY):  # version 5: no update at all
        conn.execute("UPDATE lots SET expires_at = 5 WHERE entry_id = 1")
    conn.close()


def test_a_version_5_database_migrates_and_its_lots_replay_as_before(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    database_at_version_5(path)
    store = Store(path)
    try:
        conn = store.reader_conn
        assert [v for (v,) in conn.execute("SELECT version FROM schema_migrations")] == [v for v, _ in MIGRATIONS]  # 6 and every later one
        assert "visible_after" in {row[1] for row in conn.execute("PRAGMA table_info(lots)")}
        assert dict(conn.execute("SELECT entry_id, visible_after FROM lots")) == {1: None, 2: None}
        _, _, visible = ops.wallet_history(conn)
        assert visible == {}
        clock = FakeClock()
        ledger = Ledger(Book(clock, 900.0), GroupWriter(store.writer_conn), clock, sweep_interval_s=3600)
        ledger.load(conn)
        lots = ledger.book.lots[W]
        # As before: each lot live from its own entry, the charge drawn from the trial lot.
        assert {i: x.remaining for i, x in lots.by_id.items()} == {1: 100, 2: 20}
        assert [x.id for x in lots.live] == [2, 1]
        report = verify_store(conn)
        assert report.ok, report.violations
        # The migrated table takes marks, once.
        writer = GroupWriter(store.writer_conn)
        assert writer.run_sync(lambda c: ops.mark_visible(c, [1, 2])) == 3
        assert dict(conn.execute("SELECT entry_id, visible_after FROM lots")) == {1: 3, 2: 3}
        with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY):
            writer.run_sync(lambda c: c.execute("UPDATE lots SET expires_at = 5 WHERE entry_id = 1"))
    finally:
        store.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "x.db")
    s_writer = GroupWriter(s.writer_conn)

    def setup(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
        ops.ensure_account(conn, W, 1, "wallet")
        ops.grant(conn, Entry("grant", GRANTS, W, 100, "grant:a", 1, 1), 10**12)  # entry and lot 1
        ops.post_entries(conn, [Entry("expiry", W, EXPIRED, 10, "expire:lot:1:0", 2, 1)])  # entry 2

    s_writer.run_sync(setup)
    yield s
    s.close()


@pytest.fixture
def writer(store: Store) -> GroupWriter:
    return GroupWriter(store.writer_conn)


def lot_row(store: Store) -> tuple[int, int, str, int | None, str | None, int | None]:
    return store.reader_conn.execute(
        "SELECT entry_id, org_id, kind, expires_at, purchase_id, visible_after FROM lots").fetchone()


def refused(writer: GroupWriter, sql: str) -> None:
    with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY):
        writer.run_sync(lambda conn: conn.execute(sql))


@pytest.mark.parametrize("sql", [
    "UPDATE lots SET kind = 'bonus'",
    "UPDATE lots SET expires_at = NULL",
    "UPDATE lots SET org_id = 2",
    "UPDATE lots SET purchase_id = 'p'",
    "UPDATE lots SET entry_id = 2",
    "UPDATE lots SET kind = kind",                             # even a no-op: nothing but the mark
    "UPDATE lots SET visible_after = NULL",
    "UPDATE lots SET visible_after = 0",                       # below the lot's own entry
    "UPDATE lots SET visible_after = 2, kind = 'trial'",       # the mark, with another change
    "UPDATE lots SET visible_after = 2, expires_at = 5",
    "DELETE FROM lots",
])
def test_lots_refuse_every_change_but_their_first_mark(store: Store, writer: GroupWriter, sql: str) -> None:
    before = lot_row(store)
    refused(writer, sql)
    assert lot_row(store) == before == (1, 1, "grant", 10**12, None, None)


def test_a_lot_is_marked_once_with_the_highest_entry_id(store: Store, writer: GroupWriter) -> None:
    assert writer.run_sync(lambda conn: ops.mark_visible(conn, [1])) == 2
    assert lot_row(store) == (1, 1, "grant", 10**12, None, 2)
    refused(writer, "UPDATE lots SET visible_after = 5")   # a second mark, by hand
    refused(writer, "UPDATE lots SET visible_after = 2")   # even the same one
    refused(writer, "UPDATE lots SET visible_after = NULL")
    writer.run_sync(lambda conn: ops.post_entries(conn, [Entry("expiry", W, EXPIRED, 5, "expire:lot:1:10", 3, 1)]))
    assert writer.run_sync(lambda conn: ops.mark_visible(conn, [1])) == 3  # marks only unmarked lots
    assert lot_row(store)[5] == 2
    _, stored, visible = ops.wallet_history(store.reader_conn)
    assert stored == {1: ("grant", 10**12, None)} and visible == {1: 2}
