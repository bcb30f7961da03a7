"""Middle-out context compression: when it applies, what it drops, what it keeps, how it
truncates, and a property over generated conversations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farebox.errors import BadRequest
from farebox.ledger.pricing import measure_prompt
from farebox.routing.middle_out import MARKER, compress, wants_middle_out


def estimate(messages: list[dict[str, Any]]) -> int:
    return measure_prompt({"messages": messages}).estimate()


def msg(role: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": text, **extra}


def call(call_id: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def result(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def chat(turns: int, size: int = 400) -> list[dict[str, Any]]:
    """A system message and `turns` user/assistant pairs, each text `size` bytes and
    labelled so a test can tell them apart."""
    out = [msg("system", "S" * size)]
    for i in range(turns):
        out.append(msg("user", f"u{i:02d}".ljust(size, "u")))
        out.append(msg("assistant", f"a{i:02d}".ljust(size, "a")))
    return out


def labels(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"][:3] if isinstance(m["content"], str) else m["role"] for m in messages]


# ---------------------------------------------------------------- when it applies


@pytest.mark.parametrize(("body", "context_length", "expected"), [
    ({}, 8192, True),                       # OpenRouter's default: small contexts compress
    ({}, 4096, True),
    ({}, 8193, False),
    ({"transforms": ["middle-out"]}, 200_000, True),
    ({"transforms": []}, 4096, False),
    ({"transforms": ["something-else"]}, 4096, False),
    ({"plugins": [{"id": "context-compression"}]}, 200_000, True),
    ({"plugins": [{"id": "context-compression", "engine": "middle-out"}]}, 200_000, True),
    ({"plugins": [{"id": "context-compression", "enabled": True}]}, 200_000, True),
    ({"plugins": [{"id": "context-compression", "enabled": False}]}, 4096, False),
    ({"plugins": [{"id": "web"}]}, 4096, True),
    ({"plugins": [{"id": "web"}]}, 200_000, False),
    ({"plugins": []}, 4096, True),
    # The current form wins over the legacy one.
    ({"plugins": [{"id": "context-compression", "enabled": False}], "transforms": ["middle-out"]}, 4096, False),
    ({"plugins": [{"id": "context-compression"}], "transforms": []}, 200_000, True),
])
def test_wants_middle_out(body: dict[str, Any], context_length: int, expected: bool) -> None:
    assert wants_middle_out(body, context_length) is expected


def test_an_unsupported_engine_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        wants_middle_out({"plugins": [{"id": "web"}, {"id": "context-compression", "engine": "summarize"}]}, 4096)
    assert caught.value.metadata["field"] == "plugins[1].engine"


# ---------------------------------------------------------------- dropping messages


def test_returns_the_input_itself_when_it_fits() -> None:
    messages = chat(3)
    assert compress(messages, estimate(messages)) is messages
    assert compress(messages, estimate(messages), max_messages=7) is messages


def test_drops_from_the_middle_keeping_system_first_user_and_last() -> None:
    messages = chat(5)  # S u00 a00 u01 a01 u02 a02 u03 a03 u04 a04
    per_message = estimate(messages[:2]) - estimate(messages[:1])
    out = compress(messages, estimate(messages) - 3 * per_message)
    # 3 of 11 go from the middle, leaving a head of 4 and a tail of 4.
    assert labels(out) == ["SSS", "u00", "a00", "u01", "u03", "a03", "u04", "a04"]
    assert all(any(m is original for original in messages) for m in out)  # dropped, not copied


def test_drops_no_more_than_needed() -> None:
    messages = chat(5)
    for budget in range(estimate(messages[:2] + messages[-1:]), estimate(messages) + 1, 7):
        # The most messages that fit as a head and a tail of equal length, the head longer when odd.
        for keep in range(len(messages), 2, -1):
            expected = messages[:(keep + 1) // 2] + messages[len(messages) - keep // 2:]
            if estimate(expected) <= budget:
                break
        assert compress(messages, budget) == expected, budget


def test_keeps_the_minimum_however_small_the_budget() -> None:
    messages = [msg("system", "rules"), msg("developer", "more rules"), msg("assistant", "hello"),
                msg("user", "first question"), *chat(6)[1:], msg("user", "last question")]
    out = compress(messages, estimate(messages[:2] + messages[3:4] + messages[-1:]))
    assert [m["content"] for m in out] == ["rules", "more rules", "first question", "last question"]


def test_tool_calls_and_their_results_go_together() -> None:
    messages = [msg("system", "s"), msg("user", "start"), call("c1"), result("c1", "r" * 300),
                result("c1", "q" * 300), msg("assistant", "mid" * 100), msg("user", "end")]
    for budget in range(estimate(messages) - 400, estimate(messages)):
        out = compress(messages, budget)
        kept = [i for i, m in enumerate(messages) if m in out]
        assert {2, 3, 4} <= set(kept) or not {2, 3, 4} & set(kept), (budget, kept)


def test_a_tool_result_last_keeps_its_call() -> None:
    messages = [msg("user", "start"), *chat(4)[1:], call("c9"), result("c9", "done")]
    out = compress(messages, estimate([messages[0], *messages[-2:]]))
    assert out == [messages[0], messages[-2], messages[-1]]


def test_max_messages_keeps_half_from_each_end() -> None:
    messages = chat(10, size=10)  # 21 messages, well within any budget
    assert compress(messages, 10**6, max_messages=10) == messages[:5] + messages[-5:]
    assert compress(messages, 10**6, max_messages=3) == [messages[0], messages[1], messages[-1]]
    assert compress(messages, 10**6, max_messages=1) == [messages[0], messages[1], messages[-1]]  # the minimum


def test_max_messages_and_budget_together() -> None:
    messages = chat(10)  # every message the same size
    out = compress(messages, estimate(messages[:6]), max_messages=18)
    assert out == messages[:3] + messages[-3:]


# ---------------------------------------------------------------- truncating text


def test_truncates_one_huge_message_keeping_head_and_tail() -> None:
    huge = "HEAD" + "x" * 100_000 + "TAIL"
    messages = [msg("system", "be brief"), msg("user", huge)]
    out = compress(messages, 1000)
    assert out[0] is messages[0]
    text = out[1]["content"]
    assert text.startswith("HEAD") and text.endswith("TAIL") and MARKER in text
    assert 1000 - 1 <= estimate(out) <= 1000  # cut no more than needed
    assert messages[1]["content"] == huge


def test_truncation_respects_character_boundaries() -> None:
    text = "é" * 5000 + "€" * 5000   # 2- and 3-byte characters
    out = compress([msg("user", text)], 1001)
    cut = out[0]["content"]
    head, tail = cut.split(MARKER)
    assert set(head) == {"é"} and set(tail) == {"€"}
    assert estimate(out) <= 1001


def test_truncates_the_largest_text_first_and_text_parts_in_place() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [msg("system", "s" * 2000),
                {"role": "user", "content": [{"type": "text", "text": "t" * 8000}, image]},
                msg("user", "last")]
    budget = estimate(messages) - 1000
    out = compress(messages, budget)
    assert out[0] is messages[0] and out[2] is messages[2]
    assert out[1]["content"][1] is image
    assert MARKER in out[1]["content"][0]["text"]
    assert budget - 1 <= estimate(out) <= budget
    assert messages[1]["content"][0]["text"] == "t" * 8000


def test_truncates_several_texts_when_one_is_not_enough() -> None:
    messages = [msg("system", "s" * 4000), msg("user", "u" * 4000), msg("user", "v" * 3000)]
    out = compress(messages, 1000)
    # About 7,000 bytes must go: all but the marker of the first largest, the rest from the next.
    assert out[0]["content"] == MARKER
    assert out[1]["content"].startswith("u") and out[1]["content"].endswith("u") and MARKER in out[1]["content"]
    assert out[2] is messages[2]
    assert 999 <= estimate(out) <= 1000


def test_the_smallest_when_nothing_fits() -> None:
    messages = [msg("system", "s" * 1000), msg("user", "hi"), *chat(3)[1:], msg("user", "u" * 1000)]
    out = compress(messages, 10)
    assert [m["content"] for m in out] == [MARKER, "hi", MARKER]
    assert estimate(out) > 10
    assert messages[0]["content"] == "s" * 1000


def test_never_mutates_the_input() -> None:
    messages = [msg("system", "s" * 3000), {"role": "user", "content": [{"type": "text", "text": "t" * 3000}]},
                *chat(4)[1:], call("c1"), result("c1", "r" * 3000), msg("user", "u" * 3000)]
    before = copy.deepcopy(messages)
    for budget in (0, 500, 2000, 4000, 10**6):
        compress(messages, budget, max_messages=4)
        assert messages == before


# ---------------------------------------------------------------- a property


TEXT = st.text(alphabet="abcdé€ \n", max_size=300)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [msg(draw(st.sampled_from(["system", "developer"])), draw(TEXT))
                                 for _ in range(draw(st.integers(0, 2)))]
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["user", "assistant", "tools", "parts"]))
        if kind == "tools":
            call_id = f"c{len(out)}"
            out.append(call(call_id))
            out.extend(result(call_id, draw(TEXT)) for _ in range(draw(st.integers(1, 3))))
        elif kind == "parts":
            out.append({"role": "user", "content": [{"type": "text", "text": draw(TEXT)},
                                                    {"type": "image_url", "image_url": {"url": "http://x/i.png"}}]})
        else:
            out.append(msg(kind, draw(TEXT)))
    # A distinct name per message, so that each output message has exactly one possible original.
    return [{**m, "name": f"m{i}"} for i, m in enumerate(out)]


def _origin(out_message: dict[str, Any], original: dict[str, Any]) -> bool:
    """`out_message` is `original`, or `original` with texts cut around MARKER."""
    if out_message is original:
        return True
    # Anything else must be a copy with a text cut: compress copies only what it truncates.
    if {k: v for k, v in out_message.items() if k != "content"} != {
            k: v for k, v in original.items() if k != "content"}:
        return False
    cut_content, content = out_message["content"], original["content"]
    if type(cut_content) is not type(content):
        return False
    texts = [(cut_content, content)]
    if isinstance(content, list):
        if len(cut_content) != len(content) or any(
                {**a, "text": None} != {**b, "text": None} for a, b in zip(cut_content, content, strict=True)):
            return False
        texts = [(a.get("text"), b.get("text")) for a, b in zip(cut_content, content, strict=True)]
    changed = [(cut, text) for cut, text in texts if cut != text]
    for cut, text in changed:
        if MARKER not in cut:
            return False
        head, tail = cut.split(MARKER)
        if not (text.startswith(head) and text.endswith(tail) and len(cut.encode()) < len(text.encode())):
            return False
    return bool(changed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.integers(0, 2000), st.none() | st.integers(1, 12))
def test_output_is_an_ordered_subset_that_fits_whenever_the_minimum_does(
        messages: list[dict[str, Any]], budget: int, max_messages: int | None) -> None:
    before = copy.deepcopy(messages)
    out = compress(messages, budget, max_messages=max_messages)
    assert messages == before

    # Order-preserving subset, up to truncation: map each output message to its original.
    origin: list[int] = []
    j = 0
    for m in out:
        while not _origin(m, messages[j]):
            j += 1
        origin.append(j)
        j += 1

    # The protected messages stay; no tool message loses the message before it.
    leading = next((i for i, m in enumerate(messages) if m["role"] not in ("system", "developer")), len(messages))
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    assert set(range(leading)) | {len(messages) - 1} | ({first_user} - {None}) <= set(origin)
    for position, i in enumerate(origin):
        if messages[i]["role"] == "tool":
            assert position > 0 and origin[position - 1] == i - 1

    fits = estimate(messages) <= budget and (max_messages is None or len(messages) <= max_messages)
    assert (out is messages) == fits
    smallest = compress(messages, 0, max_messages=max_messages)
    if estimate(smallest) <= budget:
        assert estimate(out) <= budget
    if max_messages is not None and len(smallest) <= max_messages:
        assert len(out) <= max_messages
