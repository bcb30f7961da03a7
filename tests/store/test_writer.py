"""The group-commit writer: batching under a burst, order, isolation of a failing
operation, and stop() committing everything submitted."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farebox.ledger.entries import GRANTS, REVENUE, Entry, wallet
from farebox.ledger.verify import verify_store
from farebox.store import sqlite as ops
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter, WriterStopped

W = wallet(1)
GATE_TIMEOUT_S = 60  # only a guard against a hang; no assertion depends on time


def add_org(conn: sqlite3.Connection, oid: int) -> None:
    conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (oid, f"org{oid}"))
    ops.ensure_account(conn, wallet(oid), oid, "wallet")


def grant(i: int, amount: int = 1) -> Entry:
    return Entry("grant", GRANTS, W, amount, f"grant:{i}", 1, 1)


def post(entry: Entry) -> Any:
    def op(conn: sqlite3.Connection) -> int:
        ops.post_entries(conn, [entry])
        return int(entry.reference.split(":")[1])
    return op


def count(store: Store, sql: str = "SELECT COUNT(*) FROM entries") -> int:
    return store.reader_conn.execute(sql).fetchone()[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "x.db")
    GroupWriter(s.writer_conn).run_sync(lambda conn: add_org(conn, 1))
    yield s
    s.close()


@pytest.fixture
def writer(store: Store) -> Iterator[GroupWriter]:
    w = GroupWriter(store.writer_conn)
    yield w
    w.stop()


def gate_op(gate: threading.Event) -> Any:
    """An operation that holds the writer inside a transaction until the test opens the
    gate, so that everything submitted meanwhile queues up for the next batch."""
    def op(conn: sqlite3.Connection) -> bool:
        return gate.wait(GATE_TIMEOUT_S)
    return op


def test_run_sync_commits_and_returns(store: Store, writer: GroupWriter) -> None:
    assert writer.run_sync(post(grant(7))) == 7
    assert count(store) == 1


def test_run_sync_rolls_back_on_failure(store: Store, writer: GroupWriter) -> None:
    def op(conn: sqlite3.Connection) -> None:
        ops.post_entries(conn, [grant(1)])
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        writer.run_sync(op)
    assert count(store) == 0
    assert not store.writer_conn.in_transaction


def test_run_sync_is_refused_while_the_thread_runs(writer: GroupWriter) -> None:
    writer.start()
    with pytest.raises(AssertionError):
        writer.run_sync(post(grant(1)))


def test_a_burst_is_committed_in_fewer_batches_than_ops(store: Store, writer: GroupWriter) -> None:
    n = 300
    gate = threading.Event()

    async def main() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        futures = [writer.submit(post(grant(i))) for i in range(n)]
        gate.set()
        return await asyncio.gather(first, *futures)

    results = asyncio.run(main())
    assert results == [True, *range(n)]          # each future gets its own op's result, in order
    assert writer.ops == n + 1
    assert writer.batches < writer.ops
    assert writer.batches <= 2                   # the gate's batch, then everything that queued behind it
    # Committed in submission order.
    refs = [r for (r,) in store.reader_conn.execute("SELECT reference FROM entries ORDER BY id")]
    assert refs == [f"grant:{i}" for i in range(n)]
    assert count(store, f"SELECT balance FROM accounts WHERE id = '{W}'") == n


def test_concurrent_tasks_each_get_their_result(store: Store, writer: GroupWriter) -> None:
    n = 200
    gate = threading.Event()

    async def request(i: int) -> tuple[int, int]:
        result = await writer.submit(post(grant(i, amount=i + 1)))
        # The future resolves only after the commit: a fresh read already sees the row.
        seen = store.reader_conn.execute("SELECT amount FROM entries WHERE reference = ?",
                                         (f"grant:{i}",)).fetchone()[0]
        return result, seen

    async def main() -> list[tuple[int, int]]:
        writer.start()
        first = writer.submit(gate_op(gate))
        tasks = [asyncio.create_task(request(i)) for i in range(n)]
        await asyncio.sleep(0)  # let every task submit
        gate.set()
        await first
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert results == [(i, i + 1) for i in range(n)]
    assert writer.batches < writer.ops == n + 1


def test_a_failing_op_fails_only_its_own_future(store: Store, writer: GroupWriter) -> None:
    gate = threading.Event()

    def python_error(conn: sqlite3.Connection) -> None:
        ops.post_entries(conn, [grant(100)])  # its own write must not survive
        raise ValueError("bad op")

    overdraw = Entry("charge", W, REVENUE, 10**9, "charge:too-much", 1, 1, "k", "g")

    async def main() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        futures = [writer.submit(post(grant(0))),
                   writer.submit(python_error),
                   writer.submit(post(grant(1))),
                   writer.submit(lambda conn: ops.post_entries(conn, [overdraw])),  # floor trigger refuses
                   writer.submit(post(grant(2)))]
        gate.set()
        await first
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] == 0 and results[2] == 1 and results[4] == 2
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad op"
    assert isinstance(results[3], sqlite3.IntegrityError)
    refs = [r for (r,) in store.reader_conn.execute("SELECT reference FROM entries ORDER BY id")]
    assert refs == ["grant:0", "grant:1", "grant:2"]   # each neighbour committed exactly once
    assert count(store, f"SELECT balance FROM accounts WHERE id = '{W}'") == 3
    assert writer.ops == 6


def test_batch_max_splits_batches(store: Store) -> None:
    writer = GroupWriter(store.writer_conn, batch_max=3)
    gate = threading.Event()

    async def main() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        futures = [writer.submit(post(grant(i))) for i in range(10)]
        gate.set()
        return await asyncio.gather(first, *futures)

    try:
        assert asyncio.run(main()) == [True, *range(10)]
    finally:
        writer.stop()
    assert writer.ops == 11
    assert writer.batches >= 4  # at most three operations a transaction
    assert count(store) == 10


def test_stop_commits_everything_already_submitted(store: Store, writer: GroupWriter) -> None:
    n = 250

    async def main() -> list[Any]:
        writer.start()
        futures = [writer.submit(post(grant(i))) for i in range(n)]
        writer.stop()  # blocks until the thread has committed and exited
        assert count(store) == n
        with pytest.raises(WriterStopped):
            writer.submit(post(grant(n)))
        return await asyncio.gather(*futures)

    assert asyncio.run(main()) == list(range(n))
    assert writer.ops == n
    writer.stop()  # stopping twice is harmless


def test_stop_without_start(store: Store) -> None:
    writer = GroupWriter(store.writer_conn)
    writer.stop()

    async def main() -> None:
        with pytest.raises(WriterStopped):
            writer.submit(post(grant(1)))

    asyncio.run(main())


def test_a_settle_through_the_writer_is_atomic(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(post(grant(0, amount=1000)))
    gen = {"id": "g1", "org_id": 1, "workspace_id": None, "key_hash": "k", "created_at_ms": 1, "model": "m",
           "provider_name": "p", "total_cost_nanos": 5, "charged_nanos": 5, "tokens_prompt": 1,
           "tokens_completion": 1, "streamed": False, "cancelled": False, "finish_reason": "stop"}
    c1 = Entry("charge", W, REVENUE, 5, "charge:g1", 1, 1, "k", "g1")
    c2 = Entry("charge", W, REVENUE, 5, "charge:g1-replay", 1, 1, "k", "g1")

    async def main() -> list[Any]:
        writer.start()
        return await asyncio.gather(writer.submit(lambda conn: ops.settle(conn, [c1], gen)),
                                    writer.submit(lambda conn: ops.settle(conn, [c2], gen)),
                                    return_exceptions=True)

    first, second = asyncio.run(main())
    assert first is None
    assert isinstance(second, sqlite3.IntegrityError)   # duplicate generation id
    assert count(store, "SELECT COUNT(*) FROM entries WHERE generation_id = 'g1'") == 1
    assert count(store, f"SELECT balance FROM accounts WHERE id = '{W}'") == 995


def _generation(gid: str, cost: int) -> dict[str, Any]:
    return {"id": gid, "org_id": 1, "workspace_id": None, "key_hash": "k", "created_at_ms": 1, "model": "m",
            "provider_name": "p", "total_cost_nanos": cost, "charged_nanos": cost, "tokens_prompt": 1,
            "tokens_completion": 1, "streamed": False, "cancelled": False, "finish_reason": "stop"}


def _settle_op(i: int, cost: int) -> ops.SettleOp:
    gid = f"gen-{i}"
    return ops.SettleOp([Entry("charge", W, REVENUE, cost, f"charge:{gid}", 1, 1, "k", gid)], _generation(gid, cost))


def test_consecutive_settlements_are_written_together_in_order(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(post(grant(0, 1000)))
    gate = threading.Event()

    async def burst() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        await asyncio.sleep(0)  # let the writer take the gate op, so the rest queue up
        mixed = [_settle_op(1, 10), _settle_op(2, 20), post(grant(5, 5)), _settle_op(3, 30), _settle_op(4, 40)]
        futures = [writer.submit(op) for op in mixed]
        gate.set()
        await first
        return await asyncio.gather(*futures)

    results = asyncio.run(burst())
    assert results == [None, None, 5, None, None]
    assert count(store, "SELECT COUNT(*) FROM generations") == 4
    assert store.reader_conn.execute("SELECT balance FROM accounts WHERE id = ?", (W,)).fetchone()[0] == (
        1000 + 5 - 100)
    report = verify_store(store.reader_conn)
    assert report.ok, report.wire()


def test_a_bad_settlement_in_a_group_fails_alone(store: Store, writer: GroupWriter) -> None:
    writer.run_sync(post(grant(0, 100)))
    gate = threading.Event()

    async def burst() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        await asyncio.sleep(0)
        good, overdraw, also_good = _settle_op(1, 10), _settle_op(2, 1000), _settle_op(3, 20)
        futures = [writer.submit(op) for op in (good, overdraw, also_good)]
        gate.set()
        await first
        return await asyncio.gather(*futures, return_exceptions=True)

    good, overdraw, also_good = asyncio.run(burst())
    assert good is None and also_good is None
    assert isinstance(overdraw, sqlite3.IntegrityError)  # the floor trigger refused it
    assert count(store, "SELECT COUNT(*) FROM generations") == 2


# -- inline commits: a lone caller's op committed on its own thread ------------------------

def test_an_inline_op_commits_on_the_callers_thread_and_comes_back_done(store: Store, writer: GroupWriter) -> None:
    async def main() -> tuple[bool, int, int]:
        writer.start()
        future = writer.submit(post(grant(1)), inline=True)
        done = future.done()
        thread = await writer.submit(lambda conn: threading.get_ident(), inline=True)
        return done, await future, thread

    assert asyncio.run(main()) == (True, 1, threading.get_ident())
    assert writer.inlined == writer.ops == 2
    assert count(store) == 1 and verify_store(store.reader_conn).ok


def test_an_inline_op_queues_behind_a_batch_the_writer_is_committing(store: Store, writer: GroupWriter) -> None:
    gate = threading.Event()

    async def main() -> None:
        writer.start()
        inside = threading.Event()

        def held_op(conn: sqlite3.Connection) -> bool:
            inside.set()
            return gate.wait(GATE_TIMEOUT_S)

        held = writer.submit(held_op)
        assert await asyncio.to_thread(inside.wait, GATE_TIMEOUT_S)   # the writer is inside its transaction
        late = writer.submit(post(grant(2)), inline=True)
        assert not late.done()
        gate.set()
        assert await held is True and await late == 2

    asyncio.run(main())
    assert writer.inlined == 0 and count(store) == 1


def test_an_inline_op_never_overtakes_one_queued_before_it(store: Store, writer: GroupWriter) -> None:
    """The writer thread has not even started: the first op sits in the queue with the
    connection free, and the second, asking for inline, must still commit after it."""
    async def main() -> list[int]:
        first = writer.submit(post(grant(1)))
        second = writer.submit(post(grant(2)), inline=True)
        assert not second.done()
        writer.start()
        return [await first, await second]

    assert asyncio.run(main()) == [1, 2]
    assert writer.inlined == 0
    refs = [r for (r,) in store.reader_conn.execute("SELECT reference FROM entries ORDER BY id")]
    assert refs == ["grant:1", "grant:2"]


def test_a_failing_inline_op_fails_its_future_and_leaves_nothing(store: Store, writer: GroupWriter) -> None:
    def python_error(conn: sqlite3.Connection) -> None:
        ops.post_entries(conn, [grant(100)])   # its own write must not survive
        raise ValueError("boom")

    async def main() -> None:
        writer.start()
        future = writer.submit(python_error, inline=True)
        assert future.done()
        with pytest.raises(ValueError, match="boom"):
            await future
        assert await writer.submit(post(grant(1)), inline=True) == 1   # the connection is usable

    asyncio.run(main())
    assert not store.writer_conn.in_transaction
    assert writer.inlined == 2 and count(store) == 1


def test_on_error_hears_of_a_failure_on_the_loop_even_when_nobody_awaits_any_more(
        store: Store, writer: GroupWriter) -> None:
    """The ledger reverts a charge's book in `on_error`, and awaits the future unshielded:
    a cancelled wait must not hide the failure, and a success must not call it."""
    gate = threading.Event()
    heard: list[tuple[str, str, int]] = []

    def python_error(conn: sqlite3.Connection) -> None:
        raise ValueError("boom")

    def on_error(name: str) -> Any:
        return lambda e: heard.append((name, str(e), threading.get_ident()))

    async def main() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        abandoned = writer.submit(python_error, on_error=on_error("abandoned"))
        awaited = writer.submit(python_error, on_error=on_error("awaited"))
        fine = writer.submit(post(grant(1)), on_error=on_error("fine"))
        abandoned.cancel()                       # its task was cancelled while queued
        gate.set()
        await first
        outcomes = await asyncio.gather(awaited, fine, return_exceptions=True)
        inline = writer.submit(python_error, inline=True, on_error=on_error("inline"))
        assert inline.done()                     # and on_error already called, before the await
        assert heard[-1][0] == "inline"
        outcomes.append(inline.exception())
        return outcomes

    loop_thread = threading.get_ident()
    awaited, fine, inline = asyncio.run(main())
    assert isinstance(awaited, ValueError) and fine == 1 and isinstance(inline, ValueError)
    assert sorted(name for name, _, _ in heard) == ["abandoned", "awaited", "inline"]
    assert all(message == "boom" and thread == loop_thread for _, message, thread in heard)
    assert count(store) == 1


def test_a_writer_made_without_inline_queues_everything(store: Store) -> None:
    writer = GroupWriter(store.writer_conn, inline=False)

    async def main() -> tuple[bool, int]:
        writer.start()
        future = writer.submit(lambda conn: threading.get_ident(), inline=True)
        return future.done(), await future

    try:
        done, thread = asyncio.run(main())
    finally:
        writer.stop()
    assert not done and thread != threading.get_ident()
    assert writer.inlined == 0 and writer.ops == 1


# -- posted operations (the settlement journal's path) ------------------------------
def test_a_posted_op_commits_in_order_with_submitted_ones_and_is_counted(store: Store, writer: GroupWriter) -> None:
    gate = threading.Event()

    async def main() -> list[Any]:
        writer.start()
        first = writer.submit(gate_op(gate))
        writer.post(post(grant(1)))
        second = writer.submit(post(grant(2)))
        writer.post(post(grant(3)))
        assert (writer.posts, writer.posts_done) == (2, 0)   # held behind the gate
        gate.set()
        return await asyncio.gather(first, second)

    assert asyncio.run(main()) == [True, 2]
    writer.stop()
    refs = [r for (r,) in store.reader_conn.execute("SELECT reference FROM entries ORDER BY id")]
    assert refs == ["grant:1", "grant:2", "grant:3"]
    assert (writer.posts, writer.posts_done, writer.posts_failed) == (2, 2, 0)


def test_a_failing_post_is_counted_and_fails_nothing_else(store: Store, writer: GroupWriter,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()

    def bad(conn: sqlite3.Connection) -> None:
        ops.post_entries(conn, [grant(9)])
        raise sqlite3.IntegrityError("no")

    async def main() -> Any:
        writer.start()
        first = writer.submit(gate_op(gate))
        writer.post(bad)
        after = writer.submit(post(grant(2)))
        gate.set()
        await first
        return await after

    assert asyncio.run(main()) == 2
    writer.stop()
    assert (writer.posts, writer.posts_done, writer.posts_failed) == (1, 1, 1)
    assert "a posted write failed" in caplog.text
    refs = [r for (r,) in store.reader_conn.execute("SELECT reference FROM entries ORDER BY id")]
    assert refs == ["grant:2"]   # the failed post rolled back alone


def test_caught_up_waits_for_every_earlier_post(store: Store, writer: GroupWriter) -> None:
    gate = threading.Event()

    async def main() -> None:
        writer.start()
        await writer.caught_up()                 # nothing posted: returns at once
        writer.post(gate_op(gate))
        writer.post(post(grant(1)))
        waiting = asyncio.ensure_future(writer.caught_up())
        await asyncio.sleep(0.05)
        assert not waiting.done()                # the gate holds the posts uncommitted
        gate.set()
        await waiting
        assert writer.posts_done == writer.posts == 2
        assert count(store) == 1

    asyncio.run(main())


def test_store_reads_wait_for_posted_ops(store: Store, writer: GroupWriter) -> None:
    gate = threading.Event()
    store.read_after(writer)

    async def main() -> int:
        writer.start()
        writer.post(gate_op(gate))
        writer.post(post(grant(1)))
        read = asyncio.ensure_future(store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]))
        await asyncio.sleep(0.05)
        assert not read.done()
        gate.set()
        return await read

    assert asyncio.run(main()) == 1              # the read saw the post committed before it


def test_post_after_stop_is_refused(writer: GroupWriter) -> None:
    writer.start()
    writer.stop()
    with pytest.raises(WriterStopped):
        writer.post(post(grant(1)))
