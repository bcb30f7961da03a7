"""The ledger writer's hot path (issue 7). Migration 7: the two indexes no query read are
gone, an existing database migrates with its money intact, and the guards the ledger
relies on (unique references, append-only entries, verify's checks) still hold. The
writer's page cache. And the inserts that leave usually-NULL columns out store exactly
what the full inserts stored, in the same order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from farebox.ledger.entries import GRANTS, REVENUE, Entry, wallet
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.schema import MIGRATIONS
from farebox.store.sqlite import WRITER_CACHE_KIB, Store, connect, migrate
from farebox.store.writer import GroupWriter

W = wallet(1)


def generation(gid: str, cost: int) -> dict[str, object]:
    return {"id": gid, "org_id": 1, "workspace_id": None, "key_hash": "k", "created_at_ms": 2, "model": "m",
            "provider_name": "p", "total_cost_nanos": cost, "charged_nanos": cost, "tokens_prompt": 1,
            "tokens_completion": 1, "streamed": False, "cancelled": False, "finish_reason": "stop"}


def database_at_version_6(path: Path) -> None:
    """A database as the release before migration 7 left it (migrations 1 to 6, applied as
    `migrate` applies them) with a grant and two settled charges."""
    conn = connect(path, "NORMAL")
    assert migrate(conn, through=6) == 6
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
    ops.ensure_account(conn, W, 1, "wallet")
    ops.grant(conn, Entry("grant", GRANTS, W, 100, "grant:a", 1, 1))
    for gid, cost in (("g1", 30), ("g2", 20)):
        ops.settle(conn, [Entry("charge", W, REVENUE, cost, f"charge:{gid}", 2, 1, "k", gid)], generation(gid, cost))
    conn.execute("COMMIT")
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries'")}
    assert {"entries_key", "entries_generation"} <= indexes   # what migration 7 is about to drop
    conn.close()


def entry_indexes(conn: sqlite3.Connection) -> set[str]:
    return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries'")}


def test_a_new_database_indexes_entries_only_by_reference(tmp_path: Path) -> None:
    # Every index on entries is updated by every charge, inside the commit a response waits
    # for: the unique reference (idempotency) is the only one left.
    store = Store(tmp_path / "x.db")
    try:
        assert entry_indexes(store.reader_conn) == {"sqlite_autoindex_entries_1"}
        assert 7 in {v for (v,) in store.reader_conn.execute("SELECT version FROM schema_migrations")}
    finally:
        store.close()


def test_a_version_6_database_migrates_with_its_money_intact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    database_at_version_6(path)
    store = Store(path)
    try:
        conn = store.reader_conn
        assert [v for (v,) in conn.execute("SELECT version FROM schema_migrations")] == [v for v, _ in MIGRATIONS]
        assert entry_indexes(conn) == {"sqlite_autoindex_entries_1"}
        assert conn.execute("SELECT reference, amount FROM entries ORDER BY id").fetchall() == [
            ("grant:a", 100), ("charge:g1", 30), ("charge:g2", 20)]
        assert dict(conn.execute("SELECT id, balance FROM accounts WHERE id IN (?, ?)", (W, REVENUE))) == {
            W: 50, REVENUE: 50}
        report = verify_store(conn)
        assert report.ok, report.wire()
        assert report.counts["generations"] == 2
    finally:
        store.close()


def test_the_ledger_guards_hold_after_migration_7(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    database_at_version_6(path)
    store = Store(path)
    writer = GroupWriter(store.writer_conn)
    try:
        # References stay unique: a second charge for g1 is refused.
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            writer.run_sync(lambda conn: ops.post_entries(conn, [Entry("charge", W, REVENUE, 1, "charge:g1", 3, 1)]))
        # Entries stay append-only.
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            writer.run_sync(lambda conn: conn.execute("UPDATE entries SET amount = 1 WHERE reference = 'charge:g1'"))
        # verify no longer has an index on entries.generation_id, and still finds a charge
        # with no generation and a generation with two charges.
        writer.run_sync(lambda conn: ops.post_entries(conn, [
            Entry("charge", W, REVENUE, 5, "charge:lost", 3, 1, "k", "lost"),
            Entry("charge", W, REVENUE, 5, "charge:g2:again", 3, 1, "k", "g2")]))
        report = verify_store(store.reader_conn)
        assert report.checks["orphans"] == 1
        assert report.checks["generations"] == 1
        assert {v["check"]: v.get("generation") for v in report.violations} == {"orphans": "lost", "generations": "g2"}
    finally:
        store.close()


def test_the_writer_connection_keeps_a_larger_page_cache(tmp_path: Path) -> None:
    # Negative cache_size is in KiB. Only the writer's: the reader keeps SQLite's default.
    store = Store(tmp_path / "x.db")
    try:
        assert store.writer_conn.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB
        assert store.reader_conn.execute("PRAGMA cache_size").fetchone()[0] == -2000
    finally:
        store.close()


def store_with_wallet(tmp_path: Path) -> tuple[Store, GroupWriter]:
    """A fresh store with organization 1 and its wallet, and a writer not yet started."""
    store = Store(tmp_path / "x.db")
    writer = GroupWriter(store.writer_conn)
    writer.run_sync(lambda conn: (conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)"),
                                  ops.ensure_account(conn, W, 1, "wallet")))
    return store, writer


def test_entries_with_and_without_a_memo_keep_their_order_and_memos(tmp_path: Path) -> None:
    # Charges (no memo) and overruns (a memo) go through different statements; the ids must
    # still follow the order the book applied them in, which the lots replay relies on.
    store, writer = store_with_wallet(tmp_path)
    try:
        memos = [None, None, "m1", None, "m2", "m3", None]
        entries = [Entry("grant", GRANTS, W, i + 1, f"grant:{i}", 1, 1, memo=m) for i, m in enumerate(memos)]
        writer.run_sync(lambda conn: ops.post_entries(conn, entries))
        rows = store.reader_conn.execute("SELECT id, reference, amount, memo, org_id FROM entries ORDER BY id").fetchall()
        assert rows == [(i + 1, f"grant:{i}", i + 1, m, 1) for i, m in enumerate(memos)]
        assert dict(store.reader_conn.execute("SELECT id, balance FROM accounts WHERE id = ?", (W,))) == {W: 28}
    finally:
        store.close()


def test_settlements_with_and_without_a_project_store_every_column(tmp_path: Path) -> None:
    # One batch mixing records that name a project and records that do not: each stores its
    # own project (or NULL) and its whole record as a JSON BLOB, as before.
    store, writer = store_with_wallet(tmp_path)
    try:
        writer.run_sync(lambda conn: ops.post_entries(conn, [Entry("grant", GRANTS, W, 1000, "grant:a", 1, 1)]))
        records = []
        for i, project in enumerate([None, 7, 7, None, 9]):
            g = {**generation(f"g{i}", 10 + i), "project_id": project, "endpoint_id": "p/m", "settled_at_ms": 3,
                 "native_tokens_reasoning": i, "is_byok": i == 4, "byok_cost_nanos": 100 * i}
            records.append(g)
        settlements = [ops.SettleOp([Entry("charge", W, REVENUE, g["total_cost_nanos"], f"charge:{g['id']}", 2, 1, "k",
                                           g["id"])], g) for g in records]
        # As the writer hands a batch of consecutive settlements over: in one run_many.
        writer.run_sync(lambda conn: ops.SettleOp.run_many(conn, settlements))
        rows = {r[0]: r[1:] for r in store.reader_conn.execute(
            "SELECT id, project_id, endpoint_id, reasoning_tokens, is_byok, byok_cost, settled_at, typeof(data), data"
            " FROM generations")}
        assert rows == {g["id"]: (g["project_id"], "p/m", g["native_tokens_reasoning"], int(g["is_byok"]),
                                  g["byok_cost_nanos"], 3, "blob", orjson.dumps(g)) for g in records}
        assert verify_store(store.reader_conn).ok
    finally:
        store.close()
