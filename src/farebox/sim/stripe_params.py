"""The fake Stripe's request parameters and errors: Stripe's form-encoded bracket notation
parsed back into nested dicts (`parse_form`), readers that check one parameter each and
refuse it as Stripe does (type, unknown, missing, limits), Stripe's error (`ApiError`) and
the messages and decline codes it answers with."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

Obj = dict[str, Any]

MAX_AMOUNT = 99_999_999  # eight digits, Stripe's limit
# Smallest chargeable amount per currency (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts);
# the fake accepts only these currencies.
MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}
METADATA_KEYS_MAX, METADATA_KEY_MAX, METADATA_VALUE_MAX = 50, 40, 500

# Test control code -> (error code, decline_code, message), as Stripe's test cards answer.
DECLINES = {
    "card_declined": ("card_declined", "generic_decline", "Your card was declined."),
    "insufficient_funds": ("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "lost_card": ("card_declined", "lost_card", "Your card was declined."),
    "stolen_card": ("card_declined", "stolen_card", "Your card was declined."),
    "fraudulent": ("card_declined", "fraudulent", "Your card was declined."),
    "expired_card": ("expired_card", "expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": ("processing_error", "processing_error",
                         "An error occurred while processing your card. Try again in a little bit."),
    "authentication_required": ("authentication_required", "authentication_required",
                                "Your card was declined. This transaction requires authentication."),
}
NEEDS_RETURN_URL = (
    "This PaymentIntent is configured to accept payment methods enabled in your Dashboard. Because some of these "
    "payment methods might redirect your customer off of your page, you must provide a `return_url`. If you don't "
    "want to accept redirect-based payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and Payment Intents.")
UNATTACHED_METHOD = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, shared with "
    "a connected account without Customer attachment, or was detached from a Customer. It may not be used again. "
    "To use a PaymentMethod multiple times, you must attach it to a Customer first.")


class ApiError(Exception):
    """A request refused before anything was done: never saved for idempotent replay."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error: Obj = {"code": code, "message": message, "param": param, "type": type}
        if code is not None:
            self.error["doc_url"] = "https://stripe.com/docs/error-codes/" + code.replace("_", "-")

    def body(self) -> Obj:
        return {"error": {k: v for k, v in self.error.items() if v is not None}}


# ---- request parameters -------------------------------------------------------------------

_NAME = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_INDEX = re.compile(r"\[([^\[\]]*)\]")


def parse_form(body: str) -> Obj:
    """Stripe's bracket notation back into nested dicts: `a[b][0]=x` -> {"a": {"b": {"0": "x"}}}.
    Arrays stay digit-keyed dicts until a parameter's reader asks for an array, because only
    the parameter knows (`metadata[0]` is a hash key). `a[]=x` appends."""
    root: Obj = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        match = _NAME.fullmatch(name)
        if match is None:
            raise ApiError(400, f"Invalid parameter name: {name}")
        path = [match[1], *_INDEX.findall(match[2])]
        if "" in path[:-1]:
            raise ApiError(400, f"Invalid parameter name: {name}")
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ApiError(400, f"Invalid hash: {name} mixes a value and nested parameters", param=name)
        last = path[-1] or str(len(node))
        if isinstance(node.get(last), dict):
            raise ApiError(400, f"Invalid hash: {name} mixes a value and nested parameters", param=name)
        node[last] = value
    return root


def join(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]" if prefix else key


def only(params: Obj, allowed: set[str], prefix: str = "") -> None:
    for key in params:
        if key not in allowed:
            name = join(prefix, key)
            raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def required(value: Any, name: str) -> Any:
    if value is None:
        raise ApiError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
    return value


def text(params: Obj, key: str, prefix: str = "") -> str | None:
    """A string parameter; empty means absent, as in Stripe."""
    value = params.get(key)
    if isinstance(value, dict):
        raise ApiError(400, f"Invalid string: {join(prefix, key)} must be a string", param=join(prefix, key))
    return value or None


def integer(params: Obj, key: str, prefix: str = "") -> int | None:
    value = text(params, key, prefix)
    if value is None:
        return None
    if not re.fullmatch(r"-?[0-9]+", value):
        raise ApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=join(prefix, key))
    return int(value)


def boolean(params: Obj, key: str, prefix: str = "") -> bool | None:
    value = text(params, key, prefix)
    if value is None or value in ("true", "false"):
        return None if value is None else value == "true"
    raise ApiError(400, f"Invalid boolean: {value}", param=join(prefix, key))


def enum(params: Obj, key: str, allowed: tuple[str, ...], prefix: str = "") -> str | None:
    value = text(params, key, prefix)
    if value is not None and value not in allowed:
        name = join(prefix, key)
        raise ApiError(400, f"Invalid {name}: must be one of {', '.join(allowed)}", param=name)
    return value


def currency(params: Obj, key: str, prefix: str = "") -> str | None:
    value = text(params, key, prefix)
    if value is not None and value.lower() not in MINIMUM_CHARGE:
        raise ApiError(400, f"Invalid currency: {value}. The fake Stripe knows {', '.join(MINIMUM_CHARGE)}.",
                       param=join(prefix, key))
    return value.lower() if value is not None else None


def mapping(params: Obj, key: str, prefix: str = "") -> Obj:
    value = params.get(key, {})
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid object: {join(prefix, key)} must be a hash", param=join(prefix, key))
    return value


def array(params: Obj, key: str, prefix: str = "") -> list[tuple[str, Any]]:
    """(full parameter name, item) for each element of an array parameter, in index order."""
    name = join(prefix, key)
    value = mapping(params, key, prefix)
    if not all(k.isdigit() for k in value):
        raise ApiError(400, f"Invalid array: {name} must be an array", param=name)
    return [(f"{name}[{k}]", value[k]) for k in sorted(value, key=int)]


def metadata(params: Obj, key: str = "metadata", prefix: str = "") -> dict[str, str]:
    name = join(prefix, key)
    metadata = mapping(params, key, prefix)
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise ApiError(400, f"Invalid string: {name}[{k}] must be a string", param=f"{name}[{k}]")
        if len(k) > METADATA_KEY_MAX or len(v) > METADATA_VALUE_MAX:
            raise ApiError(400, f"Invalid {name}[{k}]: keys are at most {METADATA_KEY_MAX} characters and values "
                           f"at most {METADATA_VALUE_MAX}", param=f"{name}[{k}]")
    if len(metadata) > METADATA_KEYS_MAX:
        raise ApiError(400, f"Invalid {name}: at most {METADATA_KEYS_MAX} keys", param=name)
    return {k: v for k, v in metadata.items() if v}  # an empty value unsets its key


def check_amount(amount: int, currency: str, param: str, what: str) -> None:
    minimum = MINIMUM_CHARGE[currency]
    if amount < minimum:
        raise ApiError(400, f"{what} must be at least {minimum} {currency} (in the smallest currency unit)",
                       code="amount_too_small", param=param)
    if amount > MAX_AMOUNT:
        raise ApiError(400, f"{what} must be no more than {MAX_AMOUNT} {currency} (in the smallest currency unit)",
                       code="amount_too_large", param=param)


def no_such(kind: str, object_id: str, param: str, status: int = 400) -> ApiError:
    return ApiError(status, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)
