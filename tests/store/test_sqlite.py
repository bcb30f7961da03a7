"""The SQLite store: migrations, the database's own guards (floor, append-only), the
settle transaction and grant idempotency."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from farebox.ledger.entries import GRANTS, OVERRUN, REVENUE, SYSTEM_ACCOUNTS, Entry, wallet
from farebox.store import sqlite as ops
from farebox.store.schema import MIGRATIONS
from farebox.store.sqlite import Store, connect, migrate
from farebox.store.writer import GroupWriter

W = wallet(1)


def generation(gid: str, total: int, charged: int, org_id: int = 1) -> dict[str, Any]:
    return {"id": gid, "org_id": org_id, "workspace_id": None, "key_hash": "k", "created_at_ms": 1,
            "model": "acme/model", "provider_name": "Acme", "total_cost_nanos": total, "charged_nanos": charged,
            "tokens_prompt": 10, "tokens_completion": 5, "streamed": False, "cancelled": False,
            "finish_reason": "stop"}


def add_org(conn: sqlite3.Connection, oid: int) -> None:
    conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (oid, f"org{oid}"))
    ops.ensure_account(conn, wallet(oid), oid, "wallet")


def grant_entry(amount: int, ref: str, account: str = W, org_id: int = 1) -> Entry:
    return Entry("grant", GRANTS, account, amount, f"grant:{ref}", 1, org_id)


def charge(amount: int, gid: str, account: str = W) -> Entry:
    return Entry("charge", account, REVENUE, amount, f"charge:{gid}", 1, 1, "k", gid)


def balances(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT id, balance FROM accounts"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "x.db")
    GroupWriter(s.writer_conn).run_sync(lambda conn: add_org(conn, 1))
    yield s
    s.close()


@pytest.fixture
def writer(store: Store) -> GroupWriter:
    return GroupWriter(store.writer_conn)


# -- migrations ----------------------------------------------------------------------

def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    first = Store(path)
    GroupWriter(first.writer_conn).run_sync(lambda conn: add_org(conn, 1))
    first.close()
    second = Store(path)  # opening again applies nothing and loses nothing
    try:
        versions = [v for (v,) in second.reader_conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in MIGRATIONS]
        assert migrate(second.writer_conn) == max(v for v, _ in MIGRATIONS)
        assert [v for (v,) in second.reader_conn.execute("SELECT version FROM schema_migrations")] == versions
        assert balances(second.reader_conn) == {**dict.fromkeys(SYSTEM_ACCOUNTS, 0), W: 0}
    finally:
        second.close()


def test_store_creates_its_directory_and_system_accounts(tmp_path: Path) -> None:
    s = Store(tmp_path / "deep" / "er" / "x.db")
    try:
        rows = s.reader_conn.execute("SELECT id, floored, balance FROM accounts ORDER BY id").fetchall()
        assert rows == [(a, 0, 0) for a in sorted(SYSTEM_ACCOUNTS)]
        assert s.reader_conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        s.close()


def test_migrating_from_a_second_connection_applies_nothing(tmp_path: Path) -> None:
    a = Store(tmp_path / "x.db")
    other = connect(tmp_path / "x.db", "NORMAL")
    try:
        assert migrate(other) == max(v for v, _ in MIGRATIONS)
        assert [v for (v,) in other.execute("SELECT version FROM schema_migrations")] == [v for v, _ in MIGRATIONS]
    finally:
        other.close()
        a.close()


def test_migration_creates_every_guard(store: Store) -> None:
    triggers = {name for (name,) in store.reader_conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"accounts_floor", "accounts_floor_insert", "accounts_floored_fixed",
                        "entries_append_only_update", "entries_append_only_delete",
                        "lots_append_only_update", "lots_append_only_delete",
                        "invoices_append_only_update", "invoices_append_only_delete"}
    statements = ops._statements(MIGRATIONS[0][1])
    assert sum("CREATE TRIGGER" in s for s in statements) == 5
    assert all(s.endswith("END;") for s in statements if "CREATE TRIGGER" in s)


# -- the database's own guards ----------------------------------------------------------

def test_ensure_account_is_idempotent_and_floors_wallets(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.ensure_account(conn, W, 1, "wallet"))
    rows = store.reader_conn.execute("SELECT id, org_id, kind, floored FROM accounts WHERE id = ?", (W,)).fetchall()
    assert rows == [(W, 1, "wallet", 1)]


def test_floor_trigger_refuses_a_negative_wallet(store: Store, writer: GroupWriter) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="balance below zero"):
        writer.run_sync(lambda conn: conn.execute("UPDATE accounts SET balance = -1 WHERE id = ?", (W,)))
    assert balances(store.reader_conn)[W] == 0


def test_floor_trigger_refuses_a_charge_beyond_the_balance(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(100, "a")]))
    with pytest.raises(sqlite3.IntegrityError, match="balance below zero"):
        writer.run_sync(lambda conn: ops.settle(conn, [charge(101, "g1")], generation("g1", 101, 101)))
    # The whole transaction rolled back: no entry, no generation, balances untouched.
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 1
    assert store.reader_conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 0
    assert balances(store.reader_conn)[W] == 100
    writer.run_sync(lambda conn: ops.settle(conn, [charge(100, "g1")], generation("g1", 100, 100)))
    assert balances(store.reader_conn)[W] == 0


def test_system_accounts_may_go_negative(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(5, "a")]))
    assert balances(store.reader_conn)[GRANTS] == -5


def test_entries_are_append_only(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(100, "a")]))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        writer.run_sync(lambda conn: conn.execute("UPDATE entries SET amount = 1"))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        writer.run_sync(lambda conn: conn.execute("UPDATE entries SET memo = 'x'"))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        writer.run_sync(lambda conn: conn.execute("DELETE FROM entries"))
    # Also through a connection of its own, outside the writer.
    raw = sqlite3.connect(store.path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM entries WHERE amount = 100")
    finally:
        raw.close()
    assert store.reader_conn.execute("SELECT amount, memo FROM entries").fetchall() == [(100, None)]


def test_entry_amount_must_be_positive(store: Store, writer: GroupWriter) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        writer.run_sync(lambda conn: conn.execute(
            "INSERT INTO entries (created_at, kind, from_account, to_account, amount, reference)"
            " VALUES (1, 'grant', ?, ?, 0, 'r')", (GRANTS, W)))


def test_entry_references_are_unique(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(100, "a")]))
    with pytest.raises(sqlite3.IntegrityError):
        writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(7, "a")]))
    assert balances(store.reader_conn)[W] == 100


def test_entries_must_name_existing_accounts(store: Store, writer: GroupWriter) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(5, "x", account=wallet(99))]))
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_post_entries_moves_balances(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, []))  # nothing to post is fine
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(100, "a"), grant_entry(50, "b")]))
    writer.run_sync(lambda conn: ops.post_entries(conn, [
        charge(30, "g"), Entry("overrun", OVERRUN, REVENUE, 9, "charge:g:overrun", 1, 1, "k", "g", "m")]))
    assert balances(store.reader_conn) == {**dict.fromkeys(SYSTEM_ACCOUNTS, 0), GRANTS: -150, W: 120, REVENUE: 39, OVERRUN: -9}


# -- settle ---------------------------------------------------------------------------

def test_settle_writes_entries_and_generation_together(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(1000, "a")]))
    gen = generation("g1", 700, 600)
    gen["extra"] = {"nested": ["kept in data"]}
    entries = [charge(600, "g1"), Entry("overrun", OVERRUN, REVENUE, 100, "charge:g1:overrun", 1, 1, "k", "g1")]
    writer.run_sync(lambda conn: ops.settle(conn, entries, gen))
    row = store.reader_conn.execute(
        "SELECT org_id, key_hash, total_cost, charged, streamed, cancelled, finish_reason, data"
        " FROM generations WHERE id = 'g1'").fetchone()
    assert row[:7] == (1, "k", 700, 600, 0, 0, "stop")
    assert orjson.loads(row[7]) == gen
    kinds = store.reader_conn.execute("SELECT kind, amount, generation_id FROM entries WHERE generation_id = 'g1'"
                                      " ORDER BY id").fetchall()
    assert kinds == [("charge", 600, "g1"), ("overrun", 100, "g1")]
    assert balances(store.reader_conn)[W] == 400


def test_settle_is_one_transaction(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.post_entries(conn, [grant_entry(1000, "a")]))
    writer.run_sync(lambda conn: ops.settle(conn, [charge(10, "g1")], generation("g1", 10, 10)))
    before = balances(store.reader_conn)
    # The generation id is taken: its insert fails after the entries were inserted.
    with pytest.raises(sqlite3.IntegrityError):
        writer.run_sync(lambda conn: ops.settle(conn, [Entry("charge", W, REVENUE, 20, "charge:g1-again", 1, 1,
                                                             "k", "g1")], generation("g1", 20, 20)))
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries WHERE reference = 'charge:g1-again'"
                                     ).fetchone()[0] == 0
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 2
    assert balances(store.reader_conn) == before


def test_settle_of_a_free_request_stores_only_the_generation(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.settle(conn, [], generation("g0", 0, 0)))
    assert store.reader_conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 1
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_insert_generation_requires_its_keys(store: Store, writer: GroupWriter) -> None:
    gen = generation("g", 0, 0)
    del gen["provider_name"]
    with pytest.raises(KeyError):
        writer.run_sync(lambda conn: ops.insert_generation(conn, gen))


# -- grant ----------------------------------------------------------------------------

def test_grant_is_idempotent_on_its_reference(store: Store, writer: GroupWriter) -> None:
    first = grant_entry(500, "pay-1")
    new, stored = writer.run_sync(lambda conn: ops.grant(conn, first))
    assert new and stored == dataclasses.replace(first, id=stored.id) and stored.id is not None
    kind, expires = store.reader_conn.execute("SELECT kind, expires_at FROM lots WHERE entry_id = ?", (stored.id,)).fetchone()
    assert (kind, expires) == ("grant", None)  # the credit is a lot, never expiring unless told
    replay = Entry("grant", GRANTS, W, 500, "grant:pay-1", 99, 1)  # a later retry of the same event
    new, stored = writer.run_sync(lambda conn: ops.grant(conn, replay))
    assert not new
    assert (stored.kind, stored.from_account, stored.to_account, stored.amount, stored.reference,
            stored.created_at, stored.org_id) == ("grant", GRANTS, W, 500, "grant:pay-1", 1, 1)
    assert store.reader_conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 1
    assert balances(store.reader_conn)[W] == 500


def test_grant_replay_with_different_terms_returns_the_first(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(lambda conn: ops.grant(conn, Entry("grant", GRANTS, W, 500, "grant:p", 1, 1, memo="first")))
    new, stored = writer.run_sync(lambda conn: ops.grant(conn, grant_entry(9999, "p")))
    assert not new and stored.amount == 500 and stored.memo == "first"
    assert balances(store.reader_conn)[W] == 500


def test_grants_with_distinct_references_add_up(store: Store, writer: GroupWriter) -> None:
    for i in range(5):
        new, _ = writer.run_sync(lambda conn, i=i: ops.grant(conn, grant_entry(100, f"r{i}")))
        assert new
    assert balances(store.reader_conn)[W] == 500


def test_read_sync_and_read(store: Store) -> None:
    def count(conn: sqlite3.Connection, table: str) -> int:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    assert store.read_sync(count, "accounts") == len(SYSTEM_ACCOUNTS) + 1  # and one wallet
    assert asyncio.run(store.read(count, "accounts")) == len(SYSTEM_ACCOUNTS) + 1  # and one wallet


def test_floor_also_holds_for_inserts_and_the_floored_flag(tmp_path):
    import sqlite3 as _sqlite3

    store = Store(tmp_path / "f.db")
    conn = store.writer_conn
    with pytest.raises(_sqlite3.IntegrityError, match="balance below zero"):
        conn.execute("INSERT INTO accounts (id, org_id, kind, floored, balance) VALUES ('org:9:wallet', NULL, 'wallet', 1, -1)")
    conn.execute("INSERT INTO accounts (id, org_id, kind, floored, balance) VALUES ('org:9:wallet', NULL, 'wallet', 1, 0)")
    with pytest.raises(_sqlite3.IntegrityError, match="floor cannot change"):
        conn.execute("UPDATE accounts SET floored = 0 WHERE id = 'org:9:wallet'")
    with pytest.raises(_sqlite3.IntegrityError, match="balance below zero"):
        conn.execute("UPDATE accounts SET balance = -5 WHERE id = 'org:9:wallet'")
    store.close()


def test_one_process_owns_a_database(tmp_path):
    from farebox.store.sqlite import DatabaseInUse

    first = Store(tmp_path / "owned.db")
    with pytest.raises(DatabaseInUse, match="in use by another Farebox process"):
        Store(tmp_path / "owned.db")
    first.close()
    Store(tmp_path / "owned.db").close()  # free again once the owner closed it
