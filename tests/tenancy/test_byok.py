"""BYOK credentials against a real SQLite store and writer thread."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from farebox.clock import FakeClock
from farebox.errors import Conflict, NotFound
from farebox.ids import Ids
from farebox.ledger.book import Book
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from farebox.tenancy.byok import Credentials, mask
from farebox.tenancy.directory import Directory
from farebox.tenancy.vault import Vault, VaultError

MATERIAL = bytes(range(32))
OPENAI_KEY = "sk-proj-BYOKsecretAAAA1111bbbb2222cccc3333"
ROTATED_KEY = "sk-proj-BYOKrotatedZZZZ9999yyyy8888xxxx7777"
ANTHROPIC_KEY = "sk-ant-api03-BYOKanthropicQQQQ5555"


class Env:
    """A store, its writer, the directory (for real organizations and workspaces) and the credentials."""

    def __init__(self, path, clock: FakeClock, material: bytes = MATERIAL) -> None:
        self.store = Store(path)
        self.writer = GroupWriter(self.store.writer_conn)
        self.directory = Directory(self.writer, Book(clock, 900), clock, Ids())
        self.directory.load(self.store.writer_conn)
        self.creds = Credentials(self.writer, clock, Ids(), Vault(material))
        self.creds.load(self.store.writer_conn)
        self.writer.start()

    def close(self) -> None:
        self.writer.stop()
        self.store.close()

    def rows(self) -> list[tuple]:
        return self.store.read_sync(lambda c: c.execute(
            "SELECT id, name, label, always_use, disabled, deleted, length(secret) > 0 FROM byok_credentials"
            " ORDER BY created_at, id").fetchall())


def test_mask_never_shows_most_of_a_key():
    assert mask(OPENAI_KEY) == "sk-pro...3333"
    assert mask("abcdefghijklmnop") == "...mnop"      # short: only the last 4
    assert mask("abcdefgh") == "..."                   # too short to show anything
    for key in (OPENAI_KEY, "x" * 30, "0123456789abcdefghijklmn"):
        shown = mask(key).replace("...", "")
        assert len(shown) * 2 <= len(key)


def test_create_update_delete_and_reload(tmp_path):
    clock = FakeClock()
    env = Env(tmp_path / "db", clock)

    async def scenario():
        org = await env.directory.create_org("acme")
        cred = await env.creds.create(org.id, org.default_workspace_id, "openai", OPENAI_KEY, name="prod",
                                      created_by="member:1")
        assert cred.id.startswith("byok_") and len(cred.id) == len("byok_") + 24
        assert (cred.label, cred.always_use, cred.disabled, cred.created_by, cred.created_at, cred.updated_at) == (
            "sk-pro...3333", False, False, "member:1", clock.now_ms(), None)
        assert env.creds.for_workspace(org.default_workspace_id, "openai") is cred
        assert env.creds.for_workspace(org.default_workspace_id, "anthropic") is None
        assert env.creds.secret(cred) == OPENAI_KEY
        assert env.creds.get(org.id, cred.id) is cred and env.creds.for_org(org.id) == [cred]
        with pytest.raises(NotFound):
            env.creds.get(org.id + 1, cred.id)   # another organization never sees it
        with pytest.raises(NotFound):
            env.creds.get(org.id, "byok_" + "0" * 24)

        clock.advance(5)
        await env.creds.update(cred, {"name": "renamed", "always_use": True, "api_key": ROTATED_KEY})
        assert (cred.name, cred.always_use, cred.label, cred.updated_at) == (
            "renamed", True, "sk-pro...7777", clock.now_ms())
        assert env.creds.secret(cred) == ROTATED_KEY

        other = await env.creds.create(org.id, org.default_workspace_id, "anthropic", ANTHROPIC_KEY, name="ant")
        await env.creds.update(other, {"disabled": True})
        assert env.creds.for_workspace(org.default_workspace_id, "anthropic") is None
        return org, cred, other

    org, cred, other = asyncio.run(scenario())
    env.close()

    env = Env(tmp_path / "db", clock)
    loaded = env.creds.get(org.id, cred.id)
    assert loaded == cred and loaded is not cred           # every field survived
    assert env.creds.get(org.id, other.id) == other and env.creds.get(org.id, other.id).disabled
    assert env.creds.for_workspace(org.default_workspace_id, "openai") == cred
    assert env.creds.for_workspace(org.default_workspace_id, "anthropic") is None
    assert env.creds.secret(loaded) == ROTATED_KEY         # the new key, opened from its sealed blob

    async def delete():
        await env.creds.delete(loaded)
        assert env.creds.for_workspace(org.default_workspace_id, "openai") is None
        with pytest.raises(NotFound):
            env.creds.get(org.id, cred.id)

    asyncio.run(delete())
    # The row stays, deleted, with its sealed key wiped.
    assert env.rows() == [(cred.id, "renamed", "sk-pro...7777", 1, 1, 1, 0),
                          (other.id, "ant", other.label, 0, 1, 0, 1)]
    env.close()

    env = Env(tmp_path / "db", clock)
    assert [c.id for c in env.creds.for_org(org.id)] == [other.id]
    env.close()


def test_keys_open_lazily_and_a_changed_encryption_key_is_named(tmp_path):
    clock = FakeClock()
    env = Env(tmp_path / "db", clock)

    async def make():
        org = await env.directory.create_org("acme")
        return await env.creds.create(org.id, org.default_workspace_id, "openai", OPENAI_KEY, name="k")

    cred = asyncio.run(make())
    env.close()
    # Started with another encryption key: loading works (nothing is opened yet) and every
    # other use of the record too; only reading the key fails, naming both key ids.
    env = Env(tmp_path / "db", clock, material=bytes(32))
    loaded = env.creds.get(cred.org_id, cred.id)
    assert loaded.label == cred.label
    with pytest.raises(VaultError, match=f"sealed under encryption key {Vault(MATERIAL).key_id}.*"
                                         f"configured key is {Vault(bytes(32)).key_id}"):
        env.creds.secret(loaded)
    env.close()


def test_the_plaintext_key_never_reaches_the_database_files(tmp_path):
    clock = FakeClock()
    path = tmp_path / "db"
    env = Env(path, clock)

    async def scenario():
        org = await env.directory.create_org("acme")
        cred = await env.creds.create(org.id, org.default_workspace_id, "openai", OPENAI_KEY, name="k")
        await env.creds.update(cred, {"api_key": ROTATED_KEY})
        await env.creds.create(org.id, org.default_workspace_id, "anthropic", ANTHROPIC_KEY, name="a")
        return cred

    cred = asyncio.run(scenario())   # every write above has committed
    files = [path, path.with_name(path.name + "-wal")]
    data = b"".join(f.read_bytes() for f in files if f.exists())
    assert path.with_name(path.name + "-wal").stat().st_size > 0   # the commits are in the WAL, read too
    assert cred.label.encode() in data and cred.id.encode() in data   # what we search is what was written
    for key in (OPENAI_KEY, ROTATED_KEY, ANTHROPIC_KEY):
        for form in (key.encode(), key.encode("utf-16-le"), key[8:].encode()):
            assert form not in data, f"{key} found in the database files"
    env.close()
    data = b"".join(f.read_bytes() for f in files if f.exists())   # and after the checkpoint at close
    for key in (OPENAI_KEY, ROTATED_KEY, ANTHROPIC_KEY):
        assert key.encode() not in data and key[8:].encode() not in data


def test_one_enabled_credential_per_workspace_and_provider(tmp_path):
    clock = FakeClock()
    env = Env(tmp_path / "db", clock)

    async def scenario():
        acme = await env.directory.create_org("acme")
        beta = await env.directory.create_org("beta")
        ws, other_ws = acme.default_workspace_id, beta.default_workspace_id
        first = await env.creds.create(acme.id, ws, "openai", OPENAI_KEY, name="first")
        with pytest.raises(Conflict, match=f"already has an enabled BYOK credential for 'openai' \\({first.id}\\)"):
            await env.creds.create(acme.id, ws, "openai", ROTATED_KEY, name="second")
        # Another provider, or another workspace, is another slot.
        await env.creds.create(acme.id, ws, "anthropic", ANTHROPIC_KEY, name="a")
        await env.creds.create(beta.id, other_ws, "openai", ROTATED_KEY, name="b")
        # Disabled, the first frees its slot; it cannot be enabled again while another holds it.
        await env.creds.update(first, {"disabled": True})
        second = await env.creds.create(acme.id, ws, "openai", ROTATED_KEY, name="second")
        assert env.creds.for_workspace(ws, "openai") is second
        with pytest.raises(Conflict):
            await env.creds.update(first, {"disabled": False})
        assert first.disabled and env.creds.for_workspace(ws, "openai") is second
        await env.creds.update(first, {"name": "still disabled"})   # other changes are fine
        await env.creds.delete(second)
        await env.creds.update(first, {"disabled": False})
        assert env.creds.for_workspace(ws, "openai") is first

        # Concurrent creations for one free slot: exactly one wins.
        await env.creds.update(first, {"disabled": True})
        results = await asyncio.gather(
            *(env.creds.create(acme.id, ws, "openai", f"sk-race-{i:02d}-" + "r" * 20, name=f"race{i}")
              for i in range(20)), return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1 and all(isinstance(r, Conflict) for r in results if r not in winners)
        assert env.creds.for_workspace(ws, "openai") is winners[0]
        return acme

    acme = asyncio.run(scenario())
    enabled = env.store.read_sync(lambda c: c.execute(
        "SELECT COUNT(*) FROM byok_credentials WHERE workspace_id = ? AND provider = 'openai'"
        " AND disabled = 0 AND deleted = 0", (acme.default_workspace_id,)).fetchone()[0])
    assert enabled == 1
    env.close()


def test_a_failed_write_changes_nothing_in_memory(tmp_path):
    clock = FakeClock()
    env = Env(tmp_path / "db", clock)

    async def scenario():
        org = await env.directory.create_org("acme")
        with pytest.raises(sqlite3.IntegrityError):   # no such workspace: the foreign key refuses the row
            await env.creds.create(org.id, 999_999, "openai", OPENAI_KEY, name="k")
        assert env.creds.for_org(org.id) == [] and env.creds.for_workspace(999_999, "openai") is None
        # The failed write released its claim on the slot.
        with pytest.raises(sqlite3.IntegrityError):
            await env.creds.create(org.id, 999_999, "openai", OPENAI_KEY, name="k")

    asyncio.run(scenario())
    env.close()
