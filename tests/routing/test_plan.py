from __future__ import annotations

import pytest

from farebox.catalog.load import parse_layers
from farebox.catalog.model import Catalog
from farebox.catalog.simulated import sim_catalog
from farebox.errors import BadRequest, NotFound
from farebox.routing.plan import plan

EXTRA = """
[providers.cheap]
name = "Cheap"
dialect = "openai"
base_url = "http://cheap/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "sim/multi"
name = "Multi"
context_length = 1000

[[models.endpoints]]
provider = "sim"
model = "a"
max_completion_tokens = 500
pricing = { prompt = "0.000002", completion = "0.000002" }

[[models.endpoints]]
provider = "cheap"
model = "b"
max_completion_tokens = 100
pricing = { prompt = "0.000001", completion = "0.000001" }
"""


@pytest.fixture
def catalog() -> Catalog:
    providers, models = parse_layers([("t", sim_catalog("http://sim/v1") + EXTRA)])
    return Catalog(providers, models)


def ok(endpoint):
    return None


def test_cheapest_first_then_fallback_models(catalog):
    order = plan(catalog, ["sim/multi", "sim/small"], max_tokens=None, routable=ok, attempts_max=5)
    assert [(e.model_id, e.provider.slug) for e in order] == [
        ("sim/multi", "cheap"), ("sim/multi", "sim"), ("sim/small", "sim")]
    assert len(plan(catalog, ["sim/multi", "sim/small"], max_tokens=None, routable=ok, attempts_max=2)) == 2


def test_max_tokens_filters_endpoints(catalog):
    order = plan(catalog, ["sim/multi"], max_tokens=200, routable=ok, attempts_max=5)
    assert [e.provider.slug for e in order] == ["sim"]
    with pytest.raises(BadRequest, match="most any endpoint of the requested model can produce is 500"):
        plan(catalog, ["sim/multi"], max_tokens=501, routable=ok, attempts_max=5)


def test_unroutable_endpoints_are_explained(catalog):
    with pytest.raises(NotFound, match=r"No endpoints found for sim/small\. Farebox Simulator: no key"):
        plan(catalog, ["sim/small"], max_tokens=None, routable=lambda e: "no key", attempts_max=3)


def test_unknown_model(catalog):
    with pytest.raises(NotFound, match="'x/y' not found") as caught:
        plan(catalog, ["x/y"], max_tokens=None, routable=ok, attempts_max=3)
    assert caught.value.metadata["availability"]["code"] == "model_not_found"
