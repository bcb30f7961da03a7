"""The directory: organizations, workspaces and keys, mirrored in memory so a request is
authenticated with one dictionary lookup and no database round trip. Every change goes
through the writer first and reaches the in-memory index only once committed."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from farebox.clock import Clock
from farebox.errors import Conflict, Forbidden, NotFound, Unauthorized
from farebox.ids import Ids, key_hash, key_label
from farebox.ledger.book import Book
from farebox.ledger.caps import Cap, key_cap
from farebox.ledger.entries import wallet
from farebox.ledger.usage import PERIODS, period_start
from farebox.store.sqlite import ensure_account
from farebox.store.writer import GroupWriter
from farebox.tenancy.records import KeyRecord, Organization, Project, Workspace

DEFAULT_WORKSPACE = "default"
_KEY_COLUMNS = ("hash, kind, org_id, workspace_id, name, label, disabled, expires_at, created_at, updated_at,"
                " creator_user_id, include_byok_in_limit, limit_nanos, limit_reset, deleted, rate_limit_rpm,"
                " rate_limit_tpm")


class Directory:
    def __init__(self, writer: GroupWriter, book: Book, clock: Clock, ids: Ids) -> None:
        self.writer, self.book, self.clock, self.ids = writer, book, clock, ids
        self.orgs: dict[int, Organization] = {}
        self.orgs_by_name: dict[str, Organization] = {}
        self.keys: dict[str, KeyRecord] = {}

        self.projects: dict[int, Project] = {}
        self.projects_by_name: dict[tuple[int, str], Project] = {}   # (workspace id, name) -> live project

    # -- start-up ----------------------------------------------------------------
    def load(self, conn: sqlite3.Connection) -> None:
        for oid, name, created, settings in conn.execute(
                "SELECT id, name, created_at, settings FROM organizations"):
            self._index_org(Organization(oid, name, created, settings=orjson.loads(settings)))
        for row in conn.execute("SELECT id, org_id, name, created_at, pooled, budgets, include_byok_in_budgets,"
                                " settings, updated_at FROM workspaces WHERE deleted = 0 ORDER BY id"):
            wid, oid, name, created, pooled, budgets, byok, settings, updated = row
            workspace = Workspace(wid, oid, name, created, bool(pooled),
                                  Cap("workspace", name, orjson.loads(budgets), bool(byok)),
                                  orjson.loads(settings), updated)
            org = self.orgs[oid]
            org.workspaces[wid] = workspace
            if name == DEFAULT_WORKSPACE:
                org.default_workspace_id = wid
        for pid, oid, wid, name, created, budgets, updated in conn.execute(
                "SELECT id, org_id, workspace_id, name, created_at, budgets, updated_at FROM projects"
                " WHERE deleted = 0"):
            self._index_project(Project(pid, oid, wid, name, created, Cap("project", name, orjson.loads(budgets)),
                                        updated))
        for row in conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys"):
            self._index_key(_key_from_row(row))
        self._load_usage(conn)

    def _load_usage(self, conn: sqlite3.Connection) -> None:
        """What every cap's scope spent, per window, from the generation records (credit
        charged and BYOK list-price cost), by the time each was settled."""
        now = self.clock.now()
        starts = [period_start(now, p) * 1000 for p in PERIODS]
        scopes: list[tuple[str, dict[Any, Cap]]] = [
            ("key_hash", {k: r.cap for k, r in self.keys.items()}),
            ("workspace_id", {w.id: w.cap for o in self.orgs.values() for w in o.workspaces.values()}),
            ("project_id", {p.id: p.cap for p in self.projects.values()}),
        ]
        windows = ", ".join(f"SUM(CASE WHEN t >= {int(start)} THEN {column} ELSE 0 END)"
                            for column in ("charged", "byok_cost") for start in starts)
        for column, caps in scopes:
            rows = conn.execute(
                f"SELECT {column}, SUM(charged), SUM(byok_cost), {windows} FROM (SELECT {column}, charged, byok_cost,"
                f" COALESCE(settled_at, created_at) AS t FROM generations WHERE {column} IS NOT NULL) GROUP BY {column}")
            for scope, charged, byok, *per in rows:
                cap = caps.get(scope)
                if cap is not None:
                    cap.usage.seed(charged, dict(zip(PERIODS, per[:3], strict=True)), now)
                    cap.byok.seed(byok, dict(zip(PERIODS, per[3:], strict=True)), now)

    def _index_org(self, org: Organization) -> None:
        self.orgs[org.id] = org
        self.orgs_by_name[org.name] = org

    def _index_key(self, record: KeyRecord) -> None:
        if record.deleted:
            self.keys.pop(record.hash, None)
        else:
            self.keys[record.hash] = record

    def _index_project(self, project: Project) -> None:
        if project.deleted:
            self.projects.pop(project.id, None)
            self.projects_by_name.pop((project.workspace_id, project.name), None)
        else:
            self.projects[project.id] = project
            self.projects_by_name[(project.workspace_id, project.name)] = project

    # -- organizations -----------------------------------------------------------
    def org(self, name_or_id: str | int) -> Organization:
        org = (self.orgs.get(name_or_id) if isinstance(name_or_id, int)
               else self.orgs_by_name.get(name_or_id))
        if org is None and isinstance(name_or_id, str) and name_or_id.isdigit():
            org = self.orgs.get(int(name_or_id))
        if org is None:
            raise NotFound(f"No organization named {name_or_id!r}")
        return org

    async def create_org(self, name: str) -> Organization:
        if name in self.orgs_by_name:
            raise Conflict(f"An organization named {name!r} already exists")
        now = self.clock.now_ms()

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            oid = conn.execute("INSERT INTO organizations (name, created_at) VALUES (?, ?)", (name, now)).lastrowid
            wid = conn.execute("INSERT INTO workspaces (org_id, name, created_at) VALUES (?, ?, ?)",
                               (oid, DEFAULT_WORKSPACE, now)).lastrowid
            ensure_account(conn, wallet(oid), oid, "wallet")
            return oid, wid

        try:
            oid, wid = await self.writer.submit(op)
        except sqlite3.IntegrityError:
            raise Conflict(f"An organization named {name!r} already exists") from None
        org = Organization(oid, name, now, {wid: Workspace(wid, oid, DEFAULT_WORKSPACE, now)}, wid)
        self._index_org(org)
        self.book.balances.setdefault(wallet(oid), 0)
        return org

    # -- keys --------------------------------------------------------------------
    def authenticate(self, authorization: str | None, *, allow: str = "api") -> KeyRecord:
        """The live key behind an Authorization header. `allow` is "api", "management"
        or "any": which kind of key the endpoint accepts."""
        if not authorization:
            raise Unauthorized("Missing Authentication header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("No auth credentials found")
        record = self.keys.get(key_hash(token))
        if record is None:
            raise Unauthorized("User not found.")
        if record.disabled:
            raise Unauthorized("This API key is disabled.")
        if record.expires_at is not None and record.expires_at <= self.clock.now():
            raise Unauthorized("This API key has expired.")
        if allow == "management" and not record.is_management:
            raise Forbidden("Only management keys can perform this operation")
        if allow == "api" and record.is_management:
            raise Forbidden("Management keys cannot call inference or key endpoints; use an API key")
        return record

    def key(self, khash: str, org_id: int | None = None) -> KeyRecord:
        record = self.keys.get(khash)
        if record is None or record.is_management or (org_id is not None and record.org_id != org_id):
            raise NotFound(f"No key with hash {khash!r}")
        return record

    async def create_key(self, org: Organization, name: str, *, workspace_id: int | None = None,
                         limit: int | None = None, limit_reset: str | None = None,
                         include_byok_in_limit: bool = False, expires_at: int | None = None,
                         creator_user_id: str | None = None, kind: str = "api",
                         plaintext: str | None = None, rate_limit_rpm: int | None = None,
                         rate_limit_tpm: int | None = None) -> tuple[KeyRecord, str]:
        workspace_id = workspace_id or org.default_workspace_id
        if workspace_id not in org.workspaces:
            raise NotFound(f"No workspace {workspace_id} in organization {org.name!r}")
        secret = plaintext or self.ids.api_key()
        record = KeyRecord(
            hash=key_hash(secret), kind=kind, org_id=org.id, workspace_id=workspace_id, name=name,
            label=key_label(secret), disabled=False, expires_at=expires_at, created_at=self.clock.now_ms(),
            updated_at=None, creator_user_id=creator_user_id, include_byok_in_limit=include_byok_in_limit,
            cap=key_cap(limit, limit_reset), rate_limit_rpm=rate_limit_rpm, rate_limit_tpm=rate_limit_tpm,
            limit_reset=limit_reset,
        )
        await self.writer.submit(lambda conn: _insert_key(conn, record))
        self._index_key(record)
        return record, secret

    async def update_key(self, record: KeyRecord, changes: dict[str, Any]) -> KeyRecord:
        """Apply `changes` (name, disabled, limit, limit_reset, include_byok_in_limit,
        expires_at, rate_limit_rpm, rate_limit_tpm) durably, then to the live record used by
        authentication and by its cap."""
        now = self.clock.now_ms()
        columns = {"name": "name", "disabled": "disabled", "limit": "limit_nanos", "limit_reset": "limit_reset",
                   "include_byok_in_limit": "include_byok_in_limit", "expires_at": "expires_at",
                   "rate_limit_rpm": "rate_limit_rpm", "rate_limit_tpm": "rate_limit_tpm"}
        sets = [f"{columns[k]} = ?" for k in changes] + ["updated_at = ?"]
        values = [int(v) if isinstance(v, bool) else v for v in changes.values()] + [now, record.hash]
        await self.writer.submit(
            lambda conn: conn.execute(f"UPDATE keys SET {', '.join(sets)} WHERE hash = ?", values))
        limit = changes.get("limit", record.limit)
        reset = changes.get("limit_reset", record.limit_reset)
        record.set_limit(limit, reset)
        for k, v in changes.items():
            if k not in ("limit", "limit_reset"):
                setattr(record, k, v)
        record.cap.include_byok = record.include_byok_in_limit
        record.cap.name = record.name
        record.updated_at = now
        return record

    async def delete_key(self, record: KeyRecord) -> None:
        now = self.clock.now_ms()
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE keys SET deleted = 1, disabled = 1, updated_at = ? WHERE hash = ?", (now, record.hash)))
        record.deleted = True
        self._index_key(record)

    def ensure_management_key(self, secret: str) -> KeyRecord:
        """Register the management key at start-up (before the writer thread runs)."""
        khash = key_hash(secret)
        if khash in self.keys:
            return self.keys[khash]
        record = KeyRecord(khash, "management", None, None, "management", key_label(secret), False, None,
                           self.clock.now_ms(), None, None, False)
        self.writer.run_sync(lambda conn: _insert_key(conn, record))
        self._index_key(record)
        return record

    def org_keys(self, org_id: int) -> list[KeyRecord]:
        return [k for k in self.keys.values() if k.org_id == org_id and not k.is_management]


def _insert_key(conn: sqlite3.Connection, r: KeyRecord) -> None:
    conn.execute(
        f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (r.hash, r.kind, r.org_id, r.workspace_id, r.name, r.label, int(r.disabled), r.expires_at,
         r.created_at, r.updated_at, r.creator_user_id, int(r.include_byok_in_limit), r.limit,
         r.limit_reset, int(r.deleted), r.rate_limit_rpm, r.rate_limit_tpm))


def _key_from_row(row: tuple[Any, ...]) -> KeyRecord:
    (khash, kind, org_id, workspace_id, name, label, disabled, expires_at, created_at, updated_at,
     creator, byok, limit, reset, deleted, rpm, tpm) = row
    return KeyRecord(khash, kind, org_id, workspace_id, name, label, bool(disabled), expires_at, created_at,
                     updated_at, creator, bool(byok), key_cap(limit, reset), bool(deleted), rpm, tpm, reset)
