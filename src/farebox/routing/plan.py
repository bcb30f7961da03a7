"""Turn a request into the ordered list of endpoints to try, or into an error that says
why there is none. Pure: no I/O; randomness, health and stickiness come in as arguments.

For each requested model (the model, then its `models[]` fallbacks):
1. Hard filters drop endpoints, each exclusion remembered with its reason (`excluded_by`):
   unroutable, free_only, allowed_providers, ignored_providers, order, data_policy:training,
   data_policy:zdr, quantization, max_price, require_parameters, context_length,
   max_tokens, outage.
2. Soft filters keep only the endpoints that support `tools` / `response_format` when
   some do.
3. Order: `provider.order` first; else a `sort` (price, throughput, latency); else
   OpenRouter's load balancing: among stable endpoints one is drawn with weight 1/price²,
   the other stable ones follow cheapest first, unstable ones last. Endpoints missing a
   soft preference (`preferred_min_throughput`, `preferred_max_latency`) move to the end;
   a sticky endpoint (prompt caching) moves to the front, and so does an endpoint in
   outage whose cool-down ended (its one probe request).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from farebox.catalog.model import Catalog, Endpoint
from farebox.errors import BadRequest, FareboxError, NotFound
from farebox.money import price_text
from farebox.routing.health import EndpointStats, Health, Percentiles
from farebox.routing.preferences import DEFAULT, Percentile, Preferences, matches
from farebox.routing.variants import resolve


@dataclass(slots=True)  # a value, never changed; not frozen: docs/architecture.md
class Need:
    """What a request asks of an endpoint."""

    prompt_tokens: int                   # a realistic estimate (about four bytes a token)
    max_tokens: int | None
    parameters: frozenset[str] = frozenset()  # request fields that are model parameters
    tools: bool = False
    response_format: bool = False


@dataclass(frozen=True, slots=True)
class Exclusion:
    endpoint: Endpoint
    reason: str     # an `excluded_by` code
    detail: str

    def wire(self) -> dict[str, str]:
        return {"endpoint": self.endpoint.id, "provider": self.endpoint.provider.name,
                "model": self.endpoint.model_id, "excluded_by": self.reason, "detail": self.detail}


@dataclass(slots=True)
class Route:
    endpoints: list[Endpoint]
    excluded: list[Exclusion] = field(default_factory=list)


UNSTABLE_LAST = {"ok": 0, "unstable": 1, "outage": 2}


def plan(catalog: Catalog, model_ids: list[str], need: Need, *, prefs: Preferences = DEFAULT,
         health: Health | None = None, rng: random.Random | None = None,
         routable: Callable[[Endpoint], str | None] = lambda e: None, attempts_max: int = 3,
         sticky: str | None = None) -> Route:
    """The endpoints to try, in order, at most `attempts_max`. Raises when none is eligible:
    404 for unknown models and filtered-out endpoints (with every exclusion explained),
    400 context_length_exceeded when only size ruled them out, 503 when only outages did."""
    rng = rng or random.Random()
    route = Route([])
    per_model: list[list[Endpoint]] = []
    sort = prefs.sort
    for model_id in model_ids:
        resolved = resolve(catalog, model_id)
        if resolved is None:
            raise NotFound(f"Model {model_id!r} not found: it is not a valid model ID",
                           metadata={"availability": {"code": "model_not_found", "retryable": False,
                                                      "requested_models": model_ids}})
        model_sort = sort or resolved.sort
        candidates = []
        for endpoint in resolved.model.endpoints:
            why = _exclusion(endpoint, need, prefs, resolved.free_only, routable, health)
            if why is None:
                candidates.append(endpoint)
            else:
                route.excluded.append(Exclusion(endpoint, *why))
        candidates = _soft_filter(candidates, need, route.excluded)
        ordered = _order(candidates, prefs, model_sort, health, rng, sticky)
        if health is not None:
            # An endpoint in outage that was admitted here is the probe of its cool-down: it goes
            # first, or it would rarely be tried and never recover. Failover covers a failed probe.
            probes = [e for e in ordered if health.state(e.id) == "outage"]
            ordered = probes + [e for e in ordered if e not in probes]
        per_model.append(ordered)
    if sort is not None and prefs.partition == "none":
        # Sorted across every model at once: the cheapest (or fastest) endpoint of any model first.
        merged = [e for endpoints in per_model for e in endpoints]
        per_model = [_sorted(merged, sort, health)]
    for endpoints in per_model:
        route.endpoints.extend(endpoints)
    if not route.endpoints:
        raise refusal(model_ids, need, prefs, route.excluded)
    if not prefs.allow_fallbacks and not prefs.order:
        # Only the primary: OpenRouter returns its error rather than trying another.
        route.endpoints = route.endpoints[:1]
    route.endpoints = route.endpoints[:attempts_max]
    return route


def _exclusion(endpoint: Endpoint, need: Need, prefs: Preferences, free_only: bool,
               routable: Callable[[Endpoint], str | None], health: Health | None) -> tuple[str, str] | None:
    why = routable(endpoint)
    if why is not None:
        return "unroutable", why
    if free_only and not endpoint.pricing.is_free:
        return "free_only", "a :free request uses only free endpoints"
    if prefs is not DEFAULT:
        filtered = _preference_exclusion(endpoint, need, prefs)
        if filtered is not None:
            return filtered
    if need.max_tokens is not None and need.max_tokens > endpoint.max_completion_tokens:
        return "max_tokens", f"max_tokens {need.max_tokens} > its max_completion_tokens {endpoint.max_completion_tokens}"
    wanted = need.prompt_tokens + (need.max_tokens or 0)
    if wanted > endpoint.context_length:
        return "context_length", (f"the prompt (about {need.prompt_tokens} tokens) plus max_tokens "
                                  f"({need.max_tokens or 0}) exceed its context of {endpoint.context_length}")
    # admit() hands out the one probe per cool-down, so it is asked only of endpoints in outage.
    if health is not None and health.state(endpoint.id) == "outage" and not health.admit(endpoint.id):
        return "outage", "in outage: failed repeatedly in the last 30 seconds; retried after a cool-down"
    return None


def _preference_exclusion(endpoint: Endpoint, need: Need, prefs: Preferences) -> tuple[str, str] | None:
    """The filters a `provider` object asks for (most requests send none: skipped then)."""
    provider = endpoint.provider
    if prefs.only and not any(matches(p, provider.slug, provider.name) for p in prefs.only):
        return "allowed_providers", "not in provider.only"
    if any(matches(p, provider.slug, provider.name) for p in prefs.ignore):
        return "ignored_providers", "in provider.ignore"
    if prefs.order and not prefs.allow_fallbacks and _order_rank(endpoint, prefs.order) is None:
        return "allowed_providers", "not in provider.order, and allow_fallbacks is false"
    if prefs.data_collection == "deny" and provider.trains_on_prompts:
        return "data_policy:training", "the provider may train on prompts (data_collection: deny)"
    if prefs.zdr and provider.retains_prompts:
        return "data_policy:zdr", "the provider retains prompts (zdr: true)"
    if prefs.quantizations and endpoint.quantization not in prefs.quantizations:
        return "quantization", f"quantization {endpoint.quantization} is not in provider.quantizations"
    over = _over_max_price(endpoint, prefs)
    if over is not None:
        return "max_price", over
    if prefs.require_parameters and endpoint.supported_parameters:
        missing = sorted(need.parameters - endpoint.supported_parameters)
        if missing:
            return "require_parameters", f"does not support {', '.join(missing)}"
    return None


def _over_max_price(endpoint: Endpoint, prefs: Preferences) -> str | None:
    cap = prefs.max_price
    if cap is None:
        return None
    pricing = endpoint.pricing
    for name, price, limit, per in (("prompt", pricing.prompt, cap.prompt, 10**6),
                                    ("completion", pricing.completion, cap.completion, 10**6),
                                    ("image", pricing.image, cap.image, 1), ("request", pricing.request, cap.request, 1)):
        if limit is not None and price > limit:
            unit = "/M tokens" if per != 1 else f" per {name}"
            return f"{name} price ${price_text(price * per)}{unit} > max_price ${price_text(limit * per)}{unit}"
    return None


def _soft_filter(candidates: list[Endpoint], need: Need, excluded: list[Exclusion]) -> list[Endpoint]:
    """`tools` and `response_format` prefer endpoints that support them; when none does, the
    request goes ahead and the parameter may be ignored (OpenRouter's rule)."""
    for wanted, parameter in ((need.tools, "tools"), (need.response_format, "response_format")):
        if not wanted:
            continue
        supporting = [e for e in candidates if _supports(e, parameter)]
        if supporting and len(supporting) < len(candidates):
            excluded.extend(Exclusion(e, parameter, f"does not support {parameter}")
                            for e in candidates if e not in supporting)
            candidates = supporting
    return candidates


def _supports(endpoint: Endpoint, parameter: str) -> bool:
    # An endpoint that declares no parameters is not known to lack any.
    return not endpoint.supported_parameters or parameter in endpoint.supported_parameters


def _order(candidates: list[Endpoint], prefs: Preferences, sort: str | None, health: Health | None,
           rng: random.Random, sticky: str | None) -> list[Endpoint]:
    if len(candidates) < 2:
        return candidates
    if prefs.order:
        ranked = [(r, i, e) for i, e in enumerate(candidates) if (r := _order_rank(e, prefs.order)) is not None]
        ordered = [e for _, _, e in sorted(ranked, key=lambda t: (t[0], t[1]))]
        rest = [e for e in candidates if e not in ordered]
        return ordered + (_balanced(rest, health, rng) if prefs.allow_fallbacks else [])
    ordered = _sorted(candidates, sort, health) if sort else _balanced(candidates, health, rng)
    ordered = _soft_preferences(ordered, prefs, health)
    if sticky is not None:
        for i, endpoint in enumerate(ordered):
            if endpoint.id == sticky:
                ordered.insert(0, ordered.pop(i))
                break
    return ordered


def _order_rank(endpoint: Endpoint, order: tuple[str, ...]) -> int | None:
    for rank, pattern in enumerate(order):
        if matches(pattern, endpoint.provider.slug, endpoint.provider.name):
            return rank
    return None


def price(endpoint: Endpoint) -> int:
    """The price load balancing weighs: prompt plus completion, atto-dollars per token."""
    return endpoint.pricing.prompt + endpoint.pricing.completion


def _balanced(candidates: list[Endpoint], health: Health | None, rng: random.Random) -> list[Endpoint]:
    """One stable endpoint drawn with weight 1/price², then the other stable ones cheapest
    first, then the unstable ones cheapest first."""
    if not candidates:
        return []
    state = (lambda e: UNSTABLE_LAST[health.state(e.id)]) if health is not None else (lambda e: 0)
    by_price = sorted(candidates, key=lambda e: (state(e), price(e)))
    stable = [e for e in by_price if state(e) == 0] or by_price
    free = [e for e in stable if price(e) == 0]
    if free:  # 1/0² is infinite: a free endpoint always wins, uniformly among the free ones
        first = free[rng.randrange(len(free))]
    else:
        # Exact weights: 1/p² scaled by the product-free common form (max p)²/p², in integers
        # wide enough that no endpoint rounds to zero.
        top = max(price(e) for e in stable) ** 2
        weights = [top * 10**6 // (price(e) ** 2) for e in stable]
        first = _draw(stable, weights, rng)
    return [first] + [e for e in by_price if e is not first]


def _draw(items: list[Endpoint], weights: list[int], rng: random.Random) -> Endpoint:
    assert len(items) == len(weights) and all(w > 0 for w in weights)
    point = rng.randrange(sum(weights))
    for item, weight in zip(items, weights, strict=True):
        if point < weight:
            return item
        point -= weight
    raise AssertionError("unreachable: point < sum(weights)")


def _sorted(candidates: list[Endpoint], sort: str, health: Health | None) -> list[Endpoint]:
    if sort == "price":
        return sorted(candidates, key=price)
    stats = {e.id: health.stats(e.id) if health is not None else None for e in candidates}
    if sort == "throughput":
        # Fastest first; endpoints without measurements after the measured ones, cheapest first.
        return sorted(candidates, key=lambda e: (_p50(stats[e.id], "throughput") is None,
                                                 -(_p50(stats[e.id], "throughput") or 0), price(e)))
    assert sort == "latency", sort
    return sorted(candidates, key=lambda e: (_p50(stats[e.id], "latency") is None,
                                             _p50(stats[e.id], "latency") or 0, price(e)))


def _p50(stats: EndpointStats | None, kind: str) -> float | None:
    if stats is None:
        return None
    values = stats.throughput_30m if kind == "throughput" else stats.latency_30m
    return values.p50 if values is not None else None


def _soft_preferences(ordered: list[Endpoint], prefs: Preferences, health: Health | None) -> list[Endpoint]:
    """Endpoints known to miss `preferred_min_throughput` or `preferred_max_latency` move to
    the end, keeping their order; unmeasured endpoints are given the benefit of the doubt."""
    if health is None or (prefs.preferred_min_throughput is None and prefs.preferred_max_latency is None):
        return ordered
    keep, late = [], []
    for endpoint in ordered:
        stats = health.stats(endpoint.id)
        slow = (_misses(stats.throughput_30m, prefs.preferred_min_throughput, minimum=True, scale=1.0)
                or _misses(stats.latency_30m, prefs.preferred_max_latency, minimum=False, scale=1000.0))
        (late if slow else keep).append(endpoint)
    return keep + late


def _misses(measured: Percentiles | None, wanted: Percentile | None, *, minimum: bool, scale: float) -> bool:
    """scale converts the preference's unit into the measurement's (latency: seconds -> ms)."""
    if measured is None or wanted is None:
        return False
    for name in ("p50", "p75", "p90", "p99"):
        threshold = getattr(wanted, name)
        if threshold is None:
            continue
        value, limit = getattr(measured, name), threshold * scale
        if (value < limit) if minimum else (value > limit):
            return True
    return False


def refusal(model_ids: list[str], need: Need, prefs: Preferences, excluded: list[Exclusion]) -> FareboxError:
    """Why no endpoint is eligible, in OpenRouter's availability shape plus the list of
    every endpoint and the filter that removed it."""
    reasons = sorted({x.reason for x in excluded})
    listing = [x.wire() for x in excluded]
    names = ", ".join(model_ids)
    detail = "; ".join(f"{x.endpoint.provider.name}: {x.reason} ({x.detail})" for x in excluded)
    if reasons == ["max_tokens"]:
        most = max(x.endpoint.max_completion_tokens for x in excluded)
        return BadRequest(f"max_tokens is {need.max_tokens}, but the most any endpoint of {names} can produce is "
                          f"{most}", field="max_tokens", metadata={"excluded": listing})
    if reasons == ["context_length"]:
        largest = max(x.endpoint.context_length for x in excluded)
        error = BadRequest(
            f"This endpoint's maximum context length is {largest} tokens. However, you requested about "
            f"{need.prompt_tokens + (need.max_tokens or 0)} tokens ({need.prompt_tokens} of text input, "
            f"{need.max_tokens or 0} in the output). Please reduce the length of either one, or use the "
            "\"middle-out\" transform to compress your prompt automatically.",
            metadata={"excluded": listing})
        error.error_type = "context_length_exceeded"  # type: ignore[misc]
        return error
    if reasons == ["outage"]:
        error = NotFound(f"Every endpoint for {names} is failing right now: {detail}",
                         metadata={"availability": _availability("temporarily_unavailable", True, model_ids,
                                                                  reasons), "excluded": listing})
        error.status = 503  # type: ignore[misc]
        error.error_type = "provider_overloaded"  # type: ignore[misc]
        return error
    if prefs.order and not prefs.allow_fallbacks and reasons == ["allowed_providers"]:
        message = f"No endpoints found for the request with manual order: {', '.join(prefs.order)}"
    elif reasons and all(r.startswith("data_policy") for r in reasons):
        message = f"No endpoints found matching your data policy for {names}: {detail}"
    elif not excluded:
        message = f"No endpoints found for {names}."
    else:
        message = f"No endpoints found for {names}: {detail}"
    code = ("privacy_restricted" if reasons and all(r.startswith("data_policy") for r in reasons)
            else "constraint_filtered" if set(reasons) - {"unroutable"} else "no_endpoints")
    return NotFound(message, metadata={"availability": _availability(code, False, model_ids, reasons),
                                       "excluded": listing})


def _availability(code: str, retryable: bool, model_ids: list[str], reasons: list[str]) -> dict[str, object]:
    return {"code": code, "retryable": retryable, "requested_models": model_ids, "excluded_by": reasons}
