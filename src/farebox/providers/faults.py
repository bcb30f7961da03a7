"""Upstream errors, whatever their dialect, as one ProviderError with OpenRouter's
`error_type`, and the one decision whether routing may try another endpoint.

Each dialect only reads its own error body into a Fault (what kind of error, the
provider's own code and message); the mapping from kind to our status and failover is
here, once, so all dialects agree on what is retryable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farebox.errors import ProviderError

# error_type -> (status we answer, may another endpoint be tried).
# The caller's own mistakes (a bad parameter, a prompt too long, a refused prompt) fail
# the same way everywhere, so they are not retried. Everything that is about the
# provider (its capacity, its health, the operator's account with it) is.
_KINDS: dict[str, tuple[int, bool]] = {
    "invalid_request": (400, False),
    "invalid_prompt": (400, False),
    "context_length_exceeded": (400, False),
    "max_tokens_exceeded": (400, False),
    "token_limit_exceeded": (400, False),
    "string_too_long": (400, False),
    "content_policy_violation": (400, False),
    "refusal": (400, False),
    "invalid_image": (400, False),
    "image_too_large": (400, False),
    "unsupported_image_format": (400, False),
    "image_download_failed": (400, False),
    "not_found": (404, False),
    "payload_too_large": (413, False),
    "unprocessable": (422, False),
    "rate_limit_exceeded": (429, True),
    # The operator's credentials or account with the provider are at fault, not the
    # client's key: another provider may well serve the request.
    "authentication": (502, True),
    "permission_denied": (502, True),
    "payment_required": (502, True),
    "provider_overloaded": (503, True),
    "provider_unavailable": (502, True),
    "timeout": (504, True),
}

_MESSAGES = {
    "authentication": "{name} rejected the gateway's API key for it",
    "permission_denied": "{name} refused the gateway's account access to this model",
    "payment_required": "The gateway's account with {name} is out of credit",
    "provider_overloaded": "{name} is overloaded",
    "rate_limit_exceeded": "{name} is rate limiting the gateway",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """What a dialect reads from an upstream error: OpenRouter's error_type for it, the
    provider's own error code (`provider_code`) and the provider's message."""

    error_type: str
    code: str | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        assert self.error_type in _KINDS, self.error_type


def by_status(status: int) -> str:
    """The error_type an HTTP status implies when the body says nothing more."""
    if status in (400, 422):
        return "invalid_request" if status == 400 else "unprocessable"
    return {401: "authentication", 402: "payment_required", 403: "permission_denied", 404: "not_found",
            408: "timeout", 413: "payload_too_large", 429: "rate_limit_exceeded", 503: "provider_overloaded",
            529: "provider_overloaded", 504: "timeout"}.get(status, "provider_unavailable")


def provider_error(provider_name: str, fault: Fault, raw: Any, headers: dict[str, str] | None = None) -> ProviderError:
    """The error a failed attempt raises. `raw` is the upstream body as received."""
    status, failover = _KINDS[fault.error_type]
    template = _MESSAGES.get(fault.error_type)
    if template is not None:
        message = template.format(name=provider_name)
    elif status < 500 and fault.message:
        # The provider's words tell the client what to fix in its request.
        message = f"Provider returned error: {fault.message}"
    else:
        message = "Provider returned error"
    error = ProviderError(message, provider_name=provider_name, raw=raw, status=status, failover=failover,
                          error_type=fault.error_type, headers=headers)
    if fault.code is not None:
        error.metadata["provider_code"] = fault.code
    return error
