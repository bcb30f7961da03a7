"""The writer's inline path: with nothing queued, an operation asked to run inline commits
at once on the caller's thread; with anything queued it waits its turn, so the order of
submission still holds."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter


def recorder(seen: list[str], name: str):  # type: ignore[no-untyped-def]
    def op(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, 0)", (len(seen) + 100, name))
        seen.append(name)
        return name
    return op


def test_an_idle_writer_runs_an_inline_operation_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    writer = GroupWriter(store.writer_conn, inline=True)
    writer.start()
    seen: list[str] = []

    async def main() -> None:
        future = writer.submit(recorder(seen, "a"), inline=True)
        assert future.done() and future.result() == "a"  # committed before submit returned
        queued = writer.submit(recorder(seen, "b"))        # not asked to: goes to the thread
        assert await queued == "b"

    asyncio.run(main())
    writer.stop()
    assert writer.inline_ops == 1 and seen == ["a", "b"]
    rows = store.reader_conn.execute("SELECT name FROM organizations WHERE id >= 100 ORDER BY id").fetchall()
    assert rows == [("a",), ("b",)]
    store.close()


def test_an_inline_operation_waits_behind_what_is_queued(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    writer = GroupWriter(store.writer_conn, inline=True)  # thread not started yet: "a" stays queued
    seen: list[str] = []

    async def main() -> None:
        first = writer.submit(recorder(seen, "a"))
        second = writer.submit(recorder(seen, "b"), inline=True)
        assert not second.done(), "ran inline ahead of an operation submitted before it"
        writer.start()
        assert await asyncio.gather(first, second) == ["a", "b"]

    asyncio.run(main())
    writer.stop()
    assert writer.inline_ops == 0 and seen == ["a", "b"]
    store.close()


def test_inline_is_off_unless_the_writer_allows_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    writer = GroupWriter(store.writer_conn)
    writer.start()
    seen: list[str] = []

    async def main() -> None:
        future = writer.submit(recorder(seen, "a"), inline=True)
        assert not future.done()
        assert await future == "a"

    asyncio.run(main())
    writer.stop()
    assert writer.inline_ops == 0
    store.close()
