"""Load and validate catalogs. Every error names the offending path, e.g.
`catalog.toml: models[3].endpoints[0].pricing.prompt: not a decimal number`.

A catalog file has `[providers.<slug>]` tables and `[[models]]` entries, each with one
or more `[[models.endpoints]]`; docs/catalog.md describes every field. Files are layered:
a later file's provider table merges field by field onto an earlier one of the same slug
(so an operator can change just `base_url` or `api_key`), and a later model replaces an
earlier model of the same id whole.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from farebox.catalog import toml
from farebox.catalog.model import (
    DIALECTS,
    MODALITIES,
    PRICE_KEYS,
    QUANTIZATIONS,
    SUPPORTED_PARAMETERS,
    Catalog,
    Endpoint,
    Model,
    Pricing,
    Provider,
)
from farebox.catalog.options import OptionError, check_options
from farebox.errors import ConfigError
from farebox.money import MoneyFormatError, parse_price

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(:[a-z0-9-]+)*$")
_PROVIDER_KEYS = {"name", "dialect", "base_url", "api_key", "trains_on_prompts", "retains_prompts", "options", "http2"}
_MODEL_KEYS = {
    "id", "name", "description", "created", "context_length", "input_modalities", "output_modalities",
    "tokenizer", "instruct_type", "hugging_face_id", "endpoints", "default_parameters",
}
_ENDPOINT_KEYS = {
    "provider", "model", "context_length", "max_completion_tokens", "pricing", "quantization",
    "supported_parameters",
}


def builtin_text() -> str:
    return resources.files("farebox.catalog").joinpath("builtin.toml").read_text()


class _Reader:
    """Typed access to one table, with errors that name the path."""

    def __init__(self, source: str, path: str, table: Any, allowed: set[str]) -> None:
        self.source, self.path = source, path
        if not isinstance(table, dict):
            self.fail("", "expected a table")
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], "unknown field")
        self.table = table

    def fail(self, key: str, message: str) -> None:
        where = f"{self.path}.{key}" if key and self.path else (key or self.path)
        raise ConfigError(f"{self.source}: {where}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, required: bool = False) -> Any:
        if key not in self.table:
            if required or default is ...:
                self.fail(key, "required field is missing")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind in (int, (int,)):
            self.fail(key, "expected an integer")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(key, f"expected {names}, got {type(value).__name__}")
        return value

    def positive(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if value is not None and value <= 0:
            self.fail(key, "must be a positive integer")
        return value

    def strings(self, key: str, allowed: tuple[str, ...] | None, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", "expected a string")
            if allowed is not None and item not in allowed:
                self.fail(f"{key}[{i}]", f"unknown value {item!r}; expected one of {', '.join(allowed)}")
        return tuple(value)


def _provider(source: str, slug: str, table: Any) -> Provider:
    r = _Reader(source, f"providers.{slug}", table, _PROVIDER_KEYS)
    if not _SLUG.match(slug):
        r.fail("", "provider slugs are lower-case letters, digits, '.', '_' and '-'")
    dialect = r.get("dialect", str, required=True)
    if dialect not in DIALECTS:
        r.fail("dialect", f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    base_url = r.get("base_url", str, required=True)
    if not base_url.startswith(("http://", "https://")):
        r.fail("base_url", "must start with http:// or https://")
    api_key = r.get("api_key", str, required=True)
    reference = api_key.partition(":")[2].strip()
    if api_key != "none" and not (api_key.startswith(("env:", "file:")) and reference):
        r.fail("api_key", "must be 'env:NAME', 'file:/path' or 'none' (secrets never live in the catalog)")
    try:
        options = check_options(dialect, r.get("options", dict, {}))
    except OptionError as e:
        r.fail(f"options.{e.name}", e.message)
    return Provider(
        slug=slug,
        name=r.get("name", str, required=True),
        dialect=dialect,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        trains_on_prompts=r.get("trains_on_prompts", bool, required=True),
        retains_prompts=r.get("retains_prompts", bool, required=True),
        options=options,
        http2=r.get("http2", bool, False),
    )


def _pricing(source: str, path: str, table: Any) -> Pricing:
    r = _Reader(source, path, table, set(PRICE_KEYS))
    prices: dict[str, int | None] = {}
    for key in PRICE_KEYS:
        text = r.get(key, str, None, required=key in ("prompt", "completion"))
        if text is None:
            prices[key] = None
            continue
        try:
            prices[key] = parse_price(text)
        except MoneyFormatError as e:
            r.fail(key, str(e))
    return Pricing(
        prompt=prices["prompt"] or 0,
        completion=prices["completion"] or 0,
        request=prices["request"] or 0,
        image=prices["image"] or 0,
        input_cache_read=prices["input_cache_read"],
        input_cache_write=prices["input_cache_write"],
        internal_reasoning=prices["internal_reasoning"],
    )


def _model(source: str, index: int, table: Any, providers: dict[str, Provider]) -> Model:
    r = _Reader(source, f"models[{index}]", table, _MODEL_KEYS)
    model_id = r.get("id", str, required=True)
    if not _MODEL_ID.match(model_id):
        r.fail("id", f"{model_id!r} is not of the form author/slug[:variant]")
    context = r.positive("context_length")
    output_modalities = r.strings("output_modalities", MODALITIES, ["text"])
    # An embedding model produces no tokens: its endpoints need no output cap.
    embeds = "embeddings" in output_modalities
    raw_endpoints = r.get("endpoints", list, required=True)
    if not raw_endpoints:
        r.fail("endpoints", "a model needs at least one endpoint")
    endpoints = []
    for j, raw in enumerate(raw_endpoints):
        er = _Reader(source, f"models[{index}].endpoints[{j}]", raw, _ENDPOINT_KEYS)
        slug = er.get("provider", str, required=True)
        if slug not in providers:
            er.fail("provider", f"unknown provider {slug!r}")
        max_out = er.positive("max_completion_tokens", 1 if embeds else ...)
        ep_context = er.positive("context_length", context)
        if ep_context > context:
            er.fail("context_length", f"{ep_context} exceeds the model's context length {context}")
        if max_out > ep_context:
            er.fail("max_completion_tokens", f"{max_out} exceeds the context length {ep_context}")
        quant = er.get("quantization", str, "unknown")
        if quant not in QUANTIZATIONS:
            er.fail("quantization", f"unknown value {quant!r}; expected one of {', '.join(QUANTIZATIONS)}")
        endpoints.append(Endpoint(
            model_id=model_id,
            provider=providers[slug],
            upstream_model=er.get("model", str, required=True),
            context_length=ep_context,
            max_completion_tokens=max_out,
            pricing=_pricing(source, f"models[{index}].endpoints[{j}].pricing", er.get("pricing", dict, required=True)),
            quantization=quant,
            supported_parameters=_parameter_set(er.strings("supported_parameters", SUPPORTED_PARAMETERS, [])),
        ))
    ids = [e.id for e in endpoints]
    if len(set(ids)) != len(ids):
        r.fail("endpoints", "two endpoints share a provider and upstream model")
    return Model(
        id=model_id,
        name=r.get("name", str, required=True),
        description=r.get("description", str, ""),
        created=r.get("created", int, 0),
        context_length=context,
        input_modalities=r.strings("input_modalities", MODALITIES, ["text"]),
        output_modalities=output_modalities,
        tokenizer=r.get("tokenizer", str, "Other"),
        instruct_type=r.get("instruct_type", str, None),
        hugging_face_id=r.get("hugging_face_id", str, ""),
        default_parameters=_default_parameters(r),
        endpoints=tuple(endpoints),
    )


@functools.lru_cache(maxsize=1024)
def _parameter_set(names: tuple[str, ...]) -> frozenset[str]:
    """One shared set per distinct list: a large catalog repeats a few lists thousands of
    times, and a set of ten names with its strings takes ~1 KB (issue 7: footprint)."""
    return frozenset(names)


def _default_parameters(r: _Reader) -> dict[str, Any]:
    """Request parameters a model applies when the request omits them: what makes a static
    variant such as `:thinking` (reasoning on by default) differ from its base model."""
    defaults = r.get("default_parameters", dict, {})
    for name in defaults:
        if name not in SUPPORTED_PARAMETERS:
            r.fail(f"default_parameters.{name}", f"unknown parameter; expected one of {', '.join(SUPPORTED_PARAMETERS)}")
    return dict(defaults)


def parse_layers(layers: list[tuple[str, str]]) -> tuple[dict[str, Provider], dict[str, Model]]:
    """Parse (source name, TOML text) layers in order into providers and models."""
    provider_tables: dict[str, dict[str, Any]] = {}
    provider_sources: dict[str, str] = {}  # slug -> the files that defined it, for error messages
    model_tables: dict[str, tuple[str, int, Any]] = {}
    for source, text in layers:
        try:
            data = toml.loads(text)   # tomllib's result and errors, faster (catalog/toml.py)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: {e}") from None
        unknown = sorted(set(data) - {"providers", "models"})
        if unknown:
            raise ConfigError(f"{source}: {unknown[0]}: unknown top-level key (expected providers, models)")
        providers = data.get("providers", {})
        if not isinstance(providers, dict):
            raise ConfigError(f"{source}: providers: expected a table of providers")
        for slug, table in providers.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: providers.{slug}: expected a table")
            provider_tables.setdefault(slug, {}).update(table)
            earlier = provider_sources.get(slug)
            provider_sources[slug] = source if earlier in (None, source) else f"{earlier} + {source}"
        models = data.get("models", [])
        if not isinstance(models, list):
            raise ConfigError(f"{source}: models: expected an array of tables ([[models]])")
        seen: dict[str, int] = {}
        for i, table in enumerate(models):
            model_id = table.get("id") if isinstance(table, dict) else None
            if isinstance(model_id, str):
                if model_id in seen:
                    raise ConfigError(f"{source}: models[{i}].id: {model_id!r} duplicates models[{seen[model_id]}]")
                seen[model_id] = i
            key = model_id if isinstance(model_id, str) else f"\0{source}{i}"
            model_tables[key] = (source, i, table)
    providers_out = {slug: _provider(provider_sources[slug], slug, table) for slug, table in provider_tables.items()}
    models_out: dict[str, Model] = {}
    for source, i, table in model_tables.values():
        model = _model(source, i, table, providers_out)
        models_out[model.id] = model
    return providers_out, models_out


def resolve_credential(provider: Provider, env: Mapping[str, str]) -> str | None:
    """The provider's secret, or None when it has none configured (then it is not routable)."""
    ref = provider.api_key
    if ref == "none":
        return ""
    if ref.startswith("env:"):
        return env.get(ref[4:]) or None
    try:
        return Path(ref[5:]).expanduser().read_text().strip() or None
    except OSError:
        return None


def load_catalog(*, builtin: bool = True, extra_path: str = "", extra_text: str | None = None,
                 env: Mapping[str, str] | None = None) -> Catalog:
    env = os.environ if env is None else env
    layers: list[tuple[str, str]] = []
    if builtin:
        layers.append(("builtin catalog", builtin_text()))
    if extra_path:
        path = Path(extra_path).expanduser()
        try:
            layers.append((str(path), path.read_text()))
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
    if extra_text is not None:
        layers.append(("catalog", extra_text))
    providers, models = parse_layers(layers)
    credentials = {}
    for slug, provider in providers.items():
        secret = resolve_credential(provider, env)
        if secret is not None:
            credentials[slug] = secret
    return Catalog(providers=providers, models=models, credentials=credentials)
