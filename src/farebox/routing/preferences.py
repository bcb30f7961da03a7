"""OpenRouter's `provider` request object (ProviderPreferences), parsed and validated into
frozen values the planner reads. Pure: no I/O.

Every error is a 400 whose `field` is the offending path (`provider.sort.by`,
`provider.max_price.prompt`, `provider.order[2]`). A JSON `null` for any field means "not
given" (OpenRouter's schema marks most of them nullable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from farebox.catalog.model import QUANTIZATIONS
from farebox.errors import BadRequest
from farebox.money import ATTOS_PER_USD

SORTS = ("price", "throughput", "latency")
PARTITIONS = ("model", "none")
DATA_COLLECTION = ("allow", "deny")
PERCENTILES = ("p50", "p75", "p90", "p99")

# Fields of OpenRouter's schema that Farebox accepts and ignores. Each is validated for
# its type so a malformed value is still caught.
# - enforce_distillable_text: the catalog records no distillation permissions.
# - experimental: named in older docs, never specified.
IGNORED_FIELDS = ("enforce_distillable_text", "experimental")

# max_price keys -> atto-dollars per unit of the number given: prompt and completion are
# in USD per MILLION tokens, image and request in USD per unit.
_PRICE_SCALES = {
    "prompt": ATTOS_PER_USD // 10**6,
    "completion": ATTOS_PER_USD // 10**6,
    "image": ATTOS_PER_USD,
    "request": ATTOS_PER_USD,
}
# Validated, then ignored: no catalog endpoint prices audio, so none can exceed an audio cap.
_IGNORED_PRICES = ("audio",)
# A numeric string as JSON writes numbers (ASCII digits, optional sign, fraction, exponent);
# Decimal alone would also take "1_000", "NaN" and non-ASCII digits.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)
# Decimal exponents beyond which a cap cannot be a price: larger is refused, smaller is
# below one atto-dollar per token. Checked before exact conversion, which would otherwise
# build integers of 10**exponent for inputs like "1e-999999999".
_CAP_MAGNITUDE_MAX = 20
_CAP_MAGNITUDE_MIN = -30


@dataclass(frozen=True, slots=True)
class Percentile:
    """A soft threshold per percentile of a rolling window; a bare number means p50."""

    p50: float | None = None
    p75: float | None = None
    p90: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True)
class MaxPrice:
    """Caps in atto-dollars per token (prompt, completion) or per unit (image, request);
    None = no cap."""

    prompt: int | None = None
    completion: int | None = None
    image: int | None = None
    request: int | None = None


@dataclass(frozen=True, slots=True)
class Preferences:
    order: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    require_parameters: bool = False
    data_collection: str = "allow"          # "allow" | "deny"
    zdr: bool = False
    only: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    quantizations: tuple[str, ...] = ()
    sort: str | None = None                 # "price" | "throughput" | "latency"
    partition: str = "model"                # "model" | "none"
    preferred_min_throughput: Percentile | None = None   # tokens/s
    preferred_max_latency: Percentile | None = None      # SECONDS as the API gives them
    max_price: MaxPrice | None = None


DEFAULT = Preferences()

_FIELDS = (
    "order", "allow_fallbacks", "require_parameters", "data_collection", "zdr", "only", "ignore",
    "quantizations", "sort", "preferred_min_throughput", "preferred_max_latency", "max_price",
    *IGNORED_FIELDS,
)


def _fail(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", field=path)


def parse_preferences(raw: Any) -> Preferences:
    """`raw` is the request's `provider` value; None (absent) gives DEFAULT.

    Keys outside OpenRouter's schema are refused so that a typo (`"sortt"`) is not
    silently ignored; the schema's fields Farebox does not act on are in IGNORED_FIELDS.
    """
    if raw is None:
        return DEFAULT
    if not isinstance(raw, dict):
        raise _fail("provider", f"expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise _fail(f"provider.{unknown[0]}", f"unknown field (expected one of {', '.join(_FIELDS)})")
    fields = {k: v for k, v in raw.items() if v is not None}
    if "enforce_distillable_text" in fields:
        _boolean(fields, "enforce_distillable_text", False)
    if "experimental" in fields and not isinstance(fields["experimental"], dict):
        raise _fail("provider.experimental", "expected an object")

    sort, partition = _sort(fields.get("sort"))
    return Preferences(
        order=_names(fields, "order"),
        allow_fallbacks=_boolean(fields, "allow_fallbacks", True),
        require_parameters=_boolean(fields, "require_parameters", False),
        data_collection=_choice(fields, "data_collection", DATA_COLLECTION, "allow"),
        zdr=_boolean(fields, "zdr", False),
        only=_names(fields, "only"),
        ignore=_names(fields, "ignore"),
        quantizations=_quantizations(fields.get("quantizations")),
        sort=sort,
        partition=partition,
        preferred_min_throughput=_percentile(fields.get("preferred_min_throughput"), "preferred_min_throughput"),
        preferred_max_latency=_percentile(fields.get("preferred_max_latency"), "preferred_max_latency"),
        max_price=_max_price(fields.get("max_price")),
    )


def matches(pattern: str, provider_slug: str, provider_name: str) -> bool:
    """Whether an `order`/`only`/`ignore` entry names this provider: its slug or display
    name, case-insensitively; a base slug also names its sub-slugs ("deepinfra" matches
    "deepinfra/turbo")."""
    wanted = pattern.casefold()
    slug = provider_slug.casefold()
    return wanted in (slug, provider_name.casefold()) or slug.startswith(wanted + "/")


def _boolean(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise _fail(f"provider.{name}", f"expected a boolean, got {value!r}")
    return value


def _choice(fields: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = fields.get(name, default)
    if value not in allowed:
        raise _fail(f"provider.{name}", f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(path, f"expected an array of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _fail(f"{path}[{i}]", f"expected a non-empty string, got {item!r}")
    return tuple(value)


def _names(fields: dict[str, Any], name: str) -> tuple[str, ...]:
    return _strings(fields[name], f"provider.{name}") if name in fields else ()


def _quantizations(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    levels = _strings(value, "provider.quantizations")
    for i, level in enumerate(levels):
        if level not in QUANTIZATIONS:
            raise _fail(f"provider.quantizations[{i}]",
                        f"must be one of {', '.join(QUANTIZATIONS)}, got {level!r}")
    return levels


def _sort(value: Any) -> tuple[str | None, str]:
    """`sort` as a string, or as `{by, partition}`; returns (sort, partition)."""
    if value is None:
        return None, "model"
    if isinstance(value, str):
        return _sort_by(value, "provider.sort"), "model"
    if not isinstance(value, dict):
        raise _fail("provider.sort", "expected a string or an object {by, partition}")
    unknown = sorted(set(value) - {"by", "partition"})
    if unknown:
        raise _fail(f"provider.sort.{unknown[0]}", "unknown field (expected by, partition)")
    by = value.get("by")
    partition = value.get("partition")
    if partition is None:
        partition = "model"
    elif partition not in PARTITIONS:
        raise _fail("provider.sort.partition", f"must be one of {', '.join(PARTITIONS)}, got {partition!r}")
    return (None if by is None else _sort_by(by, "provider.sort.by")), partition


def _sort_by(value: Any, path: str) -> str:
    if value == "exacto":
        raise _fail(path, "\"exacto\" (OpenRouter's quality-ranked sort from its own traffic) is not "
                          f"supported; use one of {', '.join(SORTS)}")
    if value not in SORTS:
        raise _fail(path, f"must be one of {', '.join(SORTS)}, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _threshold(value: Any, path: str) -> float:
    if not _is_number(value):
        raise _fail(path, f"expected a number, got {value!r}")
    if not 0 <= value < float("inf"):
        raise _fail(path, f"must be a finite number of at least 0, got {value!r}")
    return float(value)


def _percentile(value: Any, name: str) -> Percentile | None:
    """A number (p50) or an object of p50/p75/p90/p99; an empty object is no threshold."""
    path = f"provider.{name}"
    if value is None:
        return None
    if not isinstance(value, dict):
        return Percentile(p50=_threshold(value, path))
    unknown = sorted(set(value) - set(PERCENTILES))
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", f"unknown percentile (expected {', '.join(PERCENTILES)})")
    thresholds = {k: _threshold(v, f"{path}.{k}") for k, v in value.items() if v is not None}
    return Percentile(**thresholds) if thresholds else None


def _max_price(value: Any) -> MaxPrice | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail("provider.max_price", f"expected an object, got {type(value).__name__}")
    known = (*_PRICE_SCALES, *_IGNORED_PRICES)
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _fail(f"provider.max_price.{unknown[0]}", f"unknown price (expected {', '.join(known)})")
    caps: dict[str, int] = {}
    for key, raw in value.items():
        if raw is None:
            continue
        cap = _cap_attos(raw, f"provider.max_price.{key}", _PRICE_SCALES.get(key, 1))
        if key in _PRICE_SCALES:
            caps[key] = cap
    return MaxPrice(**caps) if caps else None


def _cap_attos(raw: Any, path: str, attos_per_unit: int) -> int:
    """A USD amount (number or numeric string) × attos_per_unit, exactly, rounded down to
    a whole atto-dollar. Rounding down selects exactly the endpoints the exact cap would:
    prices are whole atto-dollars, and an integer is ≤ x exactly when it is ≤ floor(x)."""
    if _is_number(raw):
        text = str(raw)  # the shortest repr: 0.15 -> "0.15", never the binary expansion
    elif isinstance(raw, str):
        text = raw.strip()
    else:
        raise _fail(path, f"expected a number or a numeric string, got {raw!r}")
    if not _NUMBER.fullmatch(text):
        raise _fail(path, f"expected a finite decimal number, got {raw!r}")
    amount = Decimal(text)
    if amount < 0:
        raise _fail(path, f"must not be negative, got {raw!r}")
    if not amount or amount.adjusted() < _CAP_MAGNITUDE_MIN:
        return 0
    if amount.adjusted() > _CAP_MAGNITUDE_MAX:
        raise _fail(path, f"is too large: {raw!r}")
    numerator, denominator = amount.as_integer_ratio()
    return numerator * attos_per_unit // denominator
