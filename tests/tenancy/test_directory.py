"""The directory against a real SQLite store and writer thread."""

from __future__ import annotations

import asyncio

import pytest

from farebox.clock import FakeClock
from farebox.errors import Conflict, Forbidden, NotFound, Unauthorized
from farebox.ids import Ids, key_hash
from farebox.ledger.book import Book
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from farebox.tenancy.directory import Directory


def build(path, clock):
    store = Store(path)
    writer = GroupWriter(store.writer_conn)
    directory = Directory(writer, Book(clock, 900), clock, Ids())
    directory.load(store.writer_conn)
    return store, writer, directory


def test_keys_authenticate_change_and_survive_a_restart(tmp_path):
    clock = FakeClock()
    store, writer, d = build(tmp_path / "db", clock)
    mgmt = d.ensure_management_key(Ids().management_key())

    async def scenario():
        writer.start()
        org = await d.create_org("acme")
        with pytest.raises(Conflict):
            await d.create_org("acme")
        record, secret = await d.create_key(org, "k", limit=5_000_000_000, limit_reset="daily",
                                            expires_at=int(clock.now()) + 60)
        assert record.hash == key_hash(secret) and record.label.startswith("sk-fb-v1-")
        assert d.authenticate(f"Bearer {secret}") is record
        with pytest.raises(Forbidden):
            d.authenticate(f"Bearer {secret}", allow="management")
        await d.update_key(record, {"name": "renamed", "limit": None})
        assert record.limit is None
        return org, secret, record.hash

    org, secret, khash = asyncio.run(scenario())
    writer.stop()
    store.close()

    clock.advance(30)
    store, writer, d = build(tmp_path / "db", clock)
    record = d.authenticate(f"Bearer {secret}")
    assert (record.name, record.limit, record.limit_reset, record.org_id) == ("renamed", None, "daily", org.id)
    assert d.org("acme").default_workspace_id in d.org("acme").workspaces
    assert d.keys[mgmt.hash].is_management
    clock.advance(31)
    with pytest.raises(Unauthorized, match="expired"):
        d.authenticate(f"Bearer {secret}")

    async def remove():
        writer.start()
        await d.delete_key(d.keys[khash])

    asyncio.run(remove())
    writer.stop()
    with pytest.raises(Unauthorized):
        d.authenticate(f"Bearer {secret}")
    with pytest.raises(NotFound):
        d.key(khash)
    store.close()


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer sk-fb-v1-nope"])
def test_bad_headers(tmp_path, header):
    _, _, d = build(tmp_path / "db", FakeClock())
    with pytest.raises(Unauthorized):
        d.authenticate(header)
