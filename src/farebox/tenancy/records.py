"""Organizations, workspaces, projects and keys as the process holds them in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from farebox.ledger.caps import Cap, key_cap, key_limit
from farebox.ledger.entries import wallet, workspace_wallet

# Privacy settings an organization or a workspace may set (both apply: the stricter wins).
PRIVACY = ("deny_training", "deny_retention", "zdr_only")


@dataclass(slots=True)
class Workspace:
    id: int
    org_id: int
    name: str
    created_at: int                  # unix ms
    pooled: bool = False             # spends from its own pool rather than the organization's wallet
    cap: Cap = field(default_factory=lambda: Cap("workspace", ""))
    settings: dict[str, Any] = field(default_factory=dict)   # privacy (PRIVACY keys)
    updated_at: int | None = None
    deleted: bool = False

    def __post_init__(self) -> None:
        self.cap.name = self.name

    @property
    def account(self) -> str:
        """The wallet its requests pay from."""
        return workspace_wallet(self.org_id, self.id) if self.pooled else wallet(self.org_id)


@dataclass(slots=True)
class Project:
    id: int
    org_id: int
    workspace_id: int
    name: str
    created_at: int
    cap: Cap = field(default_factory=lambda: Cap("project", ""))
    updated_at: int | None = None
    deleted: bool = False

    def __post_init__(self) -> None:
        self.cap.name = self.name


@dataclass(slots=True)
class Organization:
    id: int
    name: str
    created_at: int                       # unix ms
    workspaces: dict[int, Workspace] = field(default_factory=dict)
    default_workspace_id: int = 0
    settings: dict[str, Any] = field(default_factory=dict)   # privacy (PRIVACY keys) and `logging`

    @property
    def accounts(self) -> list[str]:
        """Its wallet and its workspaces' pools: where its credit is."""
        return [wallet(self.id)] + [w.account for w in self.workspaces.values() if w.pooled]


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
    cap: Cap = field(default_factory=key_cap)
    deleted: bool = False
    rate_limit_rpm: int | None = None   # requests per minute; None: no key rate limit
    rate_limit_tpm: int | None = None   # tokens per minute
    limit_reset: str | None = None      # daily | weekly | monthly | None (kept even while there is no limit)

    def __post_init__(self) -> None:
        self.cap.include_byok = self.include_byok_in_limit
        self.cap.name = self.name
        if self.cap.limits and self.limit_reset is None:
            self.limit_reset = key_limit(self.cap)[1]

    @property
    def is_management(self) -> bool:
        return self.kind == "management"

    @property
    def limit(self) -> int | None:
        return key_limit(self.cap)[0]

    def set_limit(self, limit: int | None, reset: str | None) -> None:
        self.limit_reset = reset
        self.cap.limits = {} if limit is None else {reset or "lifetime": limit}
