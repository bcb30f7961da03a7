"""Organizations, workspaces and keys as the process holds them in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from farebox.ledger.book import KeyCap


@dataclass(slots=True)
class Organization:
    id: int
    name: str
    created_at: int                       # unix ms
    workspaces: dict[int, str] = field(default_factory=dict)  # id -> name
    default_workspace_id: int = 0


@dataclass(slots=True)
class KeyRecord:
    hash: str
    kind: str                  # "api" | "management"
    org_id: int | None
    workspace_id: int | None
    name: str
    label: str
    disabled: bool
    expires_at: int | None     # unix seconds
    created_at: int            # unix ms
    updated_at: int | None
    creator_user_id: str | None
    include_byok_in_limit: bool
    cap: KeyCap = field(default_factory=KeyCap)
    deleted: bool = False

    @property
    def is_management(self) -> bool:
        return self.kind == "management"
