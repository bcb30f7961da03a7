"""The settlement journal (issue 7): a lone request's charge is durable after one append,
the writer commits it behind the answer, and a start applies what a crash left behind:
once, in order, never a record cut short, and loudly when a record cannot be applied."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farebox.clock import FakeClock
from farebox.ledger.entries import GRANTS, REVENUE, Entry, wallet
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.journal import Journal, JournalError, decode, encode, journal_path, replay, unapplied
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from tests.store.test_generation_record import full_record

W = wallet(1)
GRANT = 10**12
GATE_TIMEOUT_S = 60  # only a guard against a hang


def seed(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (1, 'o', 0)")
    ops.ensure_account(conn, W, 1, "wallet")
    ops.post_entries(conn, [Entry("grant", GRANTS, W, GRANT, "grant:a", 1, 1)])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "farebox.db"
    store = Store(path)
    GroupWriter(store.writer_conn).run_sync(seed)
    store.close()
    return path


def settlement(i: int, cost: int = 1000, **changes: Any) -> ops.SettleOp:
    gid = f"gen-{i:04d}"
    record = full_record(gid, charged_nanos=cost, total_cost_nanos=cost, **changes)
    return ops.SettleOp([Entry("charge", W, REVENUE, cost, f"charge:{gid}", 2, 1, record["key_hash"], gid)], record,
                        {"prompt": "hé\nllo", "completion": "x"} if i % 2 else None)


def stored_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [gid for (gid,) in conn.execute("SELECT id FROM generations ORDER BY rowid")]
    finally:
        conn.close()


def balance(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT balance FROM accounts WHERE id = ?", (W,)).fetchone()[0]
    finally:
        conn.close()


def impatient(db: Path) -> tuple[Store, GroupWriter]:
    """A store whose writer gives up at once on a locked database instead of waiting."""
    store = Store(db)
    store.writer_conn.execute("PRAGMA busy_timeout = 0")
    return store, GroupWriter(store.writer_conn)


@contextlib.contextmanager
def locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock until it rolls back: commits fail meanwhile."""
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def settled(writer: GroupWriter) -> None:
    """Until the writer has finished (committed or failed) everything posted so far."""
    while writer.posts_done < writer.posts:
        await asyncio.sleep(0.005)


def retrying(db: Path) -> tuple[Store, GroupWriter, Path, FakeClock, Journal]:
    """An impatient writer and a journal on a clock the test moves, which empties its file
    whenever it may (`reset_bytes=1`): for the tests of failed posts and their retries."""
    store, writer = impatient(db)
    path = journal_path(db)
    clock = FakeClock()
    return store, writer, path, clock, Journal(path, writer, clock, reset_bytes=1)


async def journal_while_locked(db: Path, writer: GroupWriter, journal: Journal, *numbers: int) -> None:
    """Journal these settlements while another connection holds the database: each one's post
    fails (the first failure waits 1 s before it is posted again)."""
    with locked(db):
        for n in numbers:
            journal.record(settlement(n))
            await settled(writer)


def crashed_with(db: Path, settlements: list[ops.SettleOp]) -> None:
    """Journal the settlements as a running gateway does, but with the writer thread never
    started: the process 'dies' with all of them answered and none committed."""
    store = Store(db)
    writer = GroupWriter(store.writer_conn)
    journal = Journal(journal_path(db), writer, FakeClock())
    for op in settlements:
        journal.record(op)
    assert writer.posts == len(settlements) and writer.posts_done == 0
    store.close()   # no journal.close(), no writer.stop(): a kill -9


def test_a_record_reads_back_as_the_settlement_it_was() -> None:
    op = settlement(1)
    line = encode(op)
    assert line.endswith(b"\n") and line.count(b"\n") == 1   # one line, whatever the content holds
    back = decode(line[:-1])
    assert back.entries == op.entries
    assert back.generation == op.generation and list(back.generation) == list(op.generation)
    assert back.content == op.content


