"""What the relay is asked and what an attempt produced: a request's parameters as the api
layer parsed them (ChatRequest) and an attempt's result, ready to be priced and recorded
(Outcome). Plain data, kept apart from the relay so that routing and the generation record
can name them without importing the relay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from farebox.catalog.model import Endpoint
from farebox.ledger.caps import Cap
from farebox.ledger.pricing import PromptSize, Usage
from farebox.tenancy.records import KeyRecord, Organization, Project, Workspace


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    key: KeyRecord
    org: Organization
    models: list[str]
    stream: bool
    max_tokens: int | None
    prompt: PromptSize
    gen_id: str
    created: int              # unix seconds
    created_ms: int
    started: float            # clock.monotonic()
    http_referer: str | None = None
    title: str | None = None
    user_agent: str | None = None
    api: str = "chat"         # providers.base.APIS: chat, completion (legacy) or embedding
    sticky_key: tuple[int, str, str] | None = None  # set by planning when stickiness applies
    workspace: Workspace | None = None   # the key's; None only in tests that build requests by hand
    project: Project | None = None       # named by the request (X-Farebox-Project or `project`)
    caps: tuple[Cap, ...] = ()           # key, project, workspace: every cap the hold must fit
    deny_training: bool = False          # the organization's or workspace's privacy settings
    zdr_only: bool = False
    logging: bool = False                # the organization opted in to prompt logging


@dataclass(slots=True)
class Outcome:
    """What an attempt produced, ready to be priced and recorded."""

    endpoint: Endpoint
    usage: Usage
    native_finish: str | None
    finish: str | None
    upstream_id: str | None
    first_token_at: float | None
    cancelled: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    attempt_started: float | None = None   # when the serving attempt began (monotonic)
    byok: bool = False                     # served on the workspace's own provider key
    completion_text: str | None = None     # what the client received, kept only with prompt logging
