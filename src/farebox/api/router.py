"""The ASGI application: route table, lifespan, and the one place where errors escaping
a handler are rendered."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from farebox.api import account, admin, chat, completions, credits, governance, messages
from farebox.api import activity as activity_api
from farebox.api import byok as byok_api
from farebox.api import members as members_api
from farebox.api.catalog import ModelList
from farebox.api.http import Request, Response, error_response, json_response, send_response
from farebox.errors import FareboxError, InternalError, NotFound

if TYPE_CHECKING:
    from farebox.app import Gateway

log = logging.getLogger("farebox.api")
Handler = Callable[["Gateway", Request], Awaitable[Response | None]]


async def health(gw: Gateway, req: Request) -> Response:
    return json_response({"status": "ok"})


class Api:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        models = ModelList(gw)
        anthropic = messages.Messages(gw)
        v1 = "/api/v1"
        self.exact: dict[tuple[str, str], Handler] = {
            ("POST", f"{v1}/chat/completions"): chat.handle,
            ("POST", f"{v1}/completions"): completions.completions,
            ("POST", f"{v1}/embeddings"): completions.embeddings,
            ("POST", f"{v1}/messages"): anthropic.create,
            ("POST", f"{v1}/messages/count_tokens"): anthropic.count_tokens,
            ("GET", f"{v1}/models"): models.list,
            ("GET", f"{v1}/generation"): account.generation,
            ("GET", f"{v1}/generation/content"): account.generation_content,
            ("GET", f"{v1}/key"): account.key,
            ("GET", f"{v1}/auth/key"): account.key,
            ("GET", f"{v1}/credits"): credits.credits,
            ("GET", f"{v1}/credits/quote"): account.quote_purchase,
            ("GET", f"{v1}/credits/packages"): credits.packages,
            ("POST", f"{v1}/credits/checkout"): credits.checkout,
            ("GET", f"{v1}/credits/lots"): credits.lots,
            ("GET", f"{v1}/credits/purchases"): credits.purchases,
            ("GET", f"{v1}/credits/auto-topup"): credits.get_auto_topup,
            ("PUT", f"{v1}/credits/auto-topup"): credits.put_auto_topup,
            ("GET", f"{v1}/credits/topups"): credits.topups,
            ("GET", f"{v1}/credits/alerts"): credits.get_alerts,
            ("PUT", f"{v1}/credits/alerts"): credits.put_alerts,
            ("GET", f"{v1}/credits/invoices"): credits.list_invoices,
            ("GET", f"{v1}/credits/statement.csv"): credits.statement,
            ("POST", f"{v1}/stripe/webhook"): credits.stripe_webhook,
            ("GET", f"{v1}/keys"): admin.list_keys,
            ("POST", f"{v1}/keys"): admin.create_key,
            ("GET", f"{v1}/organizations"): admin.list_orgs,
            ("POST", f"{v1}/organizations"): admin.create_org,
            ("GET", f"{v1}/ledger/verify"): admin.verify,
            ("GET", "/health"): health,
            # -- members (issue 6): exact routes --
            ("POST", f"{v1}/auth/login"): members_api.login,
            ("POST", f"{v1}/auth/logout"): members_api.logout,
            ("GET", f"{v1}/organization/members"): members_api.list_members,
            ("POST", f"{v1}/organization/members"): members_api.create_member,
            ("GET", f"{v1}/organization/me"): members_api.me,
            # -- byok (issue 6): exact routes --
            ("GET", f"{v1}/byok"): byok_api.list_credentials,
            ("POST", f"{v1}/byok"): byok_api.create_credential,
            # -- activity (issue 6): exact routes --
            ("GET", f"{v1}/activity"): activity_api.activity,
            ("GET", f"{v1}/activity.csv"): activity_api.activity_csv,
            # -- governance (issue 6): exact routes --
            **{(m, f"{v1}{path}"): h for (m, path), h in governance.EXACT.items()},
        }
        self.patterns: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(rf"^{v1}/models/(?P<author>[^/]+)/(?P<slug>[^/]+)/endpoints$"), models.endpoints),
            ("GET", re.compile(rf"^{v1}/keys/(?P<hash>[0-9a-fA-F]+)$"), admin.get_key),
            ("PATCH", re.compile(rf"^{v1}/keys/(?P<hash>[0-9a-fA-F]+)$"), admin.patch_key),
            ("DELETE", re.compile(rf"^{v1}/keys/(?P<hash>[0-9a-fA-F]+)$"), admin.delete_key),
            ("GET", re.compile(rf"^{v1}/organizations/(?P<org>[^/]+)$"), admin.get_org),
            ("POST", re.compile(rf"^{v1}/credits/purchases/(?P<purchase>[A-Za-z0-9:_.-]+)/refund$"), credits.refund),
            ("GET", re.compile(rf"^{v1}/credits/invoices/(?P<number>[0-9]{{1,12}})\.(?P<format>html|pdf)$"),
             credits.get_invoice),
            ("POST", re.compile(rf"^{v1}/organizations/(?P<org>[^/]+)/credits$"), admin.grant),
            ("POST", re.compile(rf"^{v1}/organizations/(?P<org>[^/]+)/purchases$"), admin.record_purchase),
            # -- members (issue 6): pattern routes --
            ("GET", re.compile(rf"^{v1}/organization/members/(?P<member_id>[A-Za-z0-9_-]+)$"), members_api.get_member),
            ("PATCH", re.compile(rf"^{v1}/organization/members/(?P<member_id>[A-Za-z0-9_-]+)$"), members_api.patch_member),
            ("DELETE", re.compile(rf"^{v1}/organization/members/(?P<member_id>[A-Za-z0-9_-]+)$"),
             members_api.delete_member),
            # -- byok (issue 6): pattern routes --
            ("GET", re.compile(rf"^{v1}/byok/(?P<id>byok_[0-9a-f]{{24}})$"), byok_api.get_credential),
            ("PATCH", re.compile(rf"^{v1}/byok/(?P<id>byok_[0-9a-f]{{24}})$"), byok_api.patch_credential),
            ("DELETE", re.compile(rf"^{v1}/byok/(?P<id>byok_[0-9a-f]{{24}})$"), byok_api.delete_credential),
            # -- governance (issue 6): pattern routes --
            *((m, re.compile(rf"^{v1}{path}$"), h) for m, path, h in governance.PATTERNS),
        ]
        # Paths whose errors take another API's shape: the Anthropic Messages API's clients
        # read only Anthropic's, whether a handler or the router raised the error.
        self.error_shapes: list[tuple[str, Callable[[FareboxError], Response]]] = [
            (f"{v1}/messages", messages.error_response),
        ]

    def _route(self, method: str, path: str, req: Request) -> Handler:
        handler = self.exact.get((method, path))
        if handler is not None:
            return handler
        allowed = False
        for m, pattern, h in self.patterns:
            match = pattern.match(path)
            if match:
                if m == method:
                    req.params = match.groupdict()
                    return h
                allowed = True
        if allowed or any(p == path for _, p in self.exact):
            raise _MethodNotAllowed(f"{method} is not allowed on {path}")
        raise NotFound(f"No such endpoint: {method} {path}")

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        kind = scope["type"]
        if kind == "http":
            req = Request(scope, receive, send)
            try:
                handler = self._route(scope["method"], scope["path"], req)
                response = await handler(self.gw, req)
            except FareboxError as e:
                response = self._error(scope["path"], e)
            except Exception:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                response = self._error(scope["path"], InternalError("Internal error"))
            if response is not None:
                await send_response(send, response)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _error(self, path: str, error: FareboxError) -> Response:
        for prefix, render in self.error_shapes:
            if path == prefix or path.startswith(prefix + "/"):
                return render(error)
        return error_response(error)

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gw.start()
                except Exception as e:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gw.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _MethodNotAllowed(FareboxError):
    status = 405
    error_type = "invalid_request"
