"""The provider options each dialect declares: how one server of a family differs from
the family's reference (OpenAI, Anthropic, Gemini). The catalog refuses an option its
dialect does not declare, so a typo is an error at start-up, not a silent default.

Each option is (kind, allowed values or None, default, what it means); docs/catalog.md
lists them and a test keeps the two in step.
"""

from __future__ import annotations

from typing import Any

Spec = tuple[type, tuple[Any, ...] | None, Any, str]

OPTIONS: dict[str, dict[str, Spec]] = {
    "openai": {
        "max_tokens_field": (str, ("as_sent", "max_tokens", "max_completion_tokens"), "as_sent",
                             "The name the server accepts for the output cap. OpenAI's reasoning models "
                             "reject `max_tokens`; many older servers know only `max_tokens`. `as_sent` "
                             "forwards whichever the client used."),
        "stream_usage": (str, ("stream_options", "always"), "stream_options",
                         "How a stream reports usage: `stream_options` asks with "
                         "`stream_options.include_usage`; `always` means the server reports usage "
                         "unasked and rejects `stream_options`."),
        "reasoning_field": (str, ("reasoning", "reasoning_content"), "reasoning",
                            "Where the server expects reasoning text on assistant messages sent back "
                            "(replies are read from either field)."),
        "reasoning_in_messages": (bool, None, False,
                                  "Send assistant messages' reasoning back to the server (under "
                                  "`reasoning_field`). Off by default: most servers reject or ignore it."),
        "reasoning_effort": (bool, None, True,
                             "Translate OpenRouter's `reasoning.effort` to the `reasoning_effort` parameter."),
        "seed_field": (str, ("seed", "random_seed"), "seed", "The name of the sampling seed (Mistral: `random_seed`)."),
        "send_user": (bool, None, True,
                      "Send the hashed end-user id as `user` (for the provider's abuse detection)."),
        "drop_fields": (list, None, [], "Request fields the server rejects, removed before sending."),
    },
    "anthropic": {
        "anthropic_version": (str, None, "2023-06-01", "The `anthropic-version` header."),
        "anthropic_beta": (list, None, [], "Values for the `anthropic-beta` header."),
    },
    "gemini": {},
}


class OptionError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


def check_options(dialect: str, table: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in; raises OptionError naming the bad option."""
    specs = OPTIONS[dialect]
    for name, value in table.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise OptionError(name, f"unknown option for the {dialect} dialect (known: {known})")
        kind, allowed, _, _ = spec
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise OptionError(name, f"expected {kind.__name__}, got {value!r}")
        if kind is list and not all(isinstance(item, str) for item in value):
            raise OptionError(name, "expected a list of strings")
        if allowed is not None and value not in allowed:
            raise OptionError(name, f"unknown value {value!r}; expected one of {', '.join(allowed)}")
    return {name: table.get(name, spec[2]) for name, spec in specs.items()}
