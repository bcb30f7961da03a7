"""Workspaces and projects: creating, changing and deleting them, their budgets and their
privacy settings. Like the directory whose index they share, every change is committed
through the writer before the in-memory records (which requests read) change."""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any

import orjson

from farebox.clock import Clock
from farebox.errors import BadRequest, Conflict, NotFound
from farebox.ledger.book import Book
from farebox.ledger.caps import BUDGET_PERIODS, Cap
from farebox.ledger.entries import workspace_wallet
from farebox.store.sqlite import ensure_account
from farebox.store.writer import GroupWriter
from farebox.tenancy.directory import DEFAULT_WORKSPACE, Directory
from farebox.tenancy.records import PRIVACY, Organization, Project, Workspace


def check_budgets(limits: dict[str, int]) -> None:
    """Budgets must grow with their period: a daily budget below the weekly one, and so on
    (OpenRouter's rule). A longer period's budget at or under a shorter one's would make the
    shorter one meaningless, which is almost always a mistake."""
    set_periods = [p for p in BUDGET_PERIODS if p in limits]
    for shorter, longer in itertools.pairwise(set_periods):
        if limits[shorter] >= limits[longer]:
            raise BadRequest(f"The {shorter} budget must be less than the {longer} budget", field=shorter)


def check_privacy(settings: dict[str, Any], allowed: tuple[str, ...] = PRIVACY) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise BadRequest(f"Unknown setting {unknown[0]!r} (expected {', '.join(allowed)})", field=unknown[0])
    for name, value in settings.items():
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false", field=name)
    return settings


