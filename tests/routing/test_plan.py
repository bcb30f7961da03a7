"""The planner: filters with explained exclusions, OpenRouter's 1/price² load balancing,
provider preferences, variants, model fallbacks and stickiness. Pure: a seeded RNG, a
FakeClock-driven Health and small catalogs."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from farebox.catalog.load import parse_layers
from farebox.catalog.model import Catalog
from farebox.clock import FakeClock
from farebox.errors import BadRequest, NotFound
from farebox.routing.health import Health
from farebox.routing.plan import Need, plan
from farebox.routing.preferences import parse_preferences


def provider(slug: str, name: str, *, trains: bool = False, retains: bool = False) -> str:
    return f'''
[providers.{slug}]
name = "{name}"
dialect = "openai"
base_url = "http://{slug}/v1"
api_key = "none"
trains_on_prompts = {str(trains).lower()}
retains_prompts = {str(retains).lower()}
'''


def endpoint(slug: str, prompt: str, completion: str, *, context: int = 100_000, max_out: int = 8000,
             quant: str = "fp8", params: str = '["max_tokens", "tools", "temperature"]', extra: str = "") -> str:
    return f'''
[[models.endpoints]]
provider = "{slug}"
model = "m-{slug}"
context_length = {context}
max_completion_tokens = {max_out}
quantization = "{quant}"
supported_parameters = {params}
pricing = {{ prompt = "{prompt}", completion = "{completion}"{extra} }}
'''


# A costs $1/M, B $2/M and C $3/M (prompt + completion): OpenRouter's worked example.
CATALOG = (
    provider("a", "Alpha") + provider("b", "Beta", retains=True) + provider("c", "Gamma", trains=True, retains=True)
    + provider("d", "Delta")
    + '''
[[models]]
id = "x/model"
name = "X"
context_length = 100000
'''
    + endpoint("a", "0.0000005", "0.0000005", context=8000, quant="int8")
    + endpoint("b", "0.000001", "0.000001", params='["max_tokens", "temperature"]')
    + endpoint("c", "0.0000015", "0.0000015", quant="bf16", extra=', input_cache_read = "0.0000001"')
    + '''
[[models]]
id = "x/model:free"
name = "X (free)"
context_length = 100000
''' + endpoint("d", "0", "0") + '''
[[models]]
id = "y/other"
name = "Y"
context_length = 100000
''' + endpoint("d", "0.0000002", "0.0000002") + endpoint("a", "0.000004", "0.000004")
    + '''
[[models]]
id = "w/private"
name = "W: only providers that retain prompts"
context_length = 100000
''' + endpoint("b", "0.000001", "0.000001") + endpoint("c", "0.0000015", "0.0000015")
    + '''
[[models]]
id = "z/mixed"
name = "Z: one free endpoint, one paid"
context_length = 100000
''' + endpoint("d", "0", "0") + endpoint("b", "0.000001", "0.000001")
)

NEED = Need(prompt_tokens=100, max_tokens=None)


@pytest.fixture
def catalog() -> Catalog:
    providers, models = parse_layers([("test", CATALOG)])
    return Catalog(providers, models)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(clock)


def slugs(route) -> list[str]:
    return [e.provider.slug for e in route.endpoints]


def route(catalog, models=("x/model",), need=NEED, provider=None, seed=1, **kw):
    return plan(catalog, list(models), need, prefs=parse_preferences(provider), rng=random.Random(seed),
                attempts_max=kw.pop("attempts_max", 10), **kw)


# ---------------------------------------------------------------- load balancing


def test_first_choice_is_weighted_by_inverse_square_price(catalog):
    """Weights 1 : 1/4 : 1/9, i.e. 36/49, 9/49, 4/49 of first picks."""
    rng = random.Random(7)
    n = 20_000
    firsts = Counter(plan(catalog, ["x/model"], NEED, rng=rng).endpoints[0].provider.slug for _ in range(n))
    expected = {"a": 36 / 49, "b": 9 / 49, "c": 4 / 49}
    for slug, share in expected.items():
        # Four standard deviations of a binomial share at n = 20,000 is under 0.013.
        assert abs(firsts[slug] / n - share) < 0.013, (slug, firsts)


def test_after_the_first_pick_the_rest_follow_cheapest_first(catalog):
    for seed in range(50):
        order = slugs(route(catalog, seed=seed))
        rest = [s for s in ["a", "b", "c"] if s != order[0]]
        assert order[1:] == rest


def test_unstable_endpoints_go_last(catalog, health):
    # B failed recently (below the outage threshold): OpenRouter's example, A then C then B.
    health.record("b/m-b", "error")
    for seed in range(50):
        order = slugs(route(catalog, health=health, seed=seed))
        assert order[-1] == "b" and set(order[:2]) == {"a", "c"}


def test_an_endpoint_in_outage_is_excluded_and_probed_after_the_cool_down(catalog, health, clock):
    for _ in range(3):
        health.record("a/m-a", "error")
    r = route(catalog, health=health)
    assert "a" not in slugs(r)
    assert [(x.endpoint.provider.slug, x.reason) for x in r.excluded] == [("a", "outage")]
    clock.advance(31)
    assert slugs(route(catalog, health=health))[0] == "a"     # the probe, tried first
    assert "a" not in slugs(route(catalog, health=health))    # only one per cool-down
    health.record("a/m-a", "ok")                               # the probe succeeded
    assert "a" in slugs(route(catalog, health=health))


def test_free_endpoints_win_and_weights_never_divide_by_zero(catalog):
    assert {slugs(route(catalog, ["z/mixed"], seed=s))[0] for s in range(20)} == {"d"}


# ---------------------------------------------------------------- provider preferences


def test_order_is_followed_then_the_rest_as_fallbacks(catalog):
    assert slugs(route(catalog, provider={"order": ["Gamma", "a"]})) == ["c", "a", "b"]
    assert slugs(route(catalog, provider={"order": ["c", "a"], "allow_fallbacks": False})) == ["c", "a"]


def test_order_matching_nothing_without_fallbacks_is_a_clear_404(catalog):
    with pytest.raises(NotFound, match="manual order: nobody") as caught:
        route(catalog, provider={"order": ["nobody"], "allow_fallbacks": False})
    assert caught.value.metadata["availability"]["excluded_by"] == ["allowed_providers"]


def test_no_fallbacks_without_order_uses_only_the_primary(catalog):
    assert len(route(catalog, provider={"allow_fallbacks": False}).endpoints) == 1


def test_only_and_ignore_match_slugs_and_names(catalog):
    assert set(slugs(route(catalog, provider={"only": ["alpha", "b"]}))) == {"a", "b"}
    assert set(slugs(route(catalog, provider={"ignore": ["Beta"]}))) == {"a", "c"}


def test_data_collection_deny_and_zdr(catalog):
    assert set(slugs(route(catalog, provider={"data_collection": "deny"}))) == {"a", "b"}
    assert slugs(route(catalog, provider={"zdr": True})) == ["a"]
    with pytest.raises(NotFound, match="Beta: data_policy:zdr") as caught:
        route(catalog, ["x/model"], provider={"zdr": True, "ignore": ["a"]})
    assert caught.value.metadata["availability"]["code"] == "constraint_filtered"
    assert caught.value.metadata["availability"]["excluded_by"] == ["data_policy:zdr", "ignored_providers"]


def test_only_data_policy_exclusions_are_privacy_restricted(catalog):
    with pytest.raises(NotFound, match="No endpoints found matching your data policy") as caught:
        route(catalog, ["w/private"], provider={"zdr": True})
    assert caught.value.metadata["availability"]["code"] == "privacy_restricted"


def test_quantizations(catalog):
    assert slugs(route(catalog, provider={"quantizations": ["bf16", "int8"], "sort": "price"})) == ["a", "c"]


def test_max_price_is_a_hard_filter_in_dollars_per_million(catalog):
    assert set(slugs(route(catalog, provider={"max_price": {"prompt": 1}}))) == {"a", "b"}
    with pytest.raises(NotFound) as caught:
        route(catalog, provider={"max_price": {"completion": "0.1"}})
    error = caught.value
    assert error.metadata["availability"]["code"] == "constraint_filtered"
    assert error.metadata["availability"]["excluded_by"] == ["max_price"]
    assert {x["endpoint"] for x in error.metadata["excluded"]} == {"a/m-a", "b/m-b", "c/m-c"}
    assert "completion price $0.5/M tokens > max_price $0.1/M tokens" in error.message


def test_require_parameters(catalog):
    need = Need(prompt_tokens=100, max_tokens=None, parameters=frozenset({"tools", "max_tokens"}))
    assert set(slugs(route(catalog, need=need, provider={"require_parameters": True}))) == {"a", "c"}
    assert set(slugs(route(catalog, need=need))) == {"a", "b", "c"}


def test_tools_and_response_format_are_soft_filters(catalog):
    with_tools = Need(prompt_tokens=100, max_tokens=None, tools=True)
    assert set(slugs(route(catalog, need=with_tools))) == {"a", "c"}  # b lacks tools
    with_format = Need(prompt_tokens=100, max_tokens=None, response_format=True)
    assert set(slugs(route(catalog, need=with_format))) == {"a", "b", "c"}  # nobody has it: ignored


@pytest.mark.parametrize(("sort", "expected"), [("price", ["a", "b", "c"])])
def test_sort_by_price_is_deterministic(catalog, sort, expected):
    assert {tuple(slugs(route(catalog, provider={"sort": sort}, seed=s))) for s in range(10)} == {tuple(expected)}


def test_sort_by_throughput_and_latency_use_health(catalog, health):
    health.record("a/m-a", "ok", ttft_s=0.9, tokens_per_s=20)
    health.record("b/m-b", "ok", ttft_s=0.1, tokens_per_s=200)
    health.record("c/m-c", "ok", ttft_s=0.5, tokens_per_s=90)
    assert slugs(route(catalog, health=health, provider={"sort": "throughput"})) == ["b", "c", "a"]
    assert slugs(route(catalog, health=health, provider={"sort": {"by": "latency"}})) == ["b", "c", "a"]


def test_unmeasured_endpoints_sort_after_measured_ones(catalog, health):
    health.record("c/m-c", "ok", ttft_s=0.5, tokens_per_s=90)
    assert slugs(route(catalog, health=health, provider={"sort": "throughput"})) == ["c", "a", "b"]


def test_partition_none_sorts_across_models(catalog):
    by_model = slugs(route(catalog, ["x/model", "y/other"], provider={"sort": "price"}))
    assert by_model == ["a", "b", "c", "d", "a"]
    merged = route(catalog, ["x/model", "y/other"], provider={"sort": {"by": "price", "partition": "none"}})
    assert [(e.model_id, e.provider.slug) for e in merged.endpoints] == [
        ("y/other", "d"), ("x/model", "a"), ("x/model", "b"), ("x/model", "c"), ("y/other", "a")]


def test_soft_throughput_and_latency_preferences_move_misses_to_the_end(catalog, health):
    health.record("a/m-a", "ok", ttft_s=2.0, tokens_per_s=10)
    for seed in range(30):
        assert slugs(route(catalog, health=health, provider={"preferred_min_throughput": 50}, seed=seed))[-1] == "a"
        assert slugs(route(catalog, health=health, provider={"preferred_max_latency": 1}, seed=seed))[-1] == "a"
    # A preference nobody misses changes nothing, and a miss never excludes.
    assert set(slugs(route(catalog, health=health, provider={"preferred_min_throughput": {"p90": 5}}))) == {
        "a", "b", "c"}


# ---------------------------------------------------------------- sizes


def test_context_and_max_tokens_exclude_what_cannot_fit(catalog):
    assert set(slugs(route(catalog, need=Need(prompt_tokens=7000, max_tokens=2000)))) == {"b", "c"}
    with pytest.raises(BadRequest) as caught:
        route(catalog, need=Need(prompt_tokens=99_000, max_tokens=2000))
    assert caught.value.error_type == "context_length_exceeded"
    assert "maximum context length is 100000 tokens" in caught.value.message
    assert "101000" in caught.value.message and "middle-out" in caught.value.message
    with pytest.raises(BadRequest, match="max_tokens is 9000, but the most any endpoint of x/model can produce is 8000"):
        route(catalog, need=Need(prompt_tokens=10, max_tokens=9000))


# ---------------------------------------------------------------- variants, fallbacks, stickiness


def test_floor_and_nitro_variants_sort(catalog, health):
    assert slugs(route(catalog, ["x/model:floor"])) == ["a", "b", "c"]
    health.record("c/m-c", "ok", tokens_per_s=500)
    assert slugs(route(catalog, ["x/model:nitro"], health=health))[0] == "c"


def test_free_variant_static_and_dynamic(catalog):
    assert slugs(route(catalog, ["x/model:free"])) == ["d"]          # a catalog model of its own
    assert slugs(route(catalog, ["z/mixed:free"])) == ["d"]          # only the free endpoints
    with pytest.raises(NotFound) as caught:
        route(catalog, ["y/other:free"])
    assert caught.value.metadata["availability"]["excluded_by"] == ["free_only"]


def test_variants_stack(catalog):
    assert slugs(route(catalog, ["z/mixed:free:floor"])) == ["d"]


def test_unknown_model_is_404(catalog):
    with pytest.raises(NotFound) as caught:
        route(catalog, ["nope/none"])
    assert caught.value.metadata["availability"]["code"] == "model_not_found"


def test_model_fallbacks_follow_every_endpoint_of_the_first_model(catalog):
    r = route(catalog, ["x/model", "y/other"])
    assert [e.model_id for e in r.endpoints] == ["x/model"] * 3 + ["y/other"] * 2


def test_a_model_with_nothing_eligible_falls_back_to_the_next(catalog):
    r = route(catalog, ["x/model", "y/other"], provider={"only": ["delta"]})
    assert [(e.model_id, e.provider.slug) for e in r.endpoints] == [("y/other", "d")]


def test_sticky_endpoint_goes_first(catalog):
    for seed in range(20):
        assert slugs(route(catalog, sticky="c/m-c", seed=seed))[0] == "c"


def test_attempts_are_capped(catalog):
    assert len(route(catalog, ["x/model", "y/other"], attempts_max=2).endpoints) == 2


def test_unroutable_endpoints_are_explained(catalog):
    with pytest.raises(NotFound) as caught:
        route(catalog, routable=lambda e: "no API key configured (env:X)")
    error = caught.value
    assert error.metadata["availability"]["code"] == "no_endpoints"
    assert "Alpha: unroutable (no API key configured (env:X))" in error.message
