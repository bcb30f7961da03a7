"""The dialect-neutral simulated model: tool-call arguments from JSON schemas, argument
pieces, the cap, stop sequences, usage, and the prompt-count formulas. Pure functions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farebox.sim.controls import Controls, stop_point
from farebox.sim.model import DEFAULT_THINKING, Ask, generate
from farebox.sim.text import VOCAB, count_raw_tokens, count_units, words
from farebox.sim.tools import ToolSpec, call, choose, split

WEATHER = ToolSpec("get_weather", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer"}},
    "required": ["city", "unit"],
})


def ask(**kw: object) -> Ask:
    base: dict = {"seed": 1234, "prompt_tokens": 10, "cap": None}
    base.update(kw)
    return Ask(**base)


# --- tool arguments -------------------------------------------------------------------


def test_only_required_properties_with_values_of_their_type() -> None:
    args = call(WEATHER, 1).arguments
    assert set(args) == {"city", "unit"}
    assert args["city"] in VOCAB and args["unit"] == "celsius"  # the first enum value


def test_all_properties_when_none_are_required_and_every_type() -> None:
    schema = {"type": "object", "properties": {
        "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"}, "b": {"type": "boolean"},
        "a": {"type": "array", "items": {"type": "integer"}}, "z": {"type": "null"}, "c": {"const": 7},
        "u": {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "opt": {"type": ["string", "null"]},
        "o": {"type": "object", "properties": {"deep": {"type": "object", "properties": {"x": {"type": "boolean"}},
                                                        "required": ["x"]}}},
    }}
    args = call(ToolSpec("t", schema), 5).arguments
    assert list(args) == ["s", "i", "n", "b", "a", "z", "c", "u", "opt", "o"]
    assert isinstance(args["s"], str) and args["s"] in VOCAB
    assert isinstance(args["i"], int) and not isinstance(args["i"], bool) and 1 <= args["i"] <= 9
    assert isinstance(args["n"], float)
    assert isinstance(args["b"], bool)
    assert len(args["a"]) == 1 and isinstance(args["a"][0], int)
    assert args["z"] is None and args["c"] == 7 and isinstance(args["u"], int) and isinstance(args["opt"], str)
    assert isinstance(args["o"]["deep"]["x"], bool)


def test_gemini_upper_case_types_and_bounds() -> None:
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER", "minimum": 50, "maximum": 60},
                                                "tags": {"type": "ARRAY", "items": {"type": "STRING"}}}}
    args = call(ToolSpec("t", schema), 9).arguments
    assert args["n"] == 50 and isinstance(args["tags"][0], str)


@pytest.mark.parametrize("schema", [None, {}, {"type": "string"}, "not a schema"])
def test_arguments_are_always_an_object(schema: object) -> None:
    assert call(ToolSpec("t", schema), 3).arguments == {}


def test_self_nesting_schema_is_cut_off() -> None:
    node: dict = {"type": "object", "properties": {}, "required": ["child"]}
    node["properties"]["child"] = node  # a cycle, as a resolved $ref could be
    json.dumps(call(ToolSpec("t", node), 1).arguments)  # terminates, serialisable


def test_same_seed_same_arguments_other_seed_may_differ() -> None:
    assert call(WEATHER, 42) == call(WEATHER, 42)
    assert len({call(WEATHER, seed).arguments["city"] for seed in range(30)}) > 1


def test_forced_tool_wins_unknown_name_falls_back_to_first() -> None:
    other = ToolSpec("other", {})
    assert choose((WEATHER, other), "other") is other
    assert choose((WEATHER, other), "nope") is WEATHER
    assert choose((WEATHER, other), None) is WEATHER


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=2, max_size=60))
def test_pieces_rejoin_fit_four_bytes_and_are_at_least_two(text: str) -> None:
    pieces = split(text)
    assert "".join(pieces) == text and len(pieces) >= 2
    assert all(0 < len(p.encode()) <= 4 for p in pieces)


def test_pieces_are_one_token_per_four_bytes() -> None:
    text = json.dumps({"city": "paris"}, separators=(",", ":"))
    assert len(split(text)) == (len(text) + 3) // 4


# --- generation -----------------------------------------------------------------------


def test_tool_call_when_declared_allowed_awaited_and_enabled() -> None:
    gen = generate(ask(tools=(WEATHER,), awaiting_answer=True), Controls())
    assert gen.tool_call is not None and gen.finish == "tool_calls"
    assert json.loads(gen.tool_call.json) == gen.tool_call.arguments
    assert len(gen.content) < 6  # a short preamble, maybe empty
    assert gen.usage is not None
    assert gen.usage.completion == len(gen.content) + len(gen.tool_call.pieces) == gen.output_tokens


@pytest.mark.parametrize(
    ("kw", "ctl"),
    [
        ({"tools": (WEATHER,), "awaiting_answer": False}, Controls()),  # answering a tool result
        ({"tools": (WEATHER,), "awaiting_answer": True, "tools_allowed": False}, Controls()),
        ({"tools": (WEATHER,), "awaiting_answer": True}, Controls(tool_call=False)),
        ({"awaiting_answer": True}, Controls()),  # no tools declared
    ],
)
def test_no_tool_call_otherwise(kw: dict, ctl: Controls) -> None:
    gen = generate(ask(**kw), ctl)
    assert gen.tool_call is None and gen.finish == "stop" and 16 <= len(gen.content) <= 64


def test_call_that_does_not_fit_the_cap_is_not_made() -> None:
    ctl = Controls(output_tokens=2)
    gen = generate(ask(tools=(WEATHER,), awaiting_answer=True, cap=3), ctl)
    assert gen.tool_call is None and gen.finish == "length" and len(gen.content) == 2


def test_cap_covers_reasoning_then_text() -> None:
    gen = generate(ask(cap=5), Controls(reasoning_tokens=3, output_tokens=4))
    assert (len(gen.reasoning), len(gen.content), gen.finish) == (3, 2, "length")
    assert gen.usage is not None and (gen.usage.reasoning, gen.usage.completion) == (3, 5)


def test_requested_thinking_and_the_control_winning() -> None:
    assert len(generate(ask(thinking=DEFAULT_THINKING), Controls()).reasoning) == DEFAULT_THINKING
    assert len(generate(ask(thinking=DEFAULT_THINKING), Controls(reasoning_tokens=3)).reasoning) == 3


def test_stop_sequence_cuts_the_text_before_it() -> None:
    full = generate(ask(), Controls(output_tokens=30))
    text = "".join(full.content)
    target = full.content[10]  # e.g. " gateway": stop at its middle
    stop = target[1:3]
    at = text.find(stop)
    gen = generate(ask(stop=("zzz-never", stop)), Controls(output_tokens=30))
    assert "".join(gen.content) == text[:at]
    assert gen.stop_sequence == stop and gen.finish == "stop"
    assert gen.usage is not None and gen.usage.completion == len(gen.content)


def test_usage_caps_cache_reads_then_writes_and_prompt_override() -> None:
    gen = generate(ask(prompt_tokens=100), Controls(cached_tokens=70, cache_write_tokens=50))
    assert gen.usage is not None
    assert (gen.usage.prompt, gen.usage.cached, gen.usage.cache_write, gen.usage.uncached) == (100, 70, 30, 0)
    gen = generate(ask(prompt_tokens=100), Controls(prompt_tokens=7, usage=False))
    assert gen.usage is None and gen.prompt_tokens == 7


def test_prompt_count_formulas() -> None:
    assert count_units([]) == 3
    assert count_units([("hello", 0), ("", 2)]) == 3 + (4 + 2) + (4 + 170)
    assert count_raw_tokens("hello") == 2 and count_raw_tokens([1, 2, 3]) == 3 and count_raw_tokens("") == 0


def test_words_are_prefix_stable() -> None:
    assert words(7, 10)[:4] == words(7, 4)


@pytest.mark.parametrize(
    ("cut", "fail", "expected"),
    [(None, None, (None, False)), (3, None, (3, False)), (None, 2, (2, True)), (5, 2, (2, True)), (2, 2, (2, False))],
)
def test_stop_point(cut: int | None, fail: int | None, expected: tuple) -> None:
    assert stop_point(Controls(cut_after=cut, fail_after=fail)) == expected
