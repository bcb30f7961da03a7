"""The provider protocol and the neutral types every dialect translates to and from.

The neutral request and reply are OpenAI Chat Completions shapes (plain dicts), because
that is the wire format our clients speak: the OpenAI dialect then needs almost no
translation, and the others translate at their edge. Providers know nothing of money,
keys or routing; they report usage and raise typed errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from farebox.catalog.model import Endpoint
from farebox.ledger.pricing import Usage

# Fields that are OpenRouter's or ours, never a provider's.
GATEWAY_FIELDS = frozenset({
    "models", "provider", "route", "transforms", "plugins", "usage", "session_id", "debug", "trace",
    "preset", "include_reasoning", "reasoning",
})

FINISH_REASONS = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
    "function_call": "tool_calls", "error": "error", "eos": "stop", "end_turn": "stop",
    "max_tokens": "length", "stop_sequence": "stop", "tool_use": "tool_calls", "refusal": "content_filter",
}


def normalize_finish(native: str | None) -> str | None:
    """OpenRouter normalizes finish reasons to stop|length|tool_calls|content_filter|error."""
    if native is None or native == "":
        return None
    return FINISH_REASONS.get(native, "stop")


# The OpenAI APIs a request can be for. Chat is the neutral form every dialect speaks;
# the legacy text completions and embeddings exist only where the upstream serves them.
APIS = ("chat", "completion", "embedding")


@dataclass(slots=True)
class Call:
    endpoint: Endpoint
    body: dict[str, Any]       # the neutral (OpenAI-shaped) request
    credential: str            # "" when the provider needs none
    user_tag: str | None       # stable, hashed end-user id for the provider's abuse checks
    api: str = "chat"          # one of APIS
    budget_s: float | None = None  # seconds this attempt may wait for its first byte (the request's budget left)
    first_byte_s: float | None = None  # a stream's bound until its first token (UpstreamStream.started)


@dataclass(slots=True)
class Reply:
    body: dict[str, Any]       # an OpenAI chat.completion object
    usage: Usage | None
    upstream_id: str | None


class UpstreamStream(Protocol):
    """An open stream of OpenAI-shaped chunks from one upstream attempt."""

    upstream_id: str | None
    usage: Usage | None        # set once the upstream reports usage

    async def next(self) -> dict[str, Any] | None:
        """The next chunk, or None at the end of the stream. Raises ProviderError or
        UpstreamTimeout when the upstream fails."""
        ...

    def started(self) -> None:
        """The first token arrived: the attempt's first-byte bound no longer applies."""
        ...

    def close(self) -> None:
        """Abort: drop the upstream connection (used when the client went away)."""
        ...


class Dialect(Protocol):
    """One upstream wire format. `complete` returns an OpenAI chat.completion body and
    `open_stream` yields OpenAI chat.completion.chunk dicts, whatever the provider speaks.
    A dialect that translates sets each choice's `finish_reason` to the normalized value
    (stop|length|tool_calls|content_filter|error) and `native_finish_reason` to the
    provider's own; errors are raised as ProviderError via `faults.provider_error`.
    A dialect that serves more than chat lists them in `apis` (see APIS)."""

    async def complete(self, call: Call) -> Reply: ...

    async def open_stream(self, call: Call) -> UpstreamStream: ...


def usage_from_openai(raw: Any) -> Usage | None:
    """Parse an OpenAI `usage` object; None when it is absent or malformed."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not is_count(prompt) or not is_count(completion):
        return None
    pd = raw.get("prompt_tokens_details") or {}
    cd = raw.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=count(pd.get("cached_tokens")),
        cache_write_tokens=count(pd.get("cache_write_tokens")),
        reasoning_tokens=count(cd.get("reasoning_tokens")),
    )


def is_count(value: Any) -> bool:
    """A token count as a provider sends one: an int of at least zero (JSON `true` is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def count(value: Any) -> int:
    """An optional count: `value` when it is one, else 0 (absent or malformed)."""
    return value if is_count(value) else 0
