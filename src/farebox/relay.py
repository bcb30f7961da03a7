"""One request's lifecycle, and nothing else: plan -> hold -> attempts with failover ->
settle or release -> generation record. It knows no HTTP: the api layer hands it a
parsed request and, for streams, a sink to write events to. A stream's own half (its first
token, relaying its chunks) is `relay_stream.py`.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from farebox.catalog.model import Catalog, Endpoint
from farebox.choices import choice_text, excludes_reasoning, native_finish, strip_reasoning
from farebox.clock import Clock
from farebox.errors import FareboxError, Forbidden, InsufficientCredits, UpstreamTimeout
from farebox.generation import generation_record, logged_content, usage_wire
from farebox.keepalive import ClientGone, Keepalives
from farebox.ledger.book import Hold, Settlement, Shortfall
from farebox.ledger.byok import ByokMeter
from farebox.ledger.entries import wallet
from farebox.ledger.ledger import Ledger
from farebox.ledger.pricing import (
    FREE,
    Cost,
    Usage,
    affordable_output,
    cost_of,
    estimate_text_tokens,
    is_insured,
    max_cost,
)
from farebox.limits.admission import Admission
from farebox.load import CpuLoad
from farebox.money import percent_bps
from farebox.providers.base import Call, Dialect, Reply, normalize_finish
from farebox.relay_stream import Abandoned, Streaming
from farebox.request import ChatRequest, Outcome
from farebox.routing.router import Router
from farebox.settings import Settings
from farebox.tenancy.byok import Credential, Credentials
from farebox.tenancy.vault import VaultError

log = logging.getLogger("farebox.relay")


T = TypeVar("T")


@dataclass(slots=True)
class _Served(Generic[T]):
    endpoint: Endpoint
    hold: Hold
    result: T
    attempts: list[dict[str, Any]]
    started: float
    byok: bool = False


# Errors that mean the workspace's own key (not the endpoint) is at fault: they fall back to
# shared capacity without counting against the endpoint's health.
_OWN_KEY_FAULTS = frozenset({"authentication", "permission_denied", "payment_required", "rate_limit_exceeded"})

_API_NAMES = {"chat": "chat completions", "completion": "legacy completions", "embedding": "embeddings"}
_OBJECTS = {"chat": "chat.completion", "completion": "text_completion"}


class Relay(Streaming):
    """Plans, holds, attempts and settles; streaming's own half is `relay_stream.Streaming`."""

    def __init__(self, *, catalog: Catalog, dialects: dict[str, Dialect], ledger: Ledger,
                 settings: Settings, clock: Clock, rng: random.Random | None = None,
                 admission: Admission | None = None, credentials: Credentials | None = None,
                 byok_meter: ByokMeter | None = None) -> None:
        self.catalog, self.dialects, self.ledger = catalog, dialects, ledger
        self.settings, self.clock = settings, clock
        self.admission, self.credentials, self.byok_meter = admission, credentials, byok_meter
        self.logging_discount_bps = percent_bps(settings.logging_discount_percent)
        self.router = Router(catalog, settings, clock, self.routable, rng)
        self.keepalives = Keepalives(settings.sse_keepalive_s)
        self.load = CpuLoad(clock)

    # -- planning and holds ----------------------------------------------------------
    def routable(self, endpoint: Endpoint, api: str = "chat", workspace_id: int | None = None) -> str | None:
        """Why `endpoint` cannot serve (None when it can). A provider without a shared key is
        routable for a workspace that brought its own (BYOK)."""
        provider = endpoint.provider
        dialect = self.dialects.get(provider.dialect)
        if dialect is None:
            return f"the {provider.dialect} dialect is not available yet"
        if api != "chat" and api not in getattr(dialect, "apis", ()):
            return f"its {provider.dialect} API has no {_API_NAMES[api]}"
        if self.catalog.credential(provider) is None and self._byok(workspace_id, endpoint) is None:
            return f"no API key configured ({provider.api_key})"
        return None

    def _byok(self, workspace_id: int | None, endpoint: Endpoint) -> Credential | None:
        if self.credentials is None or workspace_id is None:
            return None
        return self.credentials.for_workspace(workspace_id, endpoint.provider.slug)

    def _candidates(self, req: ChatRequest, endpoints: list[Endpoint]) -> list[tuple[Endpoint, Credential | None]]:
        """Each planned endpoint with the key to call it with: the workspace's own key first
        (BYOK), then the shared one unless the workspace said "always use" its own."""
        out: list[tuple[Endpoint, Credential | None]] = []
        workspace_id = req.workspace.id if req.workspace is not None else None
        for endpoint in endpoints:
            own = self._byok(workspace_id, endpoint)
            if own is not None:
                out.append((endpoint, own))
                if own.always_use:
                    continue
            if self.catalog.credential(endpoint.provider) is not None:
                out.append((endpoint, None))
        return out

    def admit(self, req: ChatRequest) -> None:
        """Rate limits (the key's, the free tier's) before anything is reserved."""
        if self.admission is not None:
            self.admission.admit(req.key, req.org.id, req.models)

    def _bound(self, req: ChatRequest, endpoint: Endpoint) -> tuple[int, int]:
        s = self.settings
        prompt = req.prompt.bound(s.hold_request_tokens, s.hold_message_tokens, s.hold_image_tokens)
        if req.api == "embedding":
            return prompt, 0
        # Each of n choices may produce the whole cap, and the provider bills them all.
        choices = req.body.get("n") or 1
        output = (req.max_tokens or endpoint.max_completion_tokens) * choices
        return prompt, output

    def _hold(self, req: ChatRequest, hold: Hold | None, endpoint: Endpoint, byok: bool = False) -> Hold:
        """Reserve what the attempt can cost. On the workspace's own key (BYOK) the wallet
        pays only the fee, and the list-price cost is reserved on the caps that count BYOK."""
        prompt, output = self._bound(req, endpoint)
        amount = max_cost(endpoint.pricing, prompt, req.prompt.images, output)
        listed = 0
        if byok:
            assert self.byok_meter is not None
            amount, listed = self.byok_meter.max_fee(amount), amount
        book = self.ledger.book
        if hold is None:
            account = req.workspace.account if req.workspace is not None else wallet(req.org.id)
            return book.hold(req.gen_id, account, amount, req.caps, listed)
        book.resize(hold, amount, listed)
        return hold

    def _shortfall_error(self, req: ChatRequest, shortfall: Shortfall, endpoint: Endpoint) -> FareboxError:
        prompt, output = self._bound(req, endpoint)
        scope = shortfall.scope
        period = "total" if shortfall.period in (None, "lifetime") else shortfall.period
        if scope != "wallet" and shortfall.available <= 0:
            # A spending cap is used up: 403, as OpenRouter answers an exhausted key limit
            # (402 stays for credit): clients must not read it as "out of credits".
            metadata = {"limit_source": scope, "period": period}
            if scope == "key":
                return Forbidden(f"Key limit exceeded ({period} limit). Manage it with the key API or "
                                 "`farebox keys`.", metadata=metadata)
            metadata[scope] = shortfall.name
            return Forbidden(f"{scope.capitalize()} budget exceeded ({period} budget) for {scope} "
                             f"{shortfall.name!r}. Manage it with the {scope}s API or `farebox {scope}s`.",
                             metadata=metadata)
        affordable = affordable_output(endpoint.pricing, prompt, req.prompt.images, max(shortfall.available, 0))
        where = {"wallet": "add credits to your organization", "key": "raise this key's limit",
                 "project": f"raise the budget of project {shortfall.name!r}",
                 "workspace": f"raise the budget of workspace {shortfall.name!r}"}[scope]
        if scope == "wallet" and req.workspace is not None and req.workspace.pooled:
            where = f"transfer credits to workspace {req.workspace.name!r}"
        return InsufficientCredits(
            f"This request requires more credits, or fewer max_tokens. You requested up to {output} tokens, "
            f"but can only afford {affordable}. To increase, {where}.",
            metadata={"requested_tokens": output, "affordable_tokens": affordable, "limit_source": scope})

    def _user_tag(self, req: ChatRequest) -> str | None:
        user = req.body.get("user")
        if not isinstance(user, str):
            return None
        return hashlib.sha256(f"{req.org.id}:{user}".encode()).hexdigest()[:32]

    def _attempt(self, endpoint: Endpoint, status: int, started: float, upstream_id: str | None,
                 byok: bool = False) -> dict[str, Any]:
        return {"id": upstream_id, "endpoint_id": endpoint.id, "model_permaslug": endpoint.model_id,
                "provider_name": endpoint.provider.name, "status": status,
                "latency": round((self.clock.monotonic() - started) * 1000), "is_byok": byok,
                "routed_service_tier": None}

    async def _attempts(self, req: ChatRequest,
                        attempt: Callable[[Call], Awaitable[tuple[T, str | None]]]) -> _Served[T]:
        """Try the planned endpoints in order until one answers: hold (or resize the hold)
        for each, call `attempt`, record it, fail over on errors that allow it. Raises the
        last error, or 402/403 when no endpoint could be afforded."""
        hold: Hold | None = None
        shortfall: tuple[Shortfall, Endpoint] | None = None
        error: FareboxError | None = None
        attempts: list[dict[str, Any]] = []
        user_tag = self._user_tag(req)  # once per request, not per attempt
        for endpoint, own in self._candidates(req, self.router.route(req)):
            byok = own is not None
            try:
                hold = self._hold(req, hold, endpoint, byok)
            except Shortfall as s:
                shortfall = shortfall or (s, endpoint)
                continue
            started = self.clock.monotonic()
            budget = self.settings.attempts_timeout_s - (started - req.started)
            if budget <= 0:
                error = error or UpstreamTimeout(
                    f"No endpoint answered within attempts_timeout_s ({self.settings.attempts_timeout_s}s)",
                    provider_name=endpoint.provider.name)
                break
            secret = self._secret(own) if own is not None else self.catalog.credential(endpoint.provider)
            if secret is None:   # the workspace's key cannot be decrypted: see _secret
                continue
            call = Call(endpoint, self.router.body_for(endpoint, req.body), secret, user_tag, req.api, budget)
            try:
                result, upstream_id = await attempt(call)
            except ClientGone:
                attempts.append(self._attempt(endpoint, 499, started, None, byok))
                raise Abandoned(endpoint, hold, attempts, byok) from None
            except FareboxError as e:
                attempts.append(self._attempt(endpoint, e.status, started, None, byok))
                if not (byok and e.error_type in _OWN_KEY_FAULTS):
                    # A workspace's own key being refused says nothing about the endpoint.
                    self.router.failed(endpoint, e)
                error = e
                if not e.failover:
                    break
                continue
            attempts.append(self._attempt(endpoint, 200, started, upstream_id, byok))
            return _Served(endpoint, hold, result, attempts, started, byok)
        if hold is not None:
            self.ledger.book.release(hold)
        if error is not None:
            raise error
        assert shortfall is not None
        raise self._shortfall_error(req, *shortfall)

    def _secret(self, own: Credential) -> str | None:
        assert self.credentials is not None
        try:
            return self.credentials.secret(own)
        except VaultError:
            log.error("BYOK credential %s cannot be decrypted with the configured key; skipped", own.id)
            return None

    # -- non-streaming -------------------------------------------------------------
    async def complete(self, req: ChatRequest) -> dict[str, Any]:
        self.admit(req)
        async def attempt(call: Call) -> tuple[Reply, str | None]:
            # The dialect hands `call.budget_s` to the upstream client, whose connection timer
            # bounds the whole answer (at most upstream_timeout_s) and raises UpstreamTimeout.
            assert call.budget_s is not None
            reply = await self.dialects[call.endpoint.provider.dialect].complete(call)
            return reply, reply.upstream_id

        served = await self._attempts(req, attempt)
        reply = served.result
        return await self._complete_reply(req, served.hold, served.endpoint, reply.body, reply.usage,
                                          reply.upstream_id, served.attempts, served.started, served.byok)

    async def _complete_reply(self, req: ChatRequest, hold: Hold, endpoint: Endpoint, body: dict[str, Any],
                              usage: Usage | None, upstream_id: str | None,
                              attempts: list[dict[str, Any]], started: float, byok: bool = False) -> dict[str, Any]:
        choices = body.get("choices") or ()  # embeddings have none
        native = finish = None
        exclude = excludes_reasoning(req.body)
        for choice in choices:
            if exclude and isinstance(choice.get("message"), dict):
                strip_reasoning(choice["message"])
            native_c = native_finish(choice)
            choice["native_finish_reason"] = native_c
            choice["finish_reason"] = normalize_finish(choice.get("finish_reason"))
            if native is None:
                native, finish = native_c, choice["finish_reason"]
        if usage is None:
            text = "".join(choice_text(c) for c in choices)
            usage = Usage(prompt_tokens=req.prompt.estimate(), completion_tokens=estimate_text_tokens(text),
                          estimated=True)
        usage.images = req.prompt.images
        outcome = Outcome(endpoint, usage, native, finish, upstream_id,
                          self.clock.monotonic(), attempts=attempts, attempt_started=started, byok=byok,
                          completion_text="".join(choice_text(c) for c in choices) if req.logging else None)
        cost, settlement = await self._settle(req, hold, outcome)
        body["id"] = req.gen_id
        body["provider"] = endpoint.provider.name
        body["model"] = endpoint.model_id
        if req.api != "embedding":
            body["object"] = _OBJECTS[req.api]
            body["created"] = req.created
        body["usage"] = usage_wire(usage, cost, settlement, req.api, byok)
        return body

    # -- streaming -----------------------------------------------------------------
    # -- settlement ----------------------------------------------------------------
    async def _settle(self, req: ChatRequest, hold: Hold, outcome: Outcome) -> tuple[Cost, Settlement]:
        """Price the outcome and post its charge. On the workspace's own key (BYOK) the
        wallet pays the fee on the list-price cost; the cost itself is counted on the caps
        that include BYOK and on the organization's monthly allowance."""
        endpoint = outcome.endpoint
        # Zero-completion insurance is for generations; an embedding never has completion tokens.
        insured = req.api != "embedding" and is_insured(outcome.usage, outcome.finish)
        discount = self.logging_discount_bps if req.logging and not outcome.byok else 0
        cost = FREE if insured else cost_of(endpoint.pricing, outcome.usage, discount)
        hold_amount = hold.amount
        listed = 0
        charge = cost.total
        now = self.clock.now()
        if outcome.byok:
            assert self.byok_meter is not None
            listed, charge = cost.total, self.byok_meter.charge(req.org.id, cost.total, now)
        settlement = self.ledger.book.settle(
            hold, charge, reference=f"charge:{req.gen_id}", created_at=self.clock.now_ms(),
            org_id=req.org.id, key_hash=req.key.hash, generation_id=req.gen_id, byok=listed)
        if settlement.overrun:
            log.warning("overrun on %s: %s billed %d nano-dollars beyond the hold of %d", req.gen_id,
                        endpoint.provider.name, settlement.overrun, hold_amount)
        record = generation_record(req, outcome, cost, settlement, hold_amount, listed, self.clock.monotonic(),
                                   self.clock.now_ms())
        try:
            await self.ledger.commit(settlement, record, logged_content(req, outcome))
        except BaseException:
            if listed and self.byok_meter is not None:
                self.byok_meter.remove(req.org.id, listed, now)
            raise
        if self.admission is not None:
            self.admission.used(req.key, outcome.usage.prompt_tokens + outcome.usage.completion_tokens)
        self.router.served(req, outcome)
        return cost, settlement
