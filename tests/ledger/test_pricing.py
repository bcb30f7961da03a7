"""Pricing: prompt measurement, the hold's upper bound, the affordable-output inverse, and
the exact cost of a request from its line items."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from farebox.catalog.model import Pricing
from farebox.ledger.pricing import (
    FREE,
    PromptSize,
    Usage,
    affordable_output,
    cost_of,
    estimate_text_tokens,
    is_insured,
    max_cost,
    measure_prompt,
)
from farebox.money import ATTOS_PER_NANO, parse_price, round_up_to_nanos
from farebox.settings import Settings

GPT = Pricing(prompt=parse_price("0.0000025"), completion=parse_price("0.00001"))
CACHED = Pricing(prompt=parse_price("0.000003"), completion=parse_price("0.000015"),
                 input_cache_read=parse_price("0.0000003"), input_cache_write=parse_price("0.00000375"))
REASONER = Pricing(prompt=parse_price("0.000001"), completion=parse_price("0.000002"),
                   internal_reasoning=parse_price("0.000005"))
FEES = Pricing(prompt=parse_price("0.000001"), completion=parse_price("0.000002"),
               request=parse_price("0.001"), image=parse_price("0.0002"))

prices = st.integers(min_value=0, max_value=10**14)  # up to 100 µUSD a token, i.e. $100 per million
optional_prices = st.none() | prices
pricings = st.builds(Pricing, prompt=prices, completion=prices, request=st.integers(0, 10**16),
                     image=st.integers(0, 10**15), input_cache_read=optional_prices,
                     input_cache_write=optional_prices, internal_reasoning=optional_prices)


# -- measure_prompt ------------------------------------------------------------------

def test_measure_counts_utf8_bytes_of_string_content() -> None:
    size = measure_prompt({"messages": [{"role": "user", "content": "héllo"},  # é is two bytes
                                        {"role": "assistant", "content": "日本"}]})  # 3 bytes each
    assert size == PromptSize(text_bytes=6 + 6, messages=2, images=0)


def test_measure_counts_text_parts_and_images() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "abc"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}},
        {"type": "text", "text": "ünï"},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
    ]}]}
    size = measure_prompt(body)
    # The image payload is not text: it is counted as an image, not as bytes.
    assert size == PromptSize(text_bytes=3 + 5, messages=1, images=2)


@pytest.mark.parametrize("kind", ["input_audio", "file", "video_url", "video"])
def test_measure_counts_other_media_as_images(kind: str) -> None:
    size = measure_prompt({"messages": [{"role": "user", "content": [{"type": kind, kind: {"data": "x" * 999}}]}]})
    assert size == PromptSize(text_bytes=0, messages=1, images=1)


def test_measure_counts_names_tool_calls_and_tool_results() -> None:
    tool_calls = [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}}]
    body = {"messages": [
        {"role": "user", "name": "bob", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]}
    size = measure_prompt(body)
    expected = len(b"bob") + len(b"hi") + len(orjson.dumps(tool_calls)) + len(b"call_1") + len(b"sunny")
    assert size == PromptSize(text_bytes=expected, messages=3, images=0)


def test_measure_counts_tools_and_response_format() -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "déjà vu",
                                               "parameters": {"type": "object", "properties": {}}}}]
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    base = {"messages": [{"role": "user", "content": "q"}]}
    assert measure_prompt(base).text_bytes == 1
    assert measure_prompt({**base, "tools": tools}).text_bytes == 1 + len(orjson.dumps(tools))
    assert measure_prompt({**base, "response_format": response_format}).text_bytes == (
        1 + len(orjson.dumps(response_format)))
    both = measure_prompt({**base, "tools": tools, "response_format": response_format})
    assert both.text_bytes == 1 + len(orjson.dumps(tools)) + len(orjson.dumps(response_format))


def test_measure_counts_reasoning_text_of_earlier_turns() -> None:
    size = measure_prompt({"messages": [{"role": "assistant", "content": "ok", "reasoning": "thinking…"}]})
    assert size.text_bytes == 2 + len("thinking…".encode())


def test_measure_empty_and_null_content() -> None:
    assert measure_prompt({}) == PromptSize(0, 0, 0)
    assert measure_prompt({"messages": []}) == PromptSize(0, 0, 0)
    assert measure_prompt({"messages": [{"role": "assistant", "content": None}]}) == PromptSize(0, 1, 0)


def test_measure_counts_unknown_parts_as_their_json() -> None:
    part = {"type": "mystery", "payload": "zz"}
    size = measure_prompt({"messages": [{"role": "user", "content": [part]}]})
    assert size.text_bytes == len(orjson.dumps(part))


@given(text_bytes=st.integers(0, 10**7), messages=st.integers(0, 500), images=st.integers(0, 50))
def test_bound_is_never_below_the_estimate(text_bytes: int, messages: int, images: int) -> None:
    s = Settings()
    size = PromptSize(text_bytes, messages, images)
    assert size.bound(s.hold_request_tokens, s.hold_message_tokens, s.hold_image_tokens) >= size.estimate()


@given(st.text(max_size=200))
def test_bound_covers_a_byte_level_tokenizer(text: str) -> None:
    # A byte-level BPE never makes more tokens than bytes; the bound never undercounts that.
    size = measure_prompt({"messages": [{"role": "user", "content": text}]})
    assert size.bound(0, 0, 0) >= len(text.encode())
    assert estimate_text_tokens(text) <= size.estimate()


# -- max_cost and affordable_output --------------------------------------------------

def test_max_cost_uses_dearest_input_and_output_prices() -> None:
    # Cache writes are dearer than the prompt: every prompt token may be a cache write.
    assert max_cost(CACHED, 1000, 0, 0) == round_up_to_nanos(1000 * CACHED.cache_write)
    # Reasoning is dearer than completion: every output token may be reasoning.
    assert max_cost(REASONER, 0, 0, 1000) == round_up_to_nanos(1000 * REASONER.reasoning)
    dear_read = Pricing(prompt=10, completion=5, input_cache_read=70, internal_reasoning=1)
    assert max_cost(dear_read, 3, 0, 4) == round_up_to_nanos(3 * 70 + 4 * 5)


def test_max_cost_includes_request_and_image_fees() -> None:
    prompt, images, output = 1234, 3, 567
    attos = (prompt * FEES.prompt + output * FEES.completion + FEES.request + images * FEES.image)
    assert max_cost(FEES, prompt, images, output) == round_up_to_nanos(attos)
    assert max_cost(FEES, 0, 0, 0) == round_up_to_nanos(FEES.request)
    assert max_cost(Pricing(0, 0), 10**6, 5, 10**6) == 0


def test_max_cost_rounds_up() -> None:
    assert max_cost(Pricing(prompt=1, completion=0), 1, 0, 0) == 1


@given(pricings, st.integers(0, 10**6), st.integers(0, 20), st.integers(0, 10**6))
def test_max_cost_bounds_every_actual_cost(p: Pricing, prompt: int, images: int, output: int) -> None:
    usage = Usage(prompt_tokens=prompt, completion_tokens=output, images=images,
                  cached_tokens=prompt // 3, cache_write_tokens=prompt // 4, reasoning_tokens=output // 2)
    assert cost_of(p, usage).total <= max_cost(p, prompt, images, output)


@given(pricings, st.integers(0, 10**6), st.integers(0, 20), st.integers(0, 10**9))
def test_affordable_output_is_affordable(p: Pricing, prompt: int, images: int, extra: int) -> None:
    fixed = max_cost(p, prompt, images, 0)
    available = fixed + extra
    n = affordable_output(p, prompt, images, available)
    assert n >= 0
    assert max_cost(p, prompt, images, n) <= available


@given(pricings, st.integers(0, 10**6), st.integers(0, 20), st.integers(0, 10**9))
def test_affordable_output_is_nearly_the_most(p: Pricing, prompt: int, images: int, extra: int) -> None:
    # One token more would cost at least everything available: the answer is never more
    # than the rounding of the prompt's cost (under a nano-dollar) below the true maximum.
    assume(max(p.completion, p.reasoning) > 0)
    available = max_cost(p, prompt, images, 0) + extra
    n = affordable_output(p, prompt, images, available)
    assert max_cost(p, prompt, images, n + 1) >= available


def test_affordable_output_edges() -> None:
    fixed = max_cost(GPT, 100, 0, 0)
    assert affordable_output(GPT, 100, 0, 0) == 0
    assert affordable_output(GPT, 100, 0, fixed) == 0
    assert affordable_output(GPT, 100, 0, fixed - 1) == 0
    # $0.00001 per output token = 10 000 nanos a token.
    assert affordable_output(GPT, 100, 0, fixed + 10_000) == 1
    assert affordable_output(GPT, 100, 0, fixed + 29_999) == 2
    assert affordable_output(Pricing(prompt=1, completion=0), 100, 0, 2) == 2**31


# -- cost_of -------------------------------------------------------------------------

def test_cost_plain_prompt_and_completion() -> None:
    cost = cost_of(GPT, Usage(prompt_tokens=1000, completion_tokens=500))
    assert cost.prompt == 1000 * GPT.prompt
    assert cost.completion == 500 * GPT.completion
    assert (cost.cache_read, cost.cache_write, cost.reasoning, cost.request, cost.image) == (0, 0, 0, 0, 0)
    assert cost.cache_discount == 0
    # 1000 × $0.0000025 + 500 × $0.00001 = $0.0075
    assert cost.total == 7_500_000


def test_cost_splits_uncached_cached_and_cache_writes() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=600, cache_write_tokens=300)
    cost = cost_of(CACHED, usage)
    assert cost.prompt == 100 * CACHED.prompt
    assert cost.cache_read == 600 * CACHED.cache_read
    assert cost.cache_write == 300 * CACHED.cache_write
    assert cost.completion == 10 * CACHED.completion
    assert cost.total == round_up_to_nanos(sum(cost.items().values()))


def test_cost_clamps_cache_counts_to_the_prompt() -> None:
    cost = cost_of(CACHED, Usage(prompt_tokens=100, cached_tokens=80, cache_write_tokens=80))
    assert cost.cache_read == 80 * CACHED.cache_read
    assert cost.cache_write == 20 * CACHED.cache_write   # only what is left after the reads
    assert cost.prompt == 0
    cost = cost_of(CACHED, Usage(prompt_tokens=50, cached_tokens=500))
    assert (cost.prompt, cost.cache_read) == (0, 50 * CACHED.cache_read)


def test_cache_prices_default_to_the_prompt_price() -> None:
    usage = Usage(prompt_tokens=1000, cached_tokens=400, cache_write_tokens=100)
    cost = cost_of(GPT, usage)
    assert cost.prompt + cost.cache_read + cost.cache_write == 1000 * GPT.prompt
    assert cost.cache_discount == 0


def test_reasoning_at_its_own_price_when_priced() -> None:
    usage = Usage(prompt_tokens=0, completion_tokens=100, reasoning_tokens=60)
    cost = cost_of(REASONER, usage)
    assert cost.completion == 40 * REASONER.completion
    assert cost.reasoning == 60 * REASONER.internal_reasoning
    assert cost.total == round_up_to_nanos(40 * REASONER.completion + 60 * REASONER.internal_reasoning)


def test_reasoning_at_completion_price_when_not_priced() -> None:
    usage = Usage(prompt_tokens=0, completion_tokens=100, reasoning_tokens=60)
    cost = cost_of(GPT, usage)
    assert cost.completion == 40 * GPT.completion
    assert cost.reasoning == 60 * GPT.completion
    assert cost.total == round_up_to_nanos(100 * GPT.completion)


def test_reasoning_clamped_to_completion() -> None:
    cost = cost_of(REASONER, Usage(completion_tokens=10, reasoning_tokens=50))
    assert (cost.completion, cost.reasoning) == (0, 10 * REASONER.reasoning)


def test_request_and_image_fees() -> None:
    cost = cost_of(FEES, Usage(prompt_tokens=0, completion_tokens=0, images=3))
    assert cost.request == FEES.request
    assert cost.image == 3 * FEES.image
    assert cost.total == round_up_to_nanos(FEES.request + 3 * FEES.image)  # $0.0016
    assert cost.total == 1_600_000


def test_rounding_happens_once() -> None:
    # Each line item is half a nano-dollar: rounding each up would charge 2 nanos; the
    # exact sum is 1 nano.
    half = ATTOS_PER_NANO // 2
    p = Pricing(prompt=half, completion=half)
    cost = cost_of(p, Usage(prompt_tokens=1, completion_tokens=1))
    assert sum(round_up_to_nanos(v) for v in cost.items().values()) == 2
    assert cost.total == 1


def test_many_tiny_items_sum_before_rounding() -> None:
    # Seven priced line items of 1/7 nano-dollar-ish each: rounding each would be 7 nanos.
    p = Pricing(prompt=100_000_000, completion=100_000_000, request=100_000_000, image=100_000_000,
                input_cache_read=100_000_000, input_cache_write=100_000_000, internal_reasoning=100_000_000)
    usage = Usage(prompt_tokens=3, cached_tokens=1, cache_write_tokens=1, completion_tokens=2,
                  reasoning_tokens=1, images=1)
    cost = cost_of(p, usage)
    assert all(v == 100_000_000 for v in cost.items().values())
    assert sum(round_up_to_nanos(v) for v in cost.items().values()) == 7
    assert cost.total == 1  # 0.7 nano rounded up once


@given(pricings, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
       st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 20))
def test_total_is_the_rounded_sum_of_items(p: Pricing, prompt: int, cached: int, written: int,
                                           completion: int, reasoning: int, images: int) -> None:
    usage = Usage(prompt_tokens=prompt, cached_tokens=cached, cache_write_tokens=written,
                  completion_tokens=completion, reasoning_tokens=reasoning, images=images)
    cost = cost_of(p, usage)
    assert all(v >= 0 for v in cost.items().values())
    assert cost.total == round_up_to_nanos(sum(cost.items().values()))
    # The prompt split covers exactly the prompt tokens.
    c = min(cached, prompt)
    w = min(written, prompt - c)
    assert cost.prompt == (prompt - c - w) * p.prompt
    # Discount: what the prompt price would have charged minus what was charged.
    assert cost.cache_discount == (c + w) * p.prompt - cost.cache_read - cost.cache_write


def test_cache_discount_sign() -> None:
    reads = cost_of(CACHED, Usage(prompt_tokens=1000, cached_tokens=1000))
    assert reads.cache_discount == 1000 * (CACHED.prompt - CACHED.input_cache_read) > 0
    writes = cost_of(CACHED, Usage(prompt_tokens=1000, cache_write_tokens=1000))
    assert writes.cache_discount == -1000 * (CACHED.input_cache_write - CACHED.prompt) < 0
    neither = cost_of(CACHED, Usage(prompt_tokens=1000))
    assert neither.cache_discount == 0


def test_free_is_zero() -> None:
    assert FREE.total == 0 and not any(FREE.items().values())
    assert cost_of(Pricing(0, 0), Usage(prompt_tokens=10**6, completion_tokens=10**6)).total == 0


# -- is_insured ----------------------------------------------------------------------

@pytest.mark.parametrize(("completion", "finish", "insured"), [
    (0, None, True),
    (0, "", True),
    (0, "error", True),
    (0, "stop", False),
    (0, "length", False),
    (0, "tool_calls", False),
    (0, "content_filter", False),
    (1, None, False),
    (1, "", False),
    (1, "error", False),
    (1, "stop", False),
    (500, "length", False),
])
def test_is_insured_truth_table(completion: int, finish: str | None, insured: bool) -> None:
    assert is_insured(Usage(prompt_tokens=1000, completion_tokens=completion), finish) is insured
