"""Members and sessions against a real SQLite store and writer thread, with a fake clock
for session expiry."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
from pathlib import Path

import pytest

from farebox.clock import FakeClock
from farebox.errors import Conflict, NotFound, Unauthorized
from farebox.ids import Ids, key_hash
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from farebox.tenancy.members import LOGIN_FAILED, Member, Members

N = 1024            # smallest scrypt cost: fast tests
TTL_S = 3600.0
PASSWORD = "correct horse battery"


class World:
    """A store, its writer and Members, as a restart would build them."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.store = Store(path)
        self.writer = GroupWriter(self.store.writer_conn)
        self.members = Members(self.writer, clock, Ids(), N, session_ttl_s=TTL_S)
        self.members.load(self.store.writer_conn)

    def org(self, name: str) -> int:
        return self.writer.run_sync(lambda conn: conn.execute(
            "INSERT INTO organizations (name, created_at) VALUES (?, 0)", (name,)).lastrowid)

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        return self.store.read_sync(lambda conn: conn.execute(sql, args).fetchall())

    def close(self) -> None:
        self.writer.stop()
        self.store.close()


def run(world: World, scenario):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        return await scenario(world.members)

    world.writer.start()
    try:
        return asyncio.run(main())
    finally:
        world.writer.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_create_find_and_the_email_is_unique_per_organization(tmp_path, clock):
    w = World(tmp_path / "db", clock)
    acme, other = w.org("acme"), w.org("other")

    async def scenario(m: Members):
        ada = await m.create(acme, "  Ada@Example.COM ", PASSWORD, "owner", name="Ada")
        assert re.fullmatch(r"user_[0-9a-f]{24}", ada.id)
        assert (ada.email, ada.name, ada.role, ada.workspaces, ada.disabled) == (
            "ada@example.com", "Ada", "owner", None, False)
        assert ada.created_at == clock.now_ms() and ada.updated_at is None
        assert m.get(acme, ada.id) == ada and m.by_email(acme, "ADA@example.com") == ada
        with pytest.raises(NotFound):
            m.get(other, ada.id)                       # not visible from another organization
        assert m.by_email(other, "ada@example.com") is None
        with pytest.raises(Conflict):
            await m.create(acme, "ada@EXAMPLE.com", PASSWORD, "viewer")
        # The same email in another organization is another person.
        twin = await m.create(other, "ada@example.com", PASSWORD, "member", workspaces=[3, 1])
        assert twin.id != ada.id and twin.workspaces == frozenset({1, 3})
        assert [x.id for x in m.for_org(acme)] == [ada.id] and [x.id for x in m.for_org(other)] == [twin.id]
        return ada

    ada = run(w, scenario)
    # A Member never carries the password hash; the row does, as scrypt.
    assert not any("hash" in f.name or "password" in f.name for f in dataclasses.fields(Member))
    [(stored,)] = w.rows("SELECT password_hash FROM members WHERE id = ?", ada.id)
    assert str(stored).startswith("scrypt$1024$8$1$") and PASSWORD not in str(stored)
    w.close()


def test_login_logout_and_only_the_token_hash_is_stored(tmp_path, clock):
    w = World(tmp_path / "db", clock)
    acme = w.org("acme")

    async def scenario(m: Members):
        ada = await m.create(acme, "ada@example.com", PASSWORD, "admin")
        token, member, expires = await m.login(acme, "ADA@example.com", PASSWORD)
        assert re.fullmatch(r"fbs-[0-9a-f]{48}", token) and member == ada
        assert expires == clock.now_ms() + int(TTL_S * 1000)
        assert m.authenticate(token) == ada
        # Wrong password, unknown email, unknown organization: one message for all three.
        for org_id, email, password in ((acme, "ada@example.com", "wrong password"),
                                        (acme, "nobody@example.com", PASSWORD), (None, "ada@example.com", PASSWORD)):
            with pytest.raises(Unauthorized) as caught:
                await m.login(org_id, email, password)
            assert caught.value.message == LOGIN_FAILED
        second, _, _ = await m.login(acme, "ada@example.com", PASSWORD)
        assert second != token
        assert await m.logout(token) is True
        assert await m.logout(token) is False
        assert m.authenticate(token) is None and m.authenticate(second) == ada
        assert m.authenticate("fbs-" + "0" * 48) is None
        return token, second

    gone, live = run(w, scenario)
    stored = {row[0] for row in w.rows("SELECT token_hash FROM sessions")}
    assert stored == {key_hash(live)}           # the logged-out one is deleted; no plaintext anywhere
    assert not w.rows("SELECT 1 FROM sessions WHERE token_hash IN (?, ?)", gone, live)
    w.close()


def test_a_session_expires_after_its_ttl_and_is_swept(tmp_path, clock):
    w = World(tmp_path / "db", clock)
    acme = w.org("acme")

    async def scenario(m: Members):
        await m.create(acme, "ada@example.com", PASSWORD, "viewer")
        token, member, expires = await m.login(acme, "ada@example.com", PASSWORD)
        clock.advance(TTL_S - 1)
        assert m.authenticate(token) == member
        clock.advance(1)                            # expires_at is exclusive
        assert clock.now_ms() == expires and m.authenticate(token) is None
        # The next login removes expired rows.
        fresh, _, _ = await m.login(acme, "ada@example.com", PASSWORD)
        return token, fresh

    old, fresh = run(w, scenario)
    assert {r[0] for r in w.rows("SELECT token_hash FROM sessions")} == {key_hash(fresh)} != {key_hash(old)}
    w.close()


