"""Model ids with variant suffixes: static variants, dynamic ones, stacking, unknowns."""

from __future__ import annotations

import pytest

from farebox.catalog.load import load_catalog
from farebox.catalog.model import Catalog
from farebox.catalog.simulated import sim_catalog
from farebox.routing.variants import resolve

# acme/model has a paid and a free endpoint but no acme/model:free entry; it has a static
# :thinking variant. sim/small and sim/small:free come from the simulator's catalog.
ACME = """
[providers.acme]
name = "Acme"
dialect = "openai"
base_url = "https://api.acme.test/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "acme/model"
name = "Acme: Model"
context_length = 8192

  [[models.endpoints]]
  provider = "acme"
  model = "model-paid"
  max_completion_tokens = 1024
  pricing = { prompt = "0.000001", completion = "0.000002" }

  [[models.endpoints]]
  provider = "acme"
  model = "model-free"
  max_completion_tokens = 1024
  pricing = { prompt = "0", completion = "0" }

[[models]]
id = "acme/model:thinking"
name = "Acme: Model (thinking)"
context_length = 8192

  [[models.endpoints]]
  provider = "acme"
  model = "model-thinking"
  max_completion_tokens = 1024
  pricing = { prompt = "0.000002", completion = "0.000004" }
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(builtin=False, extra_text=sim_catalog("http://sim.test/v1") + ACME, env={})


def outcome(catalog: Catalog, model_id: str) -> tuple[str, bool, str | None] | None:
    resolved = resolve(catalog, model_id)
    if resolved is None:
        return None
    assert resolved.requested == model_id
    assert resolved.model is catalog.model(resolved.model.id)
    return resolved.model.id, resolved.free_only, resolved.sort


@pytest.mark.parametrize(("model_id", "expected"), [
    # Catalog ids, static variants included, are themselves.
    ("acme/model", ("acme/model", False, None)),
    ("acme/model:thinking", ("acme/model:thinking", False, None)),
    ("sim/small:free", ("sim/small:free", False, None)),
    # Dynamic sorts.
    ("acme/model:nitro", ("acme/model", False, "throughput")),
    ("acme/model:floor", ("acme/model", False, "price")),
    ("acme/model:thinking:floor", ("acme/model:thinking", False, "price")),
    # :free without a catalog entry: only the base's free endpoints.
    ("acme/model:free", ("acme/model", True, None)),
    ("acme/model:thinking:free", ("acme/model:thinking", True, None)),
    # Stacking, in either order.
    ("sim/small:free:floor", ("sim/small:free", False, "price")),
    ("sim/small:floor:free", ("sim/small:free", False, "price")),
    ("acme/model:free:nitro", ("acme/model", True, "throughput")),
    ("acme/model:nitro:free", ("acme/model", True, "throughput")),
    # Both sorts: the rightmost wins.
    ("acme/model:nitro:floor", ("acme/model", False, "price")),
    ("acme/model:floor:nitro", ("acme/model", False, "throughput")),
    ("acme/model:floor:free:nitro", ("acme/model", True, "throughput")),
])
def test_resolves(catalog: Catalog, model_id: str, expected: tuple[str, bool, str | None]) -> None:
    assert outcome(catalog, model_id) == expected


@pytest.mark.parametrize("model_id", [
    "acme/other",
    "acme/other:free",
    "acme/model:online",
    "acme/model:exacto",
    "acme/model:extended",        # a static variant the catalog does not list
    "acme/model:floor:extended",  # unknown suffix after a dynamic one
    "acme/model:",
    "acme/model:FLOOR",
    "acme",
    "",
    "nitro",
    ":free",
])
def test_unknown_is_none(catalog: Catalog, model_id: str) -> None:
    assert resolve(catalog, model_id) is None


def test_free_only_leaves_the_endpoint_filter_to_the_planner(catalog: Catalog) -> None:
    resolved = resolve(catalog, "acme/model:free")
    assert resolved is not None and resolved.free_only
    assert [e.pricing.is_free for e in resolved.model.endpoints] == [False, True]
