"""The router's per-endpoint view of a request: variant defaults and refused parameters."""

from __future__ import annotations

from farebox.catalog.load import parse_layers
from farebox.catalog.model import Catalog
from farebox.catalog.simulated import sim_catalog
from farebox.clock import FakeClock
from farebox.routing.router import Router
from farebox.settings import Settings

STRICT = """
[[models]]
id = "acme/strict"
name = "A model that refuses temperature"
context_length = 1000

[[models.endpoints]]
provider = "sim"
model = "strict"
max_completion_tokens = 100
supported_parameters = ["max_tokens", "top_p"]
pricing = { prompt = "0.000001", completion = "0.000001" }
"""


def router() -> tuple[Router, Catalog]:
    providers, models = parse_layers([("t", sim_catalog("http://sim/v1") + STRICT)])
    catalog = Catalog(providers, models)
    return Router(catalog, Settings(), FakeClock(), lambda endpoint, api: None), catalog


def test_sampling_parameters_the_endpoint_refuses_are_dropped():
    r, catalog = router()
    strict = catalog.models["acme/strict"].endpoints[0]
    body = {"model": "acme/strict", "messages": [], "temperature": 0.2, "top_p": 0.9, "seed": 3, "custom": 1}
    assert r.body_for(strict, body) == {"model": "acme/strict", "messages": [], "top_p": 0.9, "custom": 1}
    assert body["temperature"] == 0.2  # the client's request is untouched
    plain = {"model": "acme/strict", "messages": []}
    assert r.body_for(strict, plain) is plain  # nothing to drop: no copy on the hot path


def test_endpoints_without_a_parameter_list_keep_everything():
    r, catalog = router()
    embed = catalog.models["sim/embed"].endpoints[0]
    body = {"temperature": 1.5}
    assert r.body_for(embed, body) is body


def test_a_static_variant_fills_in_its_defaults_unless_the_request_says_otherwise():
    r, catalog = router()
    thinking = catalog.models["sim/claude:thinking"].endpoints[0]
    assert r.body_for(thinking, {"messages": []})["reasoning"] == {"max_tokens": 2048}
    assert r.body_for(thinking, {"reasoning": {"effort": "none"}})["reasoning"] == {"effort": "none"}
