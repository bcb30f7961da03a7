"""Turn a request's models into an ordered list of endpoints to try. Pure: no I/O.

Today's order: for each requested model in turn (the model, then its `models[]`
fallbacks), its routable endpoints that can produce the requested output, cheapest first.
"""

from __future__ import annotations

from collections.abc import Callable

from farebox.catalog.model import Catalog, Endpoint
from farebox.errors import BadRequest, NotFound


def plan(catalog: Catalog, model_ids: list[str], *, max_tokens: int | None,
         routable: Callable[[Endpoint], str | None], attempts_max: int) -> list[Endpoint]:
    """`routable(endpoint)` returns None when the endpoint can be called, else why not."""
    out: list[Endpoint] = []
    reasons: list[str] = []
    too_long: list[int] = []
    for model_id in model_ids:
        model = catalog.model(model_id)
        if model is None:
            raise NotFound(f"Model {model_id!r} not found: it is not a valid model ID",
                           metadata={"availability": {"code": "model_not_found", "requested_models": model_ids}})
        candidates = []
        for endpoint in model.endpoints:
            why = routable(endpoint)
            if why is not None:
                reasons.append(f"{endpoint.provider.name}: {why}")
            elif max_tokens is not None and max_tokens > endpoint.max_completion_tokens:
                too_long.append(endpoint.max_completion_tokens)
            else:
                candidates.append(endpoint)
        candidates.sort(key=lambda e: e.pricing.prompt + e.pricing.completion)
        out.extend(candidates)
    if not out:
        if too_long and max_tokens is not None:
            raise BadRequest(f"max_tokens is {max_tokens}, but the most any endpoint of the requested model can "
                             f"produce is {max(too_long)}", field="max_tokens")
        raise NotFound(f"No endpoints found for {', '.join(model_ids)}." +
                       (f" {'; '.join(reasons)}." if reasons else ""),
                       metadata={"availability": {"code": "no_endpoints", "requested_models": model_ids}})
    return out[:attempts_max]
