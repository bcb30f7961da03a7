"""Model ids with variant suffixes (`author/model:free:floor`) resolved to a catalog model
and what the suffixes ask of routing. Pure: no I/O.

Static variants (`:extended`, `:thinking`, and `:free` where the catalog lists one) are
catalog models of their own. Dynamic variants apply to any model and stack:
- `:floor` sorts its endpoints by price, `:nitro` by throughput. When both are written,
  the rightmost wins (`m:nitro:floor` sorts by price), like a later setting overriding an
  earlier one.
- `:free`, when the catalog has no `base:free` model, keeps only the base model's free
  endpoints.
OpenRouter's `:floor`/`:nitro` also admit flex/priority service tiers; the catalog has no
tiers, so here they only sort.
"""

from __future__ import annotations

from dataclasses import dataclass

from farebox.catalog.model import Catalog, Model

SORT_SUFFIXES = {"floor": "price", "nitro": "throughput"}
FREE_SUFFIX = "free"


@dataclass(slots=True)  # a value, never changed; not frozen: docs/architecture.md
class Resolved:
    model: Model            # the catalog model whose endpoints are candidates
    requested: str          # the id as the client sent it
    free_only: bool         # ":free" not in the catalog as its own model: only free endpoints of the base
    sort: str | None        # ":floor" -> "price", ":nitro" -> "throughput" (None otherwise)


def resolve(catalog: Catalog, model_id: str) -> Resolved | None:
    """The catalog model `model_id` names, with its dynamic suffixes peeled from the right
    until the rest is a catalog id; None when it names no model or has a suffix that is
    neither a static variant in the catalog nor a dynamic one."""
    rest = model_id
    sort: str | None = None
    free_only = False
    while (model := catalog.model(rest)) is None:
        rest, colon, suffix = rest.rpartition(":")
        if not colon:
            return None
        if suffix in SORT_SUFFIXES:
            sort = sort or SORT_SUFFIXES[suffix]  # the first peeled is the rightmost: it wins
        elif suffix == FREE_SUFFIX:
            free_only = True
        else:
            return None
    if free_only:
        # `m:floor:free` where the catalog has `m:free`: the static free variant, as for `m:free:floor`.
        static_free = catalog.model(f"{model.id}:{FREE_SUFFIX}")
        if static_free is not None:
            model, free_only = static_free, False
    return Resolved(model=model, requested=model_id, free_only=free_only, sort=sort)
