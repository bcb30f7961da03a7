"""One error hierarchy. Each class knows its HTTP status, its OpenRouter error type and
whether the relay may fail over to another endpoint when an attempt raises it.

Errors are raised where they happen and rendered in exactly one place
(`farebox.api.errors`), in OpenRouter's `{"error": {code, message, metadata}}` shape.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FareboxError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server"
    # May the relay try the next endpoint after an attempt failed with this error?
    failover: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        user_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.headers: dict[str, str] = dict(headers or {})
        # OpenRouter puts the caller's id at the top level of some bodies (its rate-limit 429s).
        self.user_id = user_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class BadRequest(FareboxError):
    status = 400
    error_type = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        if field is not None:
            self.metadata.setdefault("field", field)


class Unauthorized(FareboxError):
    status = 401
    error_type = "authentication"


class InsufficientCredits(FareboxError):
    status = 402
    error_type = "payment_required"


class Forbidden(FareboxError):
    status = 403
    error_type = "permission_denied"


class NotFound(FareboxError):
    status = 404
    error_type = "not_found"


class Conflict(FareboxError):
    status = 409
    error_type = "conflict"


class PayloadTooLarge(FareboxError):
    status = 413
    error_type = "payload_too_large"


class RateLimited(FareboxError):
    status = 429
    error_type = "rate_limit_exceeded"


class PaymentRefused(FareboxError):
    """The payment rail refused (a refund Stripe declined) or is not configured."""

    status = 402
    error_type = "payment_required"


class ServiceUnavailable(FareboxError):
    """A service we depend on other than a provider (Stripe) cannot be reached."""

    status = 503
    error_type = "service_unavailable"


class InternalError(FareboxError):
    status = 500
    error_type = "server"


class ProviderError(FareboxError):
    """An upstream answered with an error or something that is not a valid reply.

    `status` is per instance: an upstream client error (400, 404, 413, 422) is the
    caller's fault and keeps its status; rate limits stay 429; everything else is 502.
    """

    error_type = "provider_unavailable"

    def __init__(
        self,
        message: str,
        *,
        provider_name: str,
        raw: Any = None,
        status: int = 502,
        failover: bool = True,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata={"provider_name": provider_name, "raw": raw}, headers=headers)
        self.status = status  # type: ignore[misc]
        self.failover = failover  # type: ignore[misc]
        if error_type is not None:
            self.error_type = error_type  # type: ignore[misc]


class UpstreamTimeout(FareboxError):
    status = 504
    error_type = "timeout"
    failover = True

    def __init__(self, message: str, *, provider_name: str) -> None:
        super().__init__(message, metadata={"provider_name": provider_name})


class ConfigError(Exception):
    """A setting or catalog entry is invalid. The message names the offending path."""