class Workspaces:
    def __init__(self, writer: GroupWriter, book: Book, clock: Clock, directory: Directory) -> None:
        self.writer, self.book, self.clock, self.directory = writer, book, clock, directory

    # -- workspaces ----------------------------------------------------------------
    def get(self, org: Organization, workspace_id: int) -> Workspace:
        workspace = org.workspaces.get(workspace_id)
        if workspace is None:
            raise NotFound(f"No workspace {workspace_id} in this organization")
        return workspace

    async def create(self, org: Organization, name: str, *, pooled: bool = False,
                     include_byok_in_budgets: bool = False) -> Workspace:
        if any(w.name == name for w in org.workspaces.values()):
            raise Conflict(f"A workspace named {name!r} already exists")
        now = self.clock.now_ms()

        def op(conn: sqlite3.Connection) -> int:
            wid = conn.execute("INSERT INTO workspaces (org_id, name, created_at, pooled, include_byok_in_budgets)"
                               " VALUES (?, ?, ?, ?, ?)", (org.id, name, now, int(pooled),
                                                          int(include_byok_in_budgets))).lastrowid
            assert wid is not None
            if pooled:
                ensure_account(conn, workspace_wallet(org.id, wid), org.id, "wallet")
            return wid

        try:
            wid = await self.writer.submit(op)
        except sqlite3.IntegrityError:
            raise Conflict(f"A workspace named {name!r} already exists (or did)") from None
        workspace = Workspace(wid, org.id, name, now, pooled, Cap("workspace", name, {}, include_byok_in_budgets))
        if pooled:
            self.book.balances.setdefault(workspace.account, 0)
        org.workspaces[wid] = workspace
        return workspace

    async def update(self, org: Organization, workspace: Workspace, changes: dict[str, Any]) -> Workspace:
        """`changes`: name, pooled, include_byok_in_budgets, settings (privacy, replaced whole)."""
        if "name" in changes and changes["name"] != workspace.name:
            if workspace.id == org.default_workspace_id:
                raise Conflict("The default workspace cannot be renamed")
            if any(w.name == changes["name"] for w in org.workspaces.values()):
                raise Conflict(f"A workspace named {changes['name']!r} already exists")
        if changes.get("pooled") is False and workspace.pooled:
            self._require_empty(workspace, "stop pooling")
        now = self.clock.now_ms()
        columns = {"name": "name", "pooled": "pooled", "include_byok_in_budgets": "include_byok_in_budgets",
                   "settings": "settings"}
        values = [orjson.dumps(v).decode() if k == "settings" else (int(v) if isinstance(v, bool) else v)
                  for k, v in changes.items()]
        sets = ", ".join(f"{columns[k]} = ?" for k in changes)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(f"UPDATE workspaces SET {sets}, updated_at = ? WHERE id = ?", [*values, now, workspace.id])
            if changes.get("pooled"):
                ensure_account(conn, workspace_wallet(org.id, workspace.id), org.id, "wallet")

        try:
            await self.writer.submit(op)
        except sqlite3.IntegrityError:
            raise Conflict(f"A workspace named {changes.get('name')!r} already exists (or did)") from None
        if "name" in changes:
            workspace.name = workspace.cap.name = changes["name"]
        if "pooled" in changes:
            workspace.pooled = changes["pooled"]
            if workspace.pooled:
                self.book.balances.setdefault(workspace.account, 0)
        if "include_byok_in_budgets" in changes:
            workspace.cap.include_byok = changes["include_byok_in_budgets"]
        if "settings" in changes:
            workspace.settings = changes["settings"]
        workspace.updated_at = now
        return workspace

    def _require_empty(self, workspace: Workspace, action: str) -> None:
        account = workspace_wallet(workspace.org_id, workspace.id)
        if self.book.balance(account) or self.book.held.get(account, 0):
            raise Conflict(f"Transfer the workspace's pool back to the organization before you {action}: "
                           f"it still holds credit")

    async def delete(self, org: Organization, workspace: Workspace) -> None:
        """Soft delete: its keys must be deleted first and its pool emptied. Its name is freed."""
        if workspace.id == org.default_workspace_id:
            raise Conflict("The default workspace cannot be deleted")
        if any(k.workspace_id == workspace.id for k in self.directory.org_keys(org.id)):
            raise Conflict("Delete or move the workspace's keys first")
        if workspace.pooled:
            self._require_empty(workspace, "delete it")
        now = self.clock.now_ms()
        tomb = f"{workspace.name} (deleted {workspace.id})"
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE workspaces SET deleted = 1, name = ?, updated_at = ? WHERE id = ?", (tomb, now, workspace.id)))
        del org.workspaces[workspace.id]
        for project in [p for p in self.directory.projects.values() if p.workspace_id == workspace.id]:
            project.deleted = True
            self.directory._index_project(project)

    async def set_budget(self, workspace: Workspace | Project, period: str, amount: int | None) -> None:
        """Set (or, with None, remove) one period's budget of a workspace or a project."""
        assert period in BUDGET_PERIODS
        limits = dict(workspace.cap.limits)
        if amount is None:
            limits.pop(period, None)
        else:
            limits[period] = amount
        check_budgets(limits)
        table = "workspaces" if isinstance(workspace, Workspace) else "projects"
        now = self.clock.now_ms()
        await self.writer.submit(lambda conn: conn.execute(
            f"UPDATE {table} SET budgets = ?, updated_at = ? WHERE id = ?",
            (orjson.dumps(limits).decode(), now, workspace.id)))
        workspace.cap.limits = limits
        workspace.updated_at = now

    # -- projects --------------------------------------------------------------------
    def project(self, org: Organization, project_id: int) -> Project:
        project = self.directory.projects.get(project_id)
        if project is None or project.org_id != org.id:
            raise NotFound(f"No project {project_id} in this organization")
        return project

    async def create_project(self, org: Organization, workspace: Workspace, name: str) -> Project:
        if (workspace.id, name) in self.directory.projects_by_name:
            raise Conflict(f"Workspace {workspace.name!r} already has a project named {name!r}")
        now = self.clock.now_ms()

        def op(conn: sqlite3.Connection) -> int:
            pid = conn.execute("INSERT INTO projects (org_id, workspace_id, name, created_at) VALUES (?, ?, ?, ?)",
                               (org.id, workspace.id, name, now)).lastrowid
            assert pid is not None
            return pid

        try:
            pid = await self.writer.submit(op)
        except sqlite3.IntegrityError:
            raise Conflict(f"Workspace {workspace.name!r} already has a project named {name!r}") from None
        project = Project(pid, org.id, workspace.id, name, now, Cap("project", name))
        self.directory._index_project(project)
        return project

    async def rename_project(self, project: Project, name: str) -> None:
        if (project.workspace_id, name) in self.directory.projects_by_name:
            raise Conflict(f"The workspace already has a project named {name!r}")
        now = self.clock.now_ms()
        try:
            await self.writer.submit(lambda conn: conn.execute(
                "UPDATE projects SET name = ?, updated_at = ? WHERE id = ?", (name, now, project.id)))
        except sqlite3.IntegrityError:
            raise Conflict(f"The workspace already has a project named {name!r}") from None
        del self.directory.projects_by_name[(project.workspace_id, project.name)]
        project.name = project.cap.name = name
        project.updated_at = now
        self.directory._index_project(project)

    async def delete_project(self, project: Project) -> None:
        now = self.clock.now_ms()
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE projects SET deleted = 1, updated_at = ? WHERE id = ?", (now, project.id)))
        project.deleted = True
        self.directory._index_project(project)


__all__ = ["DEFAULT_WORKSPACE", "Workspaces", "check_budgets", "check_privacy"]