def test_a_start_applies_what_a_crash_left_in_the_journal_in_order(db: Path) -> None:
    crashed_with(db, [settlement(i) for i in range(5)])
    assert stored_ids(db) == []
    conn = sqlite3.connect(db)
    assert unapplied(conn, journal_path(db)) == [f"gen-{i:04d}" for i in range(5)]
    conn.close()

    store = Store(db)
    assert replay(journal_path(db), GroupWriter(store.writer_conn)) == 5
    store.close()
    assert stored_ids(db) == [f"gen-{i:04d}" for i in range(5)]
    assert balance(db) == GRANT - 5 * 1000
    assert journal_path(db).stat().st_size == 0          # emptied once applied
    conn = sqlite3.connect(db)
    assert verify_store(conn).ok
    # The records are stored as the writer would have stored them.
    row = conn.execute(f"{ops.SELECT_GENERATION} WHERE id = 'gen-0001'").fetchone()
    assert ops.generation_from_row(row) == settlement(1).generation
    assert conn.execute("SELECT COUNT(*) FROM generation_content").fetchone()[0] == 2   # records 1 and 3
    conn.close()


def test_a_record_already_committed_is_not_applied_again(db: Path) -> None:
    store = Store(db)
    writer = GroupWriter(store.writer_conn)
    journal = Journal(journal_path(db), writer, FakeClock())

    async def main() -> None:
        writer.start()
        journal.record(settlement(1))
        journal.record(settlement(2))
        await writer.caught_up()

    asyncio.run(main())
    store.close()   # a crash after the commits, before the journal was emptied
    assert journal_path(db).stat().st_size > 0

    store = Store(db)
    assert replay(journal_path(db), GroupWriter(store.writer_conn)) == 0
    store.close()
    assert stored_ids(db) == ["gen-0001", "gen-0002"]
    assert balance(db) == GRANT - 2000


def test_a_last_record_cut_short_is_dropped(db: Path) -> None:
    crashed_with(db, [settlement(1), settlement(2)])
    path = journal_path(db)
    path.write_bytes(path.read_bytes()[:-7])   # the second write never finished
    store = Store(db)
    assert replay(path, GroupWriter(store.writer_conn)) == 1
    store.close()
    assert stored_ids(db) == ["gen-0001"]


def test_a_damaged_record_in_the_middle_stops_the_start(db: Path) -> None:
    crashed_with(db, [settlement(1), settlement(2)])
    path = journal_path(db)
    path.write_bytes(b"{not json\n" + path.read_bytes())
    store = Store(db)
    with pytest.raises(JournalError, match="line 1: not a settlement record"):
        replay(path, GroupWriter(store.writer_conn))
    store.close()
    assert stored_ids(db) == []
    assert path.stat().st_size > 0                          # kept for the operator


def test_a_record_that_cannot_be_applied_stops_the_start_and_names_it(db: Path) -> None:
    # More than the wallet holds: the floor trigger refuses it, as it would any overdraft.
    crashed_with(db, [settlement(1), settlement(2, cost=GRANT * 2)])
    store = Store(db)
    with pytest.raises(JournalError, match="line 2: the charge for generation gen-0002 could not be applied"):
        replay(journal_path(db), GroupWriter(store.writer_conn))
    store.close()
    assert stored_ids(db) == []                             # all or nothing
    assert balance(db) == GRANT


def test_the_journal_is_emptied_only_when_everything_in_it_committed(db: Path) -> None:
    store = Store(db)
    writer = GroupWriter(store.writer_conn)
    path = journal_path(db)
    journal = Journal(path, writer, FakeClock(), reset_bytes=1)
    gate = threading.Event()

    async def main() -> None:
        writer.start()
        writer.submit(lambda conn: gate.wait(GATE_TIMEOUT_S))   # holds the writer
        journal.record(settlement(1))
        journal.record(settlement(2))                            # 1 is not committed: no reset
        assert journal.resets == 0 and path.read_bytes().count(b"\n") == 2
        gate.set()
        await writer.caught_up()
        journal.record(settlement(3))                            # all committed: reset first
        assert journal.resets == 1 and path.read_bytes().count(b"\n") == 1
        await writer.caught_up()

    asyncio.run(main())
    writer.stop()
    journal.close()
    assert path.stat().st_size == 0
    store.close()
    assert stored_ids(db) == ["gen-0001", "gen-0002", "gen-0003"]


