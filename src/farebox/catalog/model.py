"""Catalog types: providers, models and their endpoints, with exact prices.

A model (`author/slug`) is served by one or more endpoints; each endpoint is one
provider's offer of it, with its own upstream model id, prices and limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from farebox.money import price_text

DIALECTS = ("openai", "anthropic", "gemini")
QUANTIZATIONS = (
    "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp6", "fp8", "mxfp8", "fp16", "bf16", "fp32", "unknown",
)
SUPPORTED_PARAMETERS = (
    "temperature", "top_p", "top_k", "min_p", "top_a", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "max_tokens", "max_completion_tokens", "logit_bias", "logprobs",
    "top_logprobs", "prediction", "seed", "response_format", "structured_outputs", "stop", "tools",
    "tool_choice", "parallel_tool_calls", "include_reasoning", "reasoning", "reasoning_effort",
    "web_search_options", "verbosity",
)
PRICE_KEYS = (
    "prompt", "completion", "request", "image", "input_cache_read", "input_cache_write", "internal_reasoning",
)
MODALITIES = ("text", "image", "file", "audio", "video", "embeddings")


@dataclass(frozen=True, slots=True)
class Pricing:
    """Atto-dollars per unit. `None` for an optional price means "not priced
    separately": cache reads and writes then cost the prompt price and reasoning tokens
    the completion price."""

    prompt: int
    completion: int
    request: int = 0
    image: int = 0
    input_cache_read: int | None = None
    input_cache_write: int | None = None
    internal_reasoning: int | None = None

    @property
    def is_free(self) -> bool:
        return not any(getattr(self, k) for k in PRICE_KEYS)

    @property
    def cache_read(self) -> int:
        return self.prompt if self.input_cache_read is None else self.input_cache_read

    @property
    def cache_write(self) -> int:
        return self.prompt if self.input_cache_write is None else self.input_cache_write

    @property
    def reasoning(self) -> int:
        return self.completion if self.internal_reasoning is None else self.internal_reasoning

    def wire(self) -> dict[str, str]:
        """Prices as /models shows them: decimal strings, USD per unit."""
        out = {"prompt": price_text(self.prompt), "completion": price_text(self.completion),
               "request": price_text(self.request), "image": price_text(self.image)}
        for key in ("input_cache_read", "input_cache_write", "internal_reasoning"):
            value = getattr(self, key)
            if value is not None:
                out[key] = price_text(value)
        return out


@dataclass(frozen=True, slots=True)
class Provider:
    slug: str
    name: str
    dialect: str
    base_url: str
    api_key: str  # a reference: "env:NAME", "file:/path" or "none"
    trains_on_prompts: bool
    retains_prompts: bool
    options: dict[str, Any] = field(default_factory=dict)
    http2: bool = False  # reach it over HTTP/2: many requests share a connection (providers/h2client.py)

    @property
    def zdr(self) -> bool:
        return not self.retains_prompts


@dataclass(frozen=True, slots=True)
class Endpoint:
    model_id: str
    provider: Provider
    upstream_model: str
    context_length: int
    max_completion_tokens: int
    pricing: Pricing
    quantization: str
    supported_parameters: frozenset[str]
    id: str = field(init=False)  # provider slug / upstream model; computed once, read on every request

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.provider.slug}/{self.upstream_model}")


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    description: str
    created: int
    context_length: int
    input_modalities: tuple[str, ...]
    output_modalities: tuple[str, ...]
    tokenizer: str
    instruct_type: str | None
    hugging_face_id: str
    endpoints: tuple[Endpoint, ...]
    default_parameters: dict[str, Any] = field(default_factory=dict)  # applied when the request omits them

    @property
    def modality(self) -> str:
        return "+".join(self.input_modalities) + "->" + "+".join(self.output_modalities)

    @property
    def canonical_slug(self) -> str:
        return self.id


@dataclass(slots=True)
class Catalog:
    providers: dict[str, Provider]
    models: dict[str, Model]
    # provider slug -> resolved secret ("" for providers that need none); absent = no key.
    credentials: dict[str, str] = field(default_factory=dict)

    def model(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def credential(self, provider: Provider) -> str | None:
        return self.credentials.get(provider.slug)
