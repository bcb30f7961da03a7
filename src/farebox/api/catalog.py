"""GET /api/v1/models and /api/v1/models/{author}/{slug}/endpoints (no auth).

Only models with at least one routable endpoint are listed: a self-hosted gateway should
not advertise what it cannot serve. The catalog is fixed for the life of the process, so
the full list is rendered once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.http import JSON_HEADERS, Request, Response, json_response
from farebox.catalog.model import Endpoint, Model
from farebox.errors import FareboxError, NotFound
from farebox.routing.health import EndpointStats
from farebox.tenancy import access

if TYPE_CHECKING:
    from farebox.app import Gateway


def _architecture(model: Model) -> dict[str, Any]:
    return {"modality": model.modality, "input_modalities": list(model.input_modalities),
            "output_modalities": list(model.output_modalities), "tokenizer": model.tokenizer,
            "instruct_type": model.instruct_type}


def model_wire(model: Model, endpoints: list[Endpoint]) -> dict[str, Any]:
    top = min(endpoints, key=lambda e: e.pricing.prompt + e.pricing.completion)
    params = sorted(set().union(*(e.supported_parameters for e in endpoints)))
    return {
        "id": model.id, "canonical_slug": model.canonical_slug, "hugging_face_id": model.hugging_face_id,
        "name": model.name, "created": model.created, "description": model.description,
        "context_length": model.context_length, "architecture": _architecture(model),
        "pricing": top.pricing.wire(),
        "top_provider": {"context_length": top.context_length, "max_completion_tokens": top.max_completion_tokens,
                         "is_moderated": False},
        "per_request_limits": None, "supported_parameters": params, "default_parameters": model.default_parameters or None,
        "expiration_date": None, "links": {"details": f"/api/v1/models/{model.id}/endpoints"},
    }


_STATUS = {"ok": 0, "unstable": -1, "outage": -2}


def endpoint_wire(endpoint: Endpoint, model: Model, stats: EndpointStats, state: str,
                  detailed: bool) -> dict[str, Any]:
    """Section 2.4's PublicEndpoint. `status` is 0 when healthy, -1 when it failed in the
    last 30 seconds and -2 while routing skips it as in outage. Latency (time to first
    token, ms) and throughput (tokens/s) percentiles are shown to authenticated callers,
    as OpenRouter does."""
    return {
        "name": f"{endpoint.provider.name} | {endpoint.upstream_model}", "model_id": model.id,
        "model_name": model.name, "provider_name": endpoint.provider.name, "tag": endpoint.provider.slug,
        "context_length": endpoint.context_length, "max_completion_tokens": endpoint.max_completion_tokens,
        "max_prompt_tokens": endpoint.context_length, "pricing": endpoint.pricing.wire(),
        "quantization": endpoint.quantization, "supported_parameters": sorted(endpoint.supported_parameters),
        "supports_implicit_caching": endpoint.pricing.input_cache_read is not None, "status": _STATUS[state],
        "uptime_last_5m": stats.uptime_5m, "uptime_last_30m": stats.uptime_30m, "uptime_last_1d": stats.uptime_1d,
        "latency_last_30m": stats.latency_30m.wire() if detailed and stats.latency_30m else None,
        "throughput_last_30m": stats.throughput_30m.wire() if detailed and stats.throughput_30m else None,
        # Farebox addition: the provider's data policy, which routing's privacy filters read.
        "data_policy": {"training": endpoint.provider.trains_on_prompts,
                        "retains_prompts": endpoint.provider.retains_prompts},
    }


class ModelList:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.models: list[tuple[Model, list[Endpoint], dict[str, Any]]] = []
        for model in gw.catalog.models.values():
            endpoints = [e for e in model.endpoints if gw.relay.routable(e) is None]
            if endpoints:
                self.models.append((model, endpoints, model_wire(model, endpoints)))
        self.models.sort(key=lambda m: m[0].id)
        data = [wire for _, _, wire in self.models]
        self.full = orjson.dumps({"data": data, "total_count": len(data), "links": {"next": None}})

    async def list(self, gw: Gateway, req: Request) -> Response:
        wanted = req.query("supported_parameters")
        if not wanted:
            return Response(200, self.full, list(JSON_HEADERS))
        needed = {p.strip() for p in wanted.split(",") if p.strip()}
        data = [w for _, _, w in self.models if needed <= set(w["supported_parameters"])]
        return json_response({"data": data, "total_count": len(data), "links": {"next": None}})

    async def endpoints(self, gw: Gateway, req: Request) -> Response:
        model_id = f"{req.params['author']}/{req.params['slug']}"
        detailed = _authenticated(gw, req)
        health = gw.relay.router.health
        for model, endpoints, _ in self.models:
            if model.id == model_id:
                return json_response({"data": {
                    "id": model.id, "name": model.name, "created": model.created,
                    "description": model.description, "architecture": _architecture(model),
                    "endpoints": [endpoint_wire(e, model, health.stats(e.id), health.state(e.id), detailed)
                                  for e in endpoints]}})
        raise NotFound(f"Model {model_id!r} not found")


def _authenticated(gw: Gateway, req: Request) -> bool:
    header = req.header(b"authorization")
    if not header:
        return False
    try:
        access.resolve(gw, req, allow_keys=True)   # an API key, a member's session or the operator
    except FareboxError:
        return False
    return True
