"""BYOK credentials: provider keys a workspace brings, stored sealed by the vault.

Records live in memory, like the directory's: every change goes through the writer
first and reaches memory only once committed. The sealed blobs are kept apart from the
records and opened only when a request needs the key (then cached), so a record can be
listed, logged or serialised without any risk of carrying the secret.

A workspace has at most one enabled credential per provider; that is what routing looks
up (`for_workspace`). The rule is checked in memory, with a claim taken before the write
is awaited so two concurrent creations cannot both pass the check.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from farebox.clock import Clock
from farebox.errors import Conflict, NotFound
from farebox.ids import Ids
from farebox.store.writer import GroupWriter
from farebox.tenancy.vault import Vault, credential_aad

ID_PREFIX = "byok_"
_COLUMNS = ("id, org_id, workspace_id, provider, name, label, secret, key_id, always_use, disabled, deleted,"
            " created_by, created_at, updated_at")
CHANGEABLE = ("name", "always_use", "disabled", "api_key")


@dataclass(slots=True)
class Credential:
    """A stored provider key as listings show it: never the key itself."""

    id: str
    org_id: int
    workspace_id: int
    provider: str              # a catalog provider slug
    name: str
    label: str                 # masked: "sk-pro...3f9a"
    always_use: bool           # never fall back to shared capacity when this key fails
    disabled: bool
    created_by: str | None
    created_at: int            # unix ms
    updated_at: int | None


@dataclass(slots=True)
class _Sealed:
    blob: bytes
    key_id: str


def mask(api_key: str) -> str:
    """A label that identifies a key without revealing it: its first 6 and last 4
    characters, only the last 4 when the key is too short for that to hide most of it,
    nothing of a key too short to show even that."""
    if len(api_key) >= 24:
        return f"{api_key[:6]}...{api_key[-4:]}"
    if len(api_key) > 8:
        return f"...{api_key[-4:]}"
    return "..."


class Credentials:
    def __init__(self, writer: GroupWriter, clock: Clock, ids: Ids, vault: Vault) -> None:
        self.writer, self.clock, self.ids, self.vault = writer, clock, ids, vault
        self.by_id: dict[str, Credential] = {}
        self._sealed: dict[str, _Sealed] = {}
        self._plain: dict[str, str] = {}
        self._enabled: dict[tuple[int, str], Credential] = {}   # (workspace id, provider) -> credential
        self._claims: set[tuple[int, str]] = set()              # enabled slots being written

    # -- start-up ----------------------------------------------------------------
    def load(self, conn: sqlite3.Connection) -> None:
        for row in conn.execute(f"SELECT {_COLUMNS} FROM byok_credentials WHERE deleted = 0 ORDER BY created_at"):
            (cid, org_id, workspace_id, provider, name, label, secret, key_id, always_use, disabled, _deleted,
             created_by, created_at, updated_at) = row
            cred = Credential(cid, org_id, workspace_id, provider, name, label, bool(always_use), bool(disabled),
                              created_by, created_at, updated_at)
            self._index(cred, _Sealed(bytes(secret), key_id))

    def _index(self, cred: Credential, sealed: _Sealed | None = None) -> None:
        self.by_id[cred.id] = cred
        if sealed is not None:
            self._sealed[cred.id] = sealed
            self._plain.pop(cred.id, None)
        slot = (cred.workspace_id, cred.provider)
        if not cred.disabled:
            self._enabled[slot] = cred
        elif self._enabled.get(slot) is cred:
            del self._enabled[slot]

    def _forget(self, cred: Credential) -> None:
        self.by_id.pop(cred.id, None)
        self._sealed.pop(cred.id, None)
        self._plain.pop(cred.id, None)
        slot = (cred.workspace_id, cred.provider)
        if self._enabled.get(slot) is cred:
            del self._enabled[slot]

    # -- reading -----------------------------------------------------------------
    def get(self, org_id: int, cred_id: str) -> Credential:
        cred = self.by_id.get(cred_id)
        if cred is None or cred.org_id != org_id:
            raise NotFound(f"No BYOK credential {cred_id!r}")
        return cred

    def for_org(self, org_id: int) -> list[Credential]:
        return sorted((c for c in self.by_id.values() if c.org_id == org_id), key=lambda c: (c.created_at, c.id))

    def for_workspace(self, workspace_id: int, provider: str) -> Credential | None:
        """The workspace's enabled credential for `provider`, if any."""
        return self._enabled.get((workspace_id, provider))

    def secret(self, cred: Credential) -> str:
        """The provider key in clear, opened on first use and then kept in memory. Raises
        VaultError when the configured encryption key cannot open it."""
        plain = self._plain.get(cred.id)
        if plain is None:
            sealed = self._sealed[cred.id]
            plain = self.vault.open(sealed.blob, credential_aad(cred.id, cred.org_id), key_id=sealed.key_id)
            self._plain[cred.id] = plain
        return plain

    # -- changes -----------------------------------------------------------------
    def _claim(self, workspace_id: int, provider: str, current: Credential | None = None) -> tuple[int, str]:
        """Reserve the enabled slot of (workspace, provider) until the write that fills it
        committed; Conflict when another credential holds it or is being written to it."""
        slot = (workspace_id, provider)
        holder = self._enabled.get(slot)
        if (holder is not None and holder is not current) or slot in self._claims:
            raise Conflict(f"Workspace {workspace_id} already has an enabled BYOK credential for {provider!r}"
                           + (f" ({holder.id}); disable or delete it first" if holder is not None else ""))
        self._claims.add(slot)
        return slot

    async def create(self, org_id: int, workspace_id: int, provider: str, api_key: str, *, name: str,
                     always_use: bool = False, created_by: str | None = None) -> Credential:
        cred = Credential(ID_PREFIX + self.ids.hex(12), org_id, workspace_id, provider, name, mask(api_key),
                          always_use, False, created_by, self.clock.now_ms(), None)
        sealed = _Sealed(self.vault.seal(api_key, credential_aad(cred.id, org_id)), self.vault.key_id)
        slot = self._claim(workspace_id, provider)
        try:
            await self.writer.submit(lambda conn: conn.execute(
                f"INSERT INTO byok_credentials ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,0,?,?,?)",
                (cred.id, org_id, workspace_id, provider, name, cred.label, sealed.blob, sealed.key_id,
                 int(always_use), 0, created_by, cred.created_at, None)))
            self._index(cred, sealed)
            self._plain[cred.id] = api_key
        finally:
            self._claims.discard(slot)
        return cred

    async def update(self, cred: Credential, changes: dict[str, Any]) -> Credential:
        """Apply `changes` (name, always_use, disabled, api_key) durably, then in memory. A
        new api_key is sealed afresh and relabelled."""
        unknown = set(changes) - set(CHANGEABLE)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        now = self.clock.now_ms()
        columns: dict[str, Any] = {k: changes[k] for k in ("name", "always_use", "disabled") if k in changes}
        sealed = None
        api_key = changes.get("api_key")
        if api_key is not None:
            sealed = _Sealed(self.vault.seal(api_key, credential_aad(cred.id, cred.org_id)), self.vault.key_id)
            columns.update(label=mask(api_key), secret=sealed.blob, key_id=sealed.key_id)
        columns["updated_at"] = now
        enabling = cred.disabled and changes.get("disabled") is False
        slot = self._claim(cred.workspace_id, cred.provider, cred) if enabling else None
        try:
            sets = ", ".join(f"{c} = ?" for c in columns)
            values = [int(v) if isinstance(v, bool) else v for v in columns.values()] + [cred.id]
            await self.writer.submit(
                lambda conn: conn.execute(f"UPDATE byok_credentials SET {sets} WHERE id = ?", values))
            for k in ("name", "always_use", "disabled", "label", "updated_at"):
                if k in columns:
                    setattr(cred, k, columns[k])
            self._index(cred, sealed)
            if api_key is not None:
                self._plain[cred.id] = api_key
        finally:
            if slot is not None:
                self._claims.discard(slot)
        return cred

    async def delete(self, cred: Credential) -> None:
        """Soft delete: the row stays for the record (generations name it), but the sealed
        key is wiped, since nothing may use it again."""
        now = self.clock.now_ms()
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE byok_credentials SET deleted = 1, disabled = 1, secret = x'', updated_at = ? WHERE id = ?",
            (now, cred.id)))
        cred.disabled, cred.updated_at = True, now
        self._forget(cred)
