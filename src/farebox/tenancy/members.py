"""Members (people) of organizations and their login sessions, mirrored in memory like the
directory's keys: a session is authenticated with one dictionary lookup. Every change goes
through the writer first and reaches memory only once committed.

Password hashes stay in this module (a dictionary beside the records): a `Member` never
carries one, so no wire shape, log line or repr can leak it. Only a session token's
SHA-256 is stored; the token itself is shown once, at login.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from farebox.clock import Clock
from farebox.errors import Conflict, NotFound, Unauthorized
from farebox.ids import Ids, key_hash
from farebox.store.writer import GroupWriter
from farebox.tenancy.passwords import decoy_hash, hash_password, verify_password

ROLES = ("owner", "admin", "member", "viewer")
SESSION_PREFIX = "fbs-"
LOGIN_FAILED = "Invalid organization, email or password."
_COLUMNS = "id, org_id, email, name, role, password_hash, workspaces, disabled, created_at, updated_at"
# What update() may change, and each change's column.
CHANGEABLE = ("role", "name", "workspaces", "disabled", "password")


@dataclass(frozen=True, slots=True)
class Member:
    id: str                               # user_<24 hex>
    org_id: int
    email: str                            # lower-cased, stripped
    name: str | None
    role: str                             # one of ROLES
    workspaces: frozenset[int] | None     # None: every workspace of the organization
    disabled: bool
    created_at: int                       # unix ms
    updated_at: int | None

    @property
    def active(self) -> bool:
        return not self.disabled


@dataclass(slots=True)
class _Session:
    member_id: str
    expires_at: int                       # unix ms


def normalize_email(email: str) -> str:
    return email.strip().lower()


class Members:
    def __init__(self, writer: GroupWriter, clock: Clock, ids: Ids, password_n: int = 2**15, *,
                 session_ttl_s: float = 168 * 3600) -> None:
        self.writer, self.clock, self.ids = writer, clock, ids
        self.password_n = password_n
        self.session_ttl_ms = int(session_ttl_s * 1000)
        self._members: dict[str, Member] = {}                 # live (not deleted) members by id
        self._by_email: dict[tuple[int, str], str] = {}       # (org id, email) -> member id
        self._hashes: dict[str, str] = {}                     # member id -> password hash
        self._sessions: dict[str, _Session] = {}              # token hash -> session
        self._member_sessions: dict[str, set[str]] = {}       # member id -> its token hashes
        # Checks such as "the last owner stays" read memory and then write: one change at
        # a time keeps two concurrent demotions from both passing the check.
        self._lock = asyncio.Lock()
        # A failed login for an unknown email still verifies against this, so the time a
        # login takes does not tell whether the email exists.
        self._decoy = decoy_hash(n=password_n)

    # -- start-up ----------------------------------------------------------------
    def load(self, conn: sqlite3.Connection) -> None:
        for row in conn.execute(f"SELECT {_COLUMNS} FROM members WHERE deleted = 0"):
            member, password_hash = _from_row(row)
            self._index(member)
            self._hashes[member.id] = password_hash
        now = self.clock.now_ms()
        for token_hash, member_id, expires_at in conn.execute(
                "SELECT token_hash, member_id, expires_at FROM sessions WHERE expires_at > ?", (now,)):
            if member_id in self._members:
                self._add_session(token_hash, _Session(member_id, expires_at))

    def _index(self, member: Member) -> None:
        old = self._members.get(member.id)
        if old is not None:
            self._by_email.pop((old.org_id, old.email), None)
        self._members[member.id] = member
        self._by_email[(member.org_id, member.email)] = member.id

    def _add_session(self, token_hash: str, session: _Session) -> None:
        self._sessions[token_hash] = session
        self._member_sessions.setdefault(session.member_id, set()).add(token_hash)

    def _drop_sessions(self, member_id: str) -> None:
        for token_hash in self._member_sessions.pop(member_id, set()):
            self._sessions.pop(token_hash, None)

    # -- reading -----------------------------------------------------------------
    def get(self, org_id: int, member_id: str) -> Member:
        """The live member `member_id` of organization `org_id`; NotFound otherwise (a
        member of another organization is not found either)."""
        member = self._members.get(member_id)
        if member is None or member.org_id != org_id:
            raise NotFound(f"No member {member_id!r}")
        return member

    def by_email(self, org_id: int, email: str) -> Member | None:
        member_id = self._by_email.get((org_id, normalize_email(email)))
        return None if member_id is None else self._members[member_id]

    def for_org(self, org_id: int) -> list[Member]:
        return sorted((m for m in self._members.values() if m.org_id == org_id), key=lambda m: (m.created_at, m.id))

    def _active_owners(self, org_id: int) -> list[Member]:
        return [m for m in self._members.values() if m.org_id == org_id and m.role == "owner" and m.active]

    # -- changes -----------------------------------------------------------------
    async def create(self, org_id: int, email: str, password: str, role: str, name: str | None = None,
                     workspaces: Iterable[int] | None = None) -> Member:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        email = normalize_email(email)
        password_hash = await asyncio.to_thread(hash_password, password, n=self.password_n)
        async with self._lock:
            if self.by_email(org_id, email) is not None:
                raise Conflict(f"A member with email {email!r} already exists in this organization")
            now = self.clock.now_ms()
            member = Member(f"user_{self.ids.hex(12)}", org_id, email, name, role,
                            None if workspaces is None else frozenset(workspaces), False, now, None)

            def op(conn: sqlite3.Connection) -> None:
                conn.execute(f"INSERT INTO members ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             _to_row(member, password_hash))

            try:
                await self.writer.submit(op)
            except sqlite3.IntegrityError as e:
                if "UNIQUE" not in str(e):
                    raise
                raise Conflict(f"A member with email {email!r} already exists in this organization") from None
            self._index(member)
            self._hashes[member.id] = password_hash
            return member

    async def update(self, member: Member, changes: dict[str, Any]) -> Member:
        """Apply `changes` (role, name, workspaces, disabled, password) durably, then in
        memory. Disabling a member or changing their password ends all their sessions."""
        unknown = set(changes) - set(CHANGEABLE)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        if "role" in changes and changes["role"] not in ROLES:
            raise ValueError(f"unknown role {changes['role']!r}")
        password_hash = None
        if "password" in changes:
            password_hash = await asyncio.to_thread(hash_password, changes["password"], n=self.password_n)
        async with self._lock:
            current = self.get(member.org_id, member.id)   # NotFound if deleted meanwhile
            fields = {k: v for k, v in changes.items() if k != "password"}
            if "workspaces" in fields and fields["workspaces"] is not None:
                fields["workspaces"] = frozenset(fields["workspaces"])
            if "disabled" in fields:
                fields["disabled"] = bool(fields["disabled"])
            now = self.clock.now_ms()
            updated = dataclasses.replace(current, **fields, updated_at=now)
            if current.role == "owner" and current.active and not (updated.role == "owner" and updated.active):
                self._keep_an_owner(current, "demote" if updated.role != "owner" else "disable")
            revoke = password_hash is not None or (updated.disabled and not current.disabled)
            row = _to_row(updated, password_hash or self._hashes[current.id])

            def op(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE members SET name = ?, role = ?, password_hash = ?, workspaces = ?, disabled = ?,"
                             " updated_at = ? WHERE id = ?", (row[3], row[4], row[5], row[6], row[7], now, current.id))
                if revoke:
                    conn.execute("DELETE FROM sessions WHERE member_id = ?", (current.id,))

            await self.writer.submit(op)
            self._index(updated)
            if password_hash is not None:
                self._hashes[current.id] = password_hash
            if revoke:
                self._drop_sessions(current.id)
            return updated

    async def delete(self, member: Member) -> None:
        """Soft delete: the row stays (keys and records name it) but the member is gone
        from memory, their email is free again, and every session of theirs ends."""
        async with self._lock:
            current = self.get(member.org_id, member.id)
            if current.role == "owner" and current.active:
                self._keep_an_owner(current, "delete")
            now = self.clock.now_ms()

            def op(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE members SET deleted = 1, updated_at = ? WHERE id = ?", (now, current.id))
                conn.execute("DELETE FROM sessions WHERE member_id = ?", (current.id,))

            await self.writer.submit(op)
            self._members.pop(current.id, None)
            self._by_email.pop((current.org_id, current.email), None)
            self._hashes.pop(current.id, None)
            self._drop_sessions(current.id)

    def _keep_an_owner(self, owner: Member, action: str) -> None:
        if not any(m.id != owner.id for m in self._active_owners(owner.org_id)):
            raise Conflict(f"Cannot {action} the last active owner of the organization; make another member owner first",
                           metadata={"member_id": owner.id})

    # -- sessions ----------------------------------------------------------------
    async def login(self, org_id: int | None, email: str, password: str) -> tuple[str, Member, int]:
        """(token, member, expires_at ms). A wrong organization, email or password all give
        the same Unauthorized after the same work (one hash), so neither the message nor
        the time tells which was wrong. `org_id` None: an unknown organization."""
        member = None if org_id is None else self.by_email(org_id, email)
        stored = self._hashes.get(member.id) if member is not None else None
        ok = await asyncio.to_thread(verify_password, password, stored or self._decoy)
        if member is None or stored is None or not ok:
            raise Unauthorized(LOGIN_FAILED)
        if member.disabled:
            raise Unauthorized("This member is disabled.")
        token = SESSION_PREFIX + self.ids.hex(24)
        token_hash = key_hash(token)
        now = self.clock.now_ms()
        session = _Session(member.id, now + self.session_ttl_ms)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO sessions (token_hash, member_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                         (token_hash, member.id, now, session.expires_at))
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))   # keeps the table small

        async with self._lock:   # not across a deletion, a disable or a password change of this member
            current = self._members.get(member.id)
            if current is None or current.disabled or self._hashes.get(member.id) != stored:
                raise Unauthorized(LOGIN_FAILED)
            await self.writer.submit(op)
            self._add_session(token_hash, session)
        return token, current, session.expires_at

    async def logout(self, token: str) -> bool:
        """End the session of `token`; False when there was none."""
        token_hash = key_hash(token)
        session = self._sessions.get(token_hash)
        if session is None:
            return False
        await self.writer.submit(lambda conn: conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)))
        self._sessions.pop(token_hash, None)
        self._member_sessions.get(session.member_id, set()).discard(token_hash)
        return True

    def authenticate(self, token: str) -> Member | None:
        """The member behind a live session token, or None (unknown or expired token,
        disabled or deleted member)."""
        token_hash = key_hash(token)
        session = self._sessions.get(token_hash)
        if session is None:
            return None
        if session.expires_at <= self.clock.now_ms():
            # Forget it here; the row goes with the next login's sweep.
            self._sessions.pop(token_hash, None)
            self._member_sessions.get(session.member_id, set()).discard(token_hash)
            return None
        member = self._members.get(session.member_id)
        if member is None or member.disabled:
            return None
        return member


def _to_row(m: Member, password_hash: str) -> tuple[Any, ...]:
    workspaces = None if m.workspaces is None else json.dumps(sorted(m.workspaces))
    return (m.id, m.org_id, m.email, m.name, m.role, password_hash, workspaces, int(m.disabled), m.created_at,
            m.updated_at)


def _from_row(row: tuple[Any, ...]) -> tuple[Member, str]:
    member_id, org_id, email, name, role, password_hash, workspaces, disabled, created_at, updated_at = row
    limited = None if workspaces is None else frozenset(int(w) for w in json.loads(workspaces))
    return Member(member_id, org_id, email, name, role, limited, bool(disabled), created_at, updated_at), password_hash