def test_an_organization_never_loses_its_last_active_owner(tmp_path, clock):
    w = World(tmp_path / "db", clock)
    acme = w.org("acme")

    async def scenario(m: Members):
        first = await m.create(acme, "first@example.com", PASSWORD, "owner")
        for action in (lambda: m.update(first, {"role": "admin"}), lambda: m.update(first, {"disabled": True}),
                       lambda: m.delete(first)):
            with pytest.raises(Conflict, match="last active owner"):
                await action()
        assert m.get(acme, first.id) == first        # nothing changed
        # A disabled owner does not count as one.
        second = await m.create(acme, "second@example.com", PASSWORD, "owner")
        second = await m.update(second, {"disabled": True})
        with pytest.raises(Conflict):
            await m.update(first, {"role": "member"})
        second = await m.update(second, {"disabled": False})
        first = await m.update(first, {"role": "member"})   # now there is another
        assert first.role == "member"
        with pytest.raises(Conflict):
            await m.delete(second)
        # Two owners demoted at once: one demotion must fail, whatever the interleaving.
        first = await m.update(first, {"role": "owner"})
        results = await asyncio.gather(m.update(first, {"role": "viewer"}), m.update(second, {"role": "viewer"}),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "Member"]
        owners = [x for x in m.for_org(acme) if x.role == "owner"]
        assert len(owners) == 1
        # Admins and members come and go freely.
        admin = await m.create(acme, "admin@example.com", PASSWORD, "admin")
        await m.delete(admin)
        return owners[0].id

    owner_id = run(w, scenario)
    assert w.rows("SELECT id FROM members WHERE role = 'owner' AND deleted = 0 AND disabled = 0") == [(owner_id,)]
    w.close()


def test_disable_password_change_and_delete_end_sessions(tmp_path, clock):
    w = World(tmp_path / "db", clock)
    acme = w.org("acme")

    async def scenario(m: Members):
        await m.create(acme, "owner@example.com", PASSWORD, "owner")
        bob = await m.create(acme, "bob@example.com", PASSWORD, "member")
        token, _, _ = await m.login(acme, "bob@example.com", PASSWORD)
        bob = await m.update(bob, {"disabled": True})
        assert m.authenticate(token) is None
        with pytest.raises(Unauthorized, match="disabled"):
            await m.login(acme, "bob@example.com", PASSWORD)
        bob = await m.update(bob, {"disabled": False})
        assert m.authenticate(token) is None         # re-enabling does not revive old sessions

        token, _, _ = await m.login(acme, "bob@example.com", PASSWORD)
        bob = await m.update(bob, {"password": "a brand new secret", "name": "Bob"})
        assert bob.name == "Bob" and bob.updated_at == clock.now_ms()
        assert m.authenticate(token) is None
        with pytest.raises(Unauthorized):
            await m.login(acme, "bob@example.com", PASSWORD)
        token, _, _ = await m.login(acme, "bob@example.com", "a brand new secret")

        await m.delete(bob)
        assert m.authenticate(token) is None
        with pytest.raises(NotFound):
            m.get(acme, bob.id)
        with pytest.raises(NotFound):
            await m.update(bob, {"name": "ghost"})
        with pytest.raises(Unauthorized) as caught:
            await m.login(acme, "bob@example.com", "a brand new secret")
        assert caught.value.message == LOGIN_FAILED
        again = await m.create(acme, "bob@example.com", PASSWORD, "viewer")   # the email is free again
        assert again.id != bob.id
        return bob.id

    bob_id = run(w, scenario)
    assert w.rows("SELECT deleted FROM members WHERE id = ?", bob_id) == [(1,)]
    assert w.rows("SELECT COUNT(*) FROM sessions WHERE member_id = ?", bob_id) == [(0,)]
    w.close()


def test_a_restart_reloads_members_and_live_sessions(tmp_path, clock):
    w = World(tmp_path / "db", clock)
    acme = w.org("acme")

    async def scenario(m: Members):
        ada = await m.create(acme, "ada@example.com", PASSWORD, "owner", name="Ada", workspaces=[7])
        bob = await m.create(acme, "bob@example.com", PASSWORD, "viewer")
        short, _, _ = await m.login(acme, "bob@example.com", PASSWORD)
        clock.advance(TTL_S / 2)
        token, _, _ = await m.login(acme, "ada@example.com", PASSWORD)
        gone = await m.create(acme, "gone@example.com", PASSWORD, "admin")
        gone_token, _, _ = await m.login(acme, "gone@example.com", PASSWORD)
        await m.delete(gone)
        return ada, bob, short, token, gone_token

    ada, bob, short, token, gone_token = run(w, scenario)
    w.close()

    clock.advance(TTL_S / 2)          # bob's session has just expired; ada's has half its life left
    w = World(tmp_path / "db", clock)
    m = w.members
    assert m.get(acme, ada.id) == ada and m.by_email(acme, "ADA@example.com") == ada
    assert {x.id for x in m.for_org(acme)} == {ada.id, bob.id}
    assert m.authenticate(token) == ada
    assert m.authenticate(short) is None and m.authenticate(gone_token) is None

    async def login_again(m: Members):
        _, member, _ = await m.login(acme, "ada@example.com", PASSWORD)   # the hash came back too
        return member

    assert run(w, login_again) == ada
    w.close()


def test_writes_reach_memory_only_once_committed(tmp_path, clock):
    """A change the database refuses changes nothing in memory."""
    w = World(tmp_path / "db", clock)
    acme = w.org("acme")

    async def scenario(m: Members):
        with pytest.raises(sqlite3.IntegrityError):   # no organization 999: the foreign key refuses it
            await m.create(999, "ada@example.com", PASSWORD, "owner")
        assert m.by_email(999, "ada@example.com") is None and m.for_org(999) == []
        return await m.create(acme, "ada@example.com", PASSWORD, "owner")

    run(w, scenario)
    w.close()
