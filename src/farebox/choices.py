"""Reading and trimming the choices of a chat or legacy completion reply: what counts as a
first token, the visible text, the provider's own finish reason, and reasoning a client
asked not to receive."""

from __future__ import annotations

from typing import Any

_SUBSTANCE = ("content", "reasoning", "reasoning_content", "tool_calls", "refusal", "reasoning_details")


def substantive(choices: list[dict[str, Any]]) -> bool:
    """Does a chunk carry anything but an empty role announcement?"""
    for choice in choices:
        if choice.get("finish_reason") or choice.get("text"):  # text: legacy completions
            return True
        delta = choice.get("delta")
        if delta and any(delta.get(k) for k in _SUBSTANCE):
            return True
    return False


def choice_text(choice: dict[str, Any]) -> str:
    """The visible text of one choice of a chat or legacy completion reply."""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def excludes_reasoning(body: dict[str, Any]) -> bool:
    """`reasoning.exclude: true` (or the deprecated `include_reasoning: false`): the model
    still reasons, and is billed for it, but the client does not receive the text."""
    reasoning = body.get("reasoning")
    return (isinstance(reasoning, dict) and reasoning.get("exclude") is True) or body.get("include_reasoning") is False


def strip_reasoning(message: dict[str, Any]) -> None:
    for name in ("reasoning", "reasoning_content", "reasoning_details"):
        message.pop(name, None)


def native_finish(choice: dict[str, Any]) -> str | None:
    """The provider's own finish reason. Dialects that translate (Anthropic, Gemini) set
    `native_finish_reason` beside an already normalized `finish_reason`; for OpenAI
    dialect upstreams the two are the same field."""
    native = choice.get("native_finish_reason")
    return native if isinstance(native, str) else choice.get("finish_reason")
