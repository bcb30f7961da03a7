"""The stateful side of routing around the pure planner: it chooses the endpoints for a
request (preferences, stickiness, middle-out, a static variant's defaults) and learns from
how each attempt went (health samples, sticky conversations)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from farebox.catalog.model import SUPPORTED_PARAMETERS, Catalog, Endpoint
from farebox.clock import Clock
from farebox.errors import BadRequest, FareboxError, NotFound
from farebox.ledger.pricing import measure_prompt
from farebox.routing.health import Health
from farebox.routing.middle_out import compress, wants_middle_out
from farebox.routing.plan import Need, plan
from farebox.routing.preferences import Preferences, parse_preferences
from farebox.routing.sticky import Sticky, caches, conversation_key
from farebox.settings import Settings

if TYPE_CHECKING:  # the relay imports this module
    from farebox.request import ChatRequest, Outcome


SAMPLING = frozenset({"temperature", "top_p", "top_k", "min_p", "top_a", "frequency_penalty", "presence_penalty",
                      "repetition_penalty", "seed", "logit_bias", "logprobs", "top_logprobs"})


class Router:
    def __init__(self, catalog: Catalog, settings: Settings, clock: Clock,
                 routable: Callable[[Endpoint, str, int | None], str | None],
                 rng: random.Random | None = None) -> None:
        self.catalog, self.settings, self.clock = catalog, settings, clock
        self._routable = routable
        self.rng = rng or random.Random()
        self.health = Health(clock, outage_window_s=settings.health_outage_window_s,
                             outage_failures=settings.health_outage_failures, cooldown_s=settings.health_cooldown_s)
        self.sticky = Sticky(clock, idle_s=settings.sticky_idle_s, entries_max=settings.sticky_entries_max)
        self._defaults = {m.id: m.default_parameters for m in catalog.models.values() if m.default_parameters}
        # Sampling parameters an endpoint does not accept are dropped silently, as OpenRouter
        # does without require_parameters (e.g. newer Claude models refuse `temperature`). An
        # endpoint that lists no parameters is not known to refuse any.
        self._unsupported = {e.id: SAMPLING - e.supported_parameters for m in catalog.models.values()
                             for e in m.endpoints if e.supported_parameters and SAMPLING - e.supported_parameters}
        # Stickiness pays only where some endpoint's cache reads are cheaper than its prompts;
        # elsewhere the conversation key (a hash of the first messages) is not worth computing.
        self._caching_models = frozenset(m.id for m in catalog.models.values() if any(caches(e) for e in m.endpoints))

    def route(self, req: ChatRequest) -> list[Endpoint]:
        """The endpoints to try for `req`, in order; raises when none is eligible. May rewrite
        `req`'s messages (middle-out) and sets its sticky key."""
        for model_id in req.models:
            model = self.catalog.model(model_id)
            if model is not None and ("embeddings" in model.output_modalities) != (req.api == "embedding"):
                raise BadRequest(f"{model_id} is an embedding model: use POST /api/v1/embeddings"
                                 if req.api != "embedding" else
                                 f"{model_id} is not an embedding model", field="model")
        prefs = parse_preferences(req.body.get("provider"))
        account_policy = (req.deny_training and prefs.data_collection != "deny") or (req.zdr_only and not prefs.zdr)
        if account_policy:
            # The organization's or workspace's privacy settings tighten whatever the request asked.
            prefs = dataclasses.replace(prefs, data_collection="deny" if req.deny_training else prefs.data_collection,
                                        zdr=prefs.zdr or req.zdr_only)
        if (not prefs.order and req.api == "chat"
                and (req.models[0] in self._caching_models or req.models[0].partition(":")[0] in self._caching_models)):
            conversation = conversation_key(req.body)
            if conversation is not None:
                req.sticky_key = (req.org.id, req.models[0], conversation)
        try:
            return self._route(req, prefs)
        except NotFound as missing:
            availability = missing.metadata.get("availability") or {}
            if account_policy and availability.get("code") == "privacy_restricted":
                missing.message += (" Your organization's or workspace's privacy settings exclude these providers:"
                                    " check GET /api/v1/organization/settings and the workspace's settings.")
                missing.metadata["settings"] = {"deny_training": req.deny_training, "zdr_only": req.zdr_only}
            raise
        except BadRequest as refused:
            # Too long for every endpoint: compress from the middle when the request (or the
            # small context of the endpoints) asks for it, then route again.
            if refused.error_type != "context_length_exceeded" or not self._middle_out(req):
                raise
            return self._route(req, prefs)

    def _route(self, req: ChatRequest, prefs: Preferences) -> list[Endpoint]:
        body = req.body
        parameters = (frozenset(k for k in SUPPORTED_PARAMETERS if body.get(k) is not None)
                      if prefs.require_parameters else frozenset())  # only that preference reads them
        need = Need(prompt_tokens=req.prompt.estimate(), max_tokens=req.max_tokens, parameters=parameters,
                    tools=bool(body.get("tools")), response_format=bool(body.get("response_format")))
        sticky = self.sticky.get(req.sticky_key) if req.sticky_key is not None else None
        workspace_id = req.workspace.id if req.workspace is not None else None
        return plan(self.catalog, req.models, need, prefs=prefs, health=self.health, rng=self.rng,
                    routable=lambda endpoint: self._routable(endpoint, req.api, workspace_id),
                    attempts_max=self.settings.attempts_max, sticky=sticky).endpoints

    def _middle_out(self, req: ChatRequest) -> bool:
        """Compress the prompt to fit the largest context among the requested models' endpoints;
        False when middle-out is off or cannot make it fit."""
        messages = req.body.get("messages")
        contexts = [e.context_length for m in req.models if (model := self.catalog.model(m)) is not None
                    for e in model.endpoints]
        if not isinstance(messages, list) or not contexts:
            return False
        largest = max(contexts)
        if not wants_middle_out(req.body, largest):
            return False
        budget = largest - (req.max_tokens or 0)
        compressed = compress(messages, budget)
        if compressed is messages or measure_prompt({"messages": compressed}).estimate() > budget:
            return False
        req.body["messages"] = compressed
        req.prompt = measure_prompt(req.body)
        return True

    def body_for(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """The request as `endpoint` takes it: a static variant's default parameters fill in
        what the request left out, and sampling parameters the endpoint refuses are left out."""
        defaults = self._defaults.get(endpoint.model_id)
        if defaults:
            body = {**defaults, **body}
        unsupported = self._unsupported.get(endpoint.id)
        if unsupported and not unsupported.isdisjoint(body):
            body = {k: v for k, v in body.items() if k not in unsupported}
        return body

    def failed(self, endpoint: Endpoint, error: FareboxError) -> None:
        """A failed attempt counts against the endpoint's health when it was the provider's
        fault; the client's own mistakes (a 400) say nothing about the provider."""
        if error.status == 429:
            self.health.record(endpoint.id, "rate_limited")
        elif error.failover:
            self.health.record(endpoint.id, "error")

    def served(self, req: ChatRequest, o: Outcome) -> None:
        """The serving attempt's result: its health sample, and stickiness on success."""
        if o.cancelled or o.attempt_started is None:
            return  # the client left: nothing learned about the provider
        if o.finish == "error":
            self.health.record(o.endpoint.id, "error")
            return
        now = self.clock.monotonic()
        ttft = o.first_token_at - o.attempt_started if req.stream and o.first_token_at is not None else None
        since = o.first_token_at if req.stream and o.first_token_at is not None else o.attempt_started
        elapsed = now - since
        tokens = o.usage.completion_tokens
        throughput = tokens / elapsed if tokens > 1 and elapsed > 0 else None
        self.health.record(o.endpoint.id, "ok", ttft_s=ttft, tokens_per_s=throughput)
        if req.sticky_key is not None:
            self.sticky.served(req.sticky_key, o.endpoint, o.usage.cached_tokens > 0)
