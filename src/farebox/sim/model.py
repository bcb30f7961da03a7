"""The simulated model itself, in no dialect's terms: what a request asks of it (`Ask`),
and what it produces (`Generation`), decided up front from the request and the controls.

Each dialect reads its own request into an Ask and writes the Generation in its own wire
format; so the controls mean the same everywhere and only the spelling differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from farebox.sim.controls import Controls
from farebox.sim.text import default_length, words
from farebox.sim.tools import ToolCall, ToolSpec, call, choose

# A default thinking length when the request enables thinking without the
# `reasoning_tokens` control: long enough to see, short enough to keep tests fast.
DEFAULT_THINKING = 8
_PREAMBLE_SPAN = 6  # a tool-calling answer starts with 0..5 words of text


@dataclass(frozen=True, slots=True)
class Ask:
    """What one request asks of the simulated model."""

    seed: int  # from the conversation: same request, same output
    prompt_tokens: int  # by the sim's own count (text.count_units / count_raw_tokens)
    cap: int | None  # max output tokens: reasoning + text + tool call together
    thinking: int = 0  # reasoning tokens the request itself enables (the control wins when > 0)
    tools: tuple[ToolSpec, ...] = ()
    forced_tool: str | None = None  # the tool the tool choice names
    tools_allowed: bool = True  # False when the tool choice is none/NONE
    awaiting_answer: bool = False  # the last turn is the user's own, not a tool result
    stop: tuple[str, ...] = ()  # stop sequences


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in OpenAI's convention: `prompt` includes cache reads and writes,
    `completion` includes reasoning and tool-call tokens."""

    prompt: int
    cached: int
    cache_write: int
    reasoning: int
    completion: int

    @property
    def uncached(self) -> int:
        return self.prompt - self.cached - self.cache_write


@dataclass(frozen=True, slots=True)
class Generation:
    """What the simulated model produces for one request."""

    reasoning: list[str]
    content: list[str]
    tool_call: ToolCall | None
    finish: str  # "stop" | "length" | "tool_calls"
    stop_sequence: str | None  # the stop sequence that ended the text (finish "stop")
    prompt_tokens: int  # as the upstream counts them: the prompt_tokens control, else the sim's count
    usage: Usage | None  # None when the `usage=false` control is set

    @property
    def output_tokens(self) -> int:
        return len(self.reasoning) + len(self.content) + (len(self.tool_call.pieces) if self.tool_call else 0)


def _apply_stop(content: list[str], stop: tuple[str, ...]) -> tuple[list[str], str | None]:
    """Cut the text before the earliest stop sequence (the stop sequence itself is not
    returned, as providers do); the token it starts in keeps its text before the match."""
    text = "".join(content)
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return content, None
    at, sequence = min(hits)
    kept: list[str] = []
    offset = 0
    for token in content:
        if offset + len(token) > at:
            if at > offset:
                kept.append(token[: at - offset])
            break
        kept.append(token)
        offset += len(token)
    return kept, sequence


def generate(ask: Ask, ctl: Controls) -> Generation:
    """Apply output_tokens/reasoning_tokens/tool_call, the cap and the stop sequences; count usage."""
    seed = ask.seed
    tool_call = None
    if ask.tools and ask.tools_allowed and ask.awaiting_answer and ctl.tool_call:
        tool_call = call(choose(ask.tools, ask.forced_tool), seed)
    if ctl.output_tokens is not None:
        want_out = ctl.output_tokens
    else:
        want_out = seed % _PREAMBLE_SPAN if tool_call else default_length(seed)
    want_reason = ctl.reasoning_tokens or ask.thinking
    n_reason, n_out = want_reason, want_out
    finish = "tool_calls" if tool_call else "stop"
    if ask.cap is not None:
        # Like OpenAI's reasoning models and Anthropic's extended thinking, the cap covers
        # reasoning + visible output; a call that no longer fits is not made at all.
        n_reason = min(want_reason, ask.cap)
        n_out = min(want_out, ask.cap - n_reason)
        room = ask.cap - n_reason - n_out
        if n_reason + n_out < want_reason + want_out or (tool_call and len(tool_call.pieces) > room):
            finish, tool_call = "length", None
    reasoning = words(seed, n_reason, reasoning=True)
    content, stop_sequence = _apply_stop(words(seed, n_out), ask.stop)
    if stop_sequence is not None:
        finish, tool_call = "stop", None
    prompt = ask.prompt_tokens if ctl.prompt_tokens is None else ctl.prompt_tokens
    usage = None
    if ctl.usage:
        cached = min(ctl.cached_tokens, prompt)
        completion = n_reason + len(content) + (len(tool_call.pieces) if tool_call else 0)
        usage = Usage(prompt, cached, min(ctl.cache_write_tokens, prompt - cached), n_reason, completion)
    return Generation(
        reasoning=reasoning,
        content=content,
        tool_call=tool_call,
        finish=finish,
        stop_sequence=stop_sequence,
        prompt_tokens=prompt,
        usage=usage,
    )
