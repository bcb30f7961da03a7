"""The `provider` object: every field, every invalid value (with the field the 400 names),
exact max_price conversion, and provider matching."""

from __future__ import annotations

from typing import Any

import pytest

from farebox.catalog.model import QUANTIZATIONS
from farebox.errors import BadRequest
from farebox.money import parse_price, per_million_to_price
from farebox.routing.preferences import (
    DEFAULT,
    MaxPrice,
    Percentile,
    Preferences,
    matches,
    parse_preferences,
)


def refused(raw: Any) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_preferences(raw)
    assert caught.value.status == 400
    return caught.value


# ---------------------------------------------------------------- defaults and every field


def test_absent_and_empty_give_the_defaults() -> None:
    assert parse_preferences(None) is DEFAULT
    assert parse_preferences({}) == DEFAULT == Preferences(
        order=(), allow_fallbacks=True, require_parameters=False, data_collection="allow", zdr=False, only=(),
        ignore=(), quantizations=(), sort=None, partition="model", preferred_min_throughput=None,
        preferred_max_latency=None, max_price=None)


def test_null_fields_mean_not_given() -> None:
    nulls = {name: None for name in ("order", "allow_fallbacks", "require_parameters", "data_collection", "zdr",
                                     "only", "ignore", "quantizations", "sort", "preferred_min_throughput",
                                     "preferred_max_latency", "max_price", "enforce_distillable_text")}
    assert parse_preferences(nulls) == DEFAULT


def test_every_field() -> None:
    prefs = parse_preferences({
        "order": ["anthropic", "DeepInfra/turbo"],
        "allow_fallbacks": False,
        "require_parameters": True,
        "data_collection": "deny",
        "zdr": True,
        "only": ["openai"],
        "ignore": ["groq", "Mistral"],
        "quantizations": ["fp8", "bf16"],
        "sort": "throughput",
        "preferred_min_throughput": 50,
        "preferred_max_latency": {"p90": 2.5, "p99": 4},
        "max_price": {"prompt": 1, "completion": "2.5", "image": 0.01, "request": "0"},
    })
    assert prefs == Preferences(
        order=("anthropic", "DeepInfra/turbo"), allow_fallbacks=False, require_parameters=True,
        data_collection="deny", zdr=True, only=("openai",), ignore=("groq", "Mistral"),
        quantizations=("fp8", "bf16"), sort="throughput", partition="model",
        preferred_min_throughput=Percentile(p50=50.0), preferred_max_latency=Percentile(p90=2.5, p99=4.0),
        max_price=MaxPrice(prompt=10**12, completion=25 * 10**11, image=10**16, request=0))


def test_every_quantization_is_accepted() -> None:
    assert parse_preferences({"quantizations": list(QUANTIZATIONS)}).quantizations == QUANTIZATIONS


@pytest.mark.parametrize(("sort", "expected"), [
    ("price", ("price", "model")),
    ("latency", ("latency", "model")),
    ({"by": "price"}, ("price", "model")),
    ({"by": "throughput", "partition": "none"}, ("throughput", "none")),
    ({"by": "latency", "partition": "model"}, ("latency", "model")),
    ({"by": "price", "partition": None}, ("price", "model")),
    ({"partition": "none"}, (None, "none")),
])
def test_sort_string_or_object(sort: Any, expected: tuple[str | None, str]) -> None:
    prefs = parse_preferences({"sort": sort})
    assert (prefs.sort, prefs.partition) == expected


def test_percentiles_number_or_object() -> None:
    prefs = parse_preferences({"preferred_min_throughput": {"p50": 10, "p75": 20.5, "p90": 0, "p99": None},
                               "preferred_max_latency": 0.25})
    assert prefs.preferred_min_throughput == Percentile(p50=10.0, p75=20.5, p90=0.0)
    assert prefs.preferred_max_latency == Percentile(p50=0.25)  # seconds, as given
    assert parse_preferences({"preferred_max_latency": {}}).preferred_max_latency is None


def test_ignored_fields_are_accepted_but_validated() -> None:
    assert parse_preferences({"enforce_distillable_text": True, "experimental": {"anything": 1}}) == DEFAULT
    assert refused({"enforce_distillable_text": "yes"}).metadata["field"] == "provider.enforce_distillable_text"
    assert refused({"experimental": 1}).metadata["field"] == "provider.experimental"


# ---------------------------------------------------------------- max_price: exact conversion


def test_max_price_per_million_is_exact() -> None:
    # 0.15 USD per million tokens = 1.5e-7 USD per token = 1.5e11 atto-dollars per token.
    caps = parse_preferences({"max_price": {"prompt": "0.15", "completion": 0.15}}).max_price
    assert caps == MaxPrice(prompt=150_000_000_000, completion=150_000_000_000)
    assert caps.prompt == per_million_to_price("0.15") == parse_price("0.00000015")


@pytest.mark.parametrize("value", ["0.1", "0.3", "1e-3", "123.456789", "0.000000000001", "15", "2.675"])
def test_max_price_agrees_with_the_money_module(value: str) -> None:
    as_string = parse_preferences({"max_price": {"prompt": value}}).max_price
    as_number = parse_preferences({"max_price": {"completion": float(value)}}).max_price
    assert as_string.prompt == as_number.completion == per_million_to_price(value)


def test_max_price_per_unit_for_images_and_requests() -> None:
    caps = parse_preferences({"max_price": {"image": "0.001", "request": 0.02}}).max_price
    assert caps == MaxPrice(image=parse_price("0.001"), request=parse_price("0.02"))
    assert caps.request == 20_000_000_000_000_000


