"""What every inference endpoint does before the relay takes over: read the body as a
JSON object, resolve the caller's key, and stamp a new request with its generation id
and clocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.http import Request
from farebox.errors import BadRequest
from farebox.ledger.pricing import PromptSize
from farebox.request import ChatRequest
from farebox.tenancy.records import KeyRecord, Project

if TYPE_CHECKING:
    from farebox.app import Gateway


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"Request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    return body


def requested_models(body: dict[str, Any]) -> list[str]:
    """The model, then its `models[]` fallbacks, without repeats."""
    model = body.get("model")
    models = [model] if model else []
    for fallback in body.get("models") or ():
        if fallback not in models:
            models.append(fallback)
    return models


PROJECT_HEADER = b"x-farebox-project"


def project_of(gw: Gateway, req: Request, key: KeyRecord, body: dict[str, Any]) -> Project | None:
    """The project a request names, in its workspace: the `project` body field (taken out:
    it is ours, not the provider's) or the X-Farebox-Project header."""
    name = body.pop("project", None)
    if name is None:
        name = req.header(PROJECT_HEADER)
        if name is None:
            return None
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("project must be a project's name", field="project")
    assert key.workspace_id is not None
    project = gw.directory.projects_by_name.get((key.workspace_id, name.strip()))
    if project is None:
        raise BadRequest(f"No project named {name.strip()!r} in this key's workspace: create it with "
                         "POST /api/v1/projects or `farebox projects create`", field="project")
    return project


def new_request(gw: Gateway, req: Request, key: KeyRecord, body: dict[str, Any], *, api: str, stream: bool,
                max_tokens: int | None, prompt: PromptSize) -> ChatRequest:
    now = gw.clock.now()
    org = gw.directory.orgs[key.org_id]  # type: ignore[index]
    workspace = org.workspaces[key.workspace_id]  # type: ignore[index]
    project = project_of(gw, req, key, body)
    caps = (key.cap, workspace.cap) if project is None else (key.cap, project.cap, workspace.cap)
    return ChatRequest(
        body=body, key=key, org=org, models=requested_models(body), stream=stream, max_tokens=max_tokens,
        prompt=prompt, gen_id=gw.ids.generation_id(int(now * 1000)), created=int(now), created_ms=int(now * 1000),
        started=gw.clock.monotonic(), http_referer=req.header(b"http-referer"),
        title=req.header(b"x-openrouter-title") or req.header(b"x-title"), user_agent=req.header(b"user-agent"),
        api=api, workspace=workspace, project=project, caps=caps,
        # Privacy: the organization's and the workspace's settings both apply.
        deny_training=bool(org.settings.get("deny_training") or workspace.settings.get("deny_training")),
        zdr_only=any(bool(s.get(k)) for s in (org.settings, workspace.settings) for k in ("deny_retention", "zdr_only")),
        logging=bool(org.settings.get("logging")),
    )