def test_a_post_that_failed_to_commit_keeps_the_journal_for_the_next_start(db: Path) -> None:
    store, writer = impatient(db)
    path = journal_path(db)
    journal = Journal(path, writer, FakeClock(), reset_bytes=1)

    async def main() -> None:
        writer.start()
        with locked(db):
            journal.record(settlement(1))
            await settled(writer)
        journal.record(settlement(2))                            # no reset: 1 failed
        await writer.caught_up()

    asyncio.run(main())
    assert writer.posts_failed == 1
    assert journal.resets == 0
    writer.stop()
    journal.close()                                          # keeps it, and says so
    store.close()
    assert stored_ids(db) == ["gen-0002"]
    assert path.read_bytes().count(b"\n") == 2

    store = Store(db)
    assert replay(path, GroupWriter(store.writer_conn)) == 1   # the failed one, after the later one
    store.close()
    assert sorted(stored_ids(db)) == ["gen-0001", "gen-0002"]
    assert balance(db) == GRANT - 2000


def test_a_failed_write_leaves_the_file_as_it_was_and_posts_nothing(db: Path, tmp_path: Path) -> None:
    store = Store(db)
    writer = GroupWriter(store.writer_conn)
    journal = Journal(Path("/dev/full"), writer, FakeClock())
    with pytest.raises(OSError):
        journal.record(settlement(1))
    assert writer.posts == 0 and journal.records == 0 and journal.usable
    store.close()


def test_a_record_written_after_the_writer_stopped_is_kept(db: Path) -> None:
    store = Store(db)
    writer = GroupWriter(store.writer_conn)
    path = journal_path(db)
    journal = Journal(path, writer, FakeClock())
    writer.start()
    writer.stop()
    journal.record(settlement(1))                            # durable here; nothing to post it to
    journal.close()
    store.close()
    assert path.read_bytes().count(b"\n") == 1
    store = Store(db)
    assert replay(path, GroupWriter(store.writer_conn)) == 1
    store.close()
    assert stored_ids(db) == ["gen-0001"]


def test_a_failed_post_is_posted_again_after_a_growing_wait_until_it_commits(db: Path) -> None:
    store, writer, path, clock, journal = retrying(db)

    async def main() -> None:
        writer.start()
        with locked(db) as other:                         # the database is locked for a while
            journal.record(settlement(1))
            await settled(writer)
            assert writer.has_failed_posts
            journal.record(settlement(2))                 # a first failure: waits 1 s
            await settled(writer)
            assert journal.retried == 0
            clock.advance(1)
            journal.record(settlement(3))                 # 1 and 2 again (and fail again)
            await settled(writer)
            assert journal.retried == 2 and writer.posts_failed == 5
            other.execute("ROLLBACK")                     # and now it is not
        clock.advance(1)
        journal.record(settlement(4))                     # the wait is 2 s now: not yet
        await settled(writer)
        assert journal.retried == 2 and writer.has_failed_posts
        clock.advance(1)
        journal.record(settlement(5))                     # 1, 2 and 3 again: they commit
        await settled(writer)
        assert journal.retried == 5 and not writer.has_failed_posts
        assert journal.resets == 0                        # never while something had failed
        journal.record(settlement(6))                     # all committed: emptied first
        await settled(writer)
        assert journal.resets == 1 and path.read_bytes().count(b"\n") == 1

    asyncio.run(main())
    writer.stop()
    journal.close()
    store.close()
    assert sorted(stored_ids(db)) == [f"gen-{i:04d}" for i in range(1, 7)]
    assert balance(db) == GRANT - 6000
    assert path.stat().st_size == 0
    conn = sqlite3.connect(db)
    assert verify_store(conn).ok
    conn.close()


def test_reads_go_on_while_the_writer_cannot_commit(db: Path) -> None:
    store, writer = impatient(db)
    store.read_after(writer)
    journal = Journal(journal_path(db), writer, FakeClock())

    async def main() -> int:
        writer.start()
        with locked(db):
            journal.record(settlement(1))
            return await store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    assert asyncio.run(main()) == 0
    writer.stop()
    store.close()


def test_failed_charges_due_again_after_the_writer_stopped_are_kept(db: Path) -> None:
    store, writer, path, clock, journal = retrying(db)

    async def main() -> None:
        writer.start()
        await journal_while_locked(db, writer, journal, 1, 2)
        assert writer.posts_failed == 2

    asyncio.run(main())
    writer.stop()                                         # shutting down
    clock.advance(1)
    journal.record(settlement(3))                         # 1 and 2 are due, and cannot be posted
    journal.close()                                       # so the file is kept
    store.close()
    assert path.read_bytes().count(b"\n") == 3
    store = Store(db)
    assert replay(path, GroupWriter(store.writer_conn)) == 3
    store.close()
    assert sorted(stored_ids(db)) == ["gen-0001", "gen-0002", "gen-0003"]