def test_max_price_rounds_sub_atto_caps_down() -> None:
    # 1e-13 USD/M is 0.1 atto per token: the only price at or under it is 0.
    assert parse_preferences({"max_price": {"prompt": "0.0000000000001"}}).max_price == MaxPrice(prompt=0)
    assert parse_preferences({"max_price": {"prompt": "1.0000000000009"}}).max_price == MaxPrice(prompt=10**12)
    assert parse_preferences({"max_price": {"prompt": "1e-999999999"}}).max_price == MaxPrice(prompt=0)


def test_max_price_zero_means_free_only_and_audio_is_ignored() -> None:
    assert parse_preferences({"max_price": {"prompt": 0, "completion": "0"}}).max_price == MaxPrice(0, 0)
    assert parse_preferences({"max_price": {"audio": "5"}}).max_price is None
    assert parse_preferences({"max_price": {}}).max_price is None


# ---------------------------------------------------------------- every invalid value


@pytest.mark.parametrize(("raw", "field", "says"), [
    ([], "provider", "expected an object"),
    ("price", "provider", "expected an object"),
    ({"sortt": "price"}, "provider.sortt", "unknown field"),
    ({"order": "anthropic"}, "provider.order", "array of strings"),
    ({"order": ["anthropic", 3]}, "provider.order[1]", "non-empty string"),
    ({"only": [""]}, "provider.only[0]", "non-empty string"),
    ({"ignore": {"a": 1}}, "provider.ignore", "array of strings"),
    ({"allow_fallbacks": "false"}, "provider.allow_fallbacks", "boolean"),
    ({"require_parameters": 1}, "provider.require_parameters", "boolean"),
    ({"zdr": 0}, "provider.zdr", "boolean"),
    ({"data_collection": "maybe"}, "provider.data_collection", "allow, deny"),
    ({"data_collection": True}, "provider.data_collection", "allow, deny"),
    ({"quantizations": "fp8"}, "provider.quantizations", "array of strings"),
    ({"quantizations": ["fp8", "fp64"]}, "provider.quantizations[1]", "must be one of"),
    ({"sort": "cheapest"}, "provider.sort", "price, throughput, latency"),
    ({"sort": "exacto"}, "provider.sort", "not supported"),
    ({"sort": 1}, "provider.sort", "string or an object"),
    ({"sort": {"by": "exacto"}}, "provider.sort.by", "not supported"),
    ({"sort": {"by": "speed"}}, "provider.sort.by", "price, throughput, latency"),
    ({"sort": {"by": "price", "partition": "all"}}, "provider.sort.partition", "model, none"),
    ({"sort": {"by": "price", "order": "asc"}}, "provider.sort.order", "unknown field"),
    ({"preferred_min_throughput": "fast"}, "provider.preferred_min_throughput", "expected a number"),
    ({"preferred_min_throughput": -1}, "provider.preferred_min_throughput", "at least 0"),
    ({"preferred_min_throughput": True}, "provider.preferred_min_throughput", "expected a number"),
    ({"preferred_min_throughput": float("inf")}, "provider.preferred_min_throughput", "finite"),
    ({"preferred_max_latency": {"p95": 1}}, "provider.preferred_max_latency.p95", "unknown percentile"),
    ({"preferred_max_latency": {"p50": -0.5}}, "provider.preferred_max_latency.p50", "at least 0"),
    ({"preferred_max_latency": {"p99": "1"}}, "provider.preferred_max_latency.p99", "expected a number"),
    ({"max_price": 5}, "provider.max_price", "expected an object"),
    ({"max_price": {"tokens": 1}}, "provider.max_price.tokens", "unknown price"),
    ({"max_price": {"prompt": -1}}, "provider.max_price.prompt", "negative"),
    ({"max_price": {"completion": "-0.5"}}, "provider.max_price.completion", "negative"),
    ({"max_price": {"image": "cheap"}}, "provider.max_price.image", "decimal number"),
    ({"max_price": {"request": "NaN"}}, "provider.max_price.request", "decimal number"),
    ({"max_price": {"prompt": "1_000"}}, "provider.max_price.prompt", "decimal number"),
    ({"max_price": {"prompt": float("inf")}}, "provider.max_price.prompt", "decimal number"),
    ({"max_price": {"prompt": True}}, "provider.max_price.prompt", "number or a numeric string"),
    ({"max_price": {"prompt": [1]}}, "provider.max_price.prompt", "number or a numeric string"),
    ({"max_price": {"prompt": "1e21"}}, "provider.max_price.prompt", "too large"),
    ({"max_price": {"audio": "x"}}, "provider.max_price.audio", "decimal number"),
])
def test_invalid_values_name_their_field(raw: Any, field: str, says: str) -> None:
    error = refused(raw)
    assert error.metadata["field"] == field
    assert says in error.message
    assert error.message.startswith(field + ":")


# ---------------------------------------------------------------- matching providers


@pytest.mark.parametrize(("pattern", "slug", "name", "expected"), [
    ("deepinfra", "deepinfra", "DeepInfra", True),
    ("DEEPINFRA", "deepinfra", "DeepInfra", True),
    ("DeepInfra", "deepinfra", "DeepInfra", True),
    ("deepinfra", "deepinfra/turbo", "DeepInfra Turbo", True),
    ("deepinfra/turbo", "deepinfra/turbo", "DeepInfra Turbo", True),
    ("deepinfra/turbo", "deepinfra", "DeepInfra", False),
    ("deep", "deepinfra", "DeepInfra", False),
    ("deepinfra", "deepinfra-eu", "DeepInfra EU", False),
    ("google ai studio", "google-ai-studio", "Google AI Studio", True),
    ("google", "google-ai-studio", "Google AI Studio", False),
    ("openai", "azure", "Azure OpenAI", False),
])
def test_matches(pattern: str, slug: str, name: str, expected: bool) -> None:
    assert matches(pattern, slug, name) is expected
