"""What a request may cost before it runs (the hold) and what it did cost (the charge).

Both are exact integer arithmetic in atto-dollars, rounded up once to nano-dollars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from farebox.catalog.model import Pricing
from farebox.money import round_up_to_nanos


@dataclass(slots=True)  # a value, never changed; not frozen: docs/architecture.md
class PromptSize:
    """Measured once per request from its messages."""

    text_bytes: int      # UTF-8 bytes of every text the provider will tokenize
    messages: int
    images: int

    def bound(self, request_tokens: int, message_tokens: int, image_tokens: int) -> int:
        """Prompt tokens the provider can bill at most. Byte-level BPE tokenizers never
        make more tokens than bytes, and the allowances cover framing and images, so this
        never undercounts."""
        return self.text_bytes + request_tokens + self.messages * message_tokens + self.images * image_tokens

    def estimate(self) -> int:
        """A realistic count (about four bytes a token) for when an upstream reports none."""
        return 3 + -(-self.text_bytes // 4) + 4 * self.messages + 85 * self.images


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if value is None:
        return 0
    # Structured values (tool calls, tool schemas) reach the provider as JSON text.
    return len(orjson.dumps(value))


def measure_prompt(body: dict[str, Any]) -> PromptSize:
    text = images = 0
    messages = body.get("messages") or ()
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            text += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    text += _text_bytes(part.get("text"))
                elif kind == "image_url":
                    images += 1
                elif kind in ("input_audio", "file", "video_url", "video"):
                    # Media the provider tokenizes itself: count it like an image, the
                    # largest per-item allowance we have, rather than its encoded bytes.
                    images += 1
                elif part is not None:
                    text += _text_bytes(part)
        for key in ("name", "tool_calls", "reasoning", "reasoning_content", "tool_call_id"):
            if key in message:
                text += _text_bytes(message[key])
    for key in ("tools", "response_format", "functions", "prediction"):
        if key in body:
            text += _text_bytes(body[key])
    return PromptSize(text_bytes=text, messages=len(messages), images=images)


def measure_inputs(inputs: list[Any]) -> PromptSize:
    """The size of raw prompts (legacy completions, embeddings): strings are measured in
    bytes; a token array is exactly its length in tokens, which the bytes bound covers."""
    text = 0
    for item in inputs:
        text += len(item.encode()) if isinstance(item, str) else len(item)
    return PromptSize(text_bytes=text, messages=len(inputs), images=0)


def max_cost(pricing: Pricing, prompt_tokens: int, images: int, output_tokens: int) -> int:
    """The most a request can cost on an endpoint: every prompt token at the dearest input
    price and every output token at the dearest output price."""
    prompt_price = max(pricing.prompt, pricing.cache_read, pricing.cache_write)
    output_price = max(pricing.completion, pricing.reasoning)
    attos = (prompt_tokens * prompt_price + output_tokens * output_price
             + pricing.request + images * pricing.image)
    return round_up_to_nanos(attos)


def affordable_output(pricing: Pricing, prompt_tokens: int, images: int, available: int) -> int:
    """How many output tokens `available` nano-dollars buy after the prompt: the M of
    "You requested up to N tokens, but can only afford M"."""
    fixed = max_cost(pricing, prompt_tokens, images, 0)
    output_price = max(pricing.completion, pricing.reasoning)
    if available <= fixed:
        return 0
    if output_price == 0:
        return 2**31
    return (available - fixed) * 10**9 // output_price


@dataclass(slots=True)
class Usage:
    """Token counts in OpenAI's convention: prompt_tokens includes cached reads and cache
    writes; completion_tokens includes reasoning tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    estimated: bool = False


@dataclass(slots=True)  # a value, never changed; not frozen: docs/architecture.md
class Cost:
    """A charge's line items in atto-dollars and its total in nano-dollars."""

    prompt: int = 0
    cache_read: int = 0
    cache_write: int = 0
    completion: int = 0
    reasoning: int = 0
    request: int = 0
    image: int = 0
    cache_discount: int = 0  # atto-dollars saved by cache reads minus paid extra for writes
    logging_discount: int = 0  # atto-dollars off for organizations that opted in to prompt logging
    total: int = 0           # nano-dollars, rounded up once

    @property
    def listed(self) -> int:
        """The list price of the usage in nano-dollars, before any discount (rounded up)."""
        return self.total if not self.logging_discount else round_up_to_nanos(
            self.prompt + self.cache_read + self.cache_write + self.completion + self.reasoning + self.request
            + self.image)

    def items(self) -> dict[str, int]:
        items = {k: getattr(self, k) for k in
                 ("prompt", "cache_read", "cache_write", "completion", "reasoning", "request", "image")}
        if self.logging_discount:
            items["logging_discount"] = -self.logging_discount   # a line item of its own, negative
        return items


FREE = Cost()


def is_insured(usage: Usage, finish_reason: str | None) -> bool:
    """OpenRouter's zero-completion insurance: nothing generated means nothing billed."""
    return usage.completion_tokens == 0 and finish_reason in (None, "", "error")


def cost_of(pricing: Pricing, usage: Usage, discount_bps: int = 0) -> Cost:
    """The cost of `usage` at `pricing`, less `discount_bps` basis points of it (the prompt
    logging discount): exact in atto-dollars, the discount rounded down, the total rounded up
    once to a nano-dollar."""
    assert 0 <= discount_bps <= 10_000
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    uncached = usage.prompt_tokens - cached - written
    reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
    items = {
        "prompt": uncached * pricing.prompt,
        "cache_read": cached * pricing.cache_read,
        "cache_write": written * pricing.cache_write,
        "completion": (usage.completion_tokens - reasoning) * pricing.completion,
        "reasoning": reasoning * pricing.reasoning,
        "request": pricing.request,
        "image": usage.images * pricing.image,
    }
    discount = cached * (pricing.prompt - pricing.cache_read) - written * (pricing.cache_write - pricing.prompt)
    gross = sum(items.values())
    off = gross * discount_bps // 10_000
    return Cost(**items, cache_discount=discount, logging_discount=off, total=round_up_to_nanos(gross - off))


def estimate_text_tokens(text: str) -> int:
    """About four bytes a token: only for upstreams that report no usage."""
    return -(-len(text.encode()) // 4)
