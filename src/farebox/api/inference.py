"""What every inference endpoint does before the relay takes over: read the body as a
JSON object, resolve the caller's key, and stamp a new request with its generation id
and clocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.http import Request
from farebox.errors import BadRequest
from farebox.ledger.pricing import PromptSize
from farebox.relay import ChatRequest
from farebox.tenancy.records import KeyRecord

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


def new_request(gw: Gateway, req: Request, key: KeyRecord, body: dict[str, Any], *, api: str, stream: bool,
                max_tokens: int | None, prompt: PromptSize) -> ChatRequest:
    now = gw.clock.now()
    org = gw.directory.orgs[key.org_id]  # type: ignore[index]
    return ChatRequest(
        body=body, key=key, org=org, models=requested_models(body), stream=stream, max_tokens=max_tokens,
        prompt=prompt, gen_id=gw.ids.generation_id(int(now)), created=int(now), created_ms=int(now * 1000),
        started=gw.clock.monotonic(), http_referer=req.header(b"http-referer"),
        title=req.header(b"x-openrouter-title") or req.header(b"x-title"), user_agent=req.header(b"user-agent"),
        api=api,
    )
