"""The Anthropic Messages wire: requests to the neutral shape, replies and stream chunks
back, errors. Every Message and stream event built here is also validated with the
official SDK's types, so the shapes are known to be what Anthropic clients parse."""

from __future__ import annotations

from typing import Any

import anthropic.types
import pytest
from pydantic import TypeAdapter

from farebox.api import anthropic_reply as reply
from farebox.api import anthropic_wire as wire
from farebox.api.validate import validate_chat
from farebox.catalog.load import load_catalog
from farebox.errors import BadRequest

USER = [{"role": "user", "content": "hi"}]
BASE = {"model": "sim/small", "max_tokens": 100, "messages": USER}
EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)
CC = {"type": "ephemeral"}


def chat(**change: Any) -> dict[str, Any]:
    body = wire.to_chat({**BASE, **change})
    validate_chat(body)  # whatever the translation makes, the chat validator accepts
    return body


# -- request ---------------------------------------------------------------------------

def test_a_minimal_request():
    assert chat() == {"model": "sim/small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


def test_sampling_metadata_and_openrouter_fields():
    body = chat(temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END"], stream=True,
                metadata={"user_id": "u-1"}, provider={"order": ["sim"]}, session_id="s-1", cache_control=CC,
                anthropic_unknown_field={"x": 1})
    assert body == {"model": "sim/small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100,
                    "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["END"], "stream": True, "user": "u-1",
                    "provider": {"order": ["sim"]}, "session_id": "s-1", "cache_control": CC}


def test_system_as_a_string_and_as_blocks_keeping_cache_control():
    assert chat(system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    system = [{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": CC}]
    assert chat(system=system)["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": CC}]}
    assert chat(system=[{"type": "text", "text": "only"}])["messages"][:2] == [
        {"role": "system", "content": "only"}, {"role": "user", "content": "hi"}]


def test_images_and_documents_become_data_urls_urls_and_files():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}, "cache_control": CC},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
         "title": "report.pdf"},
        {"type": "document", "source": {"type": "url", "url": "https://x.test/b.pdf"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
        {"type": "text", "text": "Compare them."},
    ]
    assert chat(messages=[{"role": "user", "content": content}])["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}, "cache_control": CC},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBER"}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": "https://x.test/b.pdf"}},
        {"type": "text", "text": "plain words"},
        {"type": "text", "text": "Compare them."},
    ]}]


def test_a_tool_use_turn_and_its_results():
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two calls.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "enc-1"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here you go."},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "cache_control": CC,
             "content": [{"type": "text", "text": "Rome: service down"},
                         {"type": "image", "source": {"type": "url", "url": "https://x.test/map.png"}}]},
        ]},
    ]
    assert chat(messages=messages)["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.",
         "tool_calls": [
             {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
             {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}],
         "reasoning_details": [
             {"type": "reasoning.text", "text": "Two calls.", "signature": "sig-1", "format": "anthropic-claude-v1",
              "index": 0},
             {"type": "reasoning.encrypted", "data": "enc-1", "format": "anthropic-claude-v1", "index": 1}]},
        # The results first, in order (an error keeps its text), then the rest of the turn,
        # the image a result carried ahead of the user's own text.
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2",
         "content": [{"type": "text", "text": "Rome: service down", "cache_control": CC}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/map.png"}},
                                     {"type": "text", "text": "Here you go."}]},
    ]


def test_a_turn_of_only_tool_results_and_an_empty_result():
    messages = [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]
    assert chat(messages=messages)["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""}]


def test_thinking_without_a_signature_did_not_come_from_claude():
    messages = [{"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""},
                                                  {"type": "text", "text": "ok"}]}, *USER]
    assert chat(messages=messages)["messages"][0]["reasoning_details"] == [
        {"type": "reasoning.text", "text": "hm", "format": "unknown", "index": 0}]


def test_tools_and_tool_choice():
    tools = [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"},
              "cache_control": CC, "strict": True},
             {"type": "custom", "name": "clock", "input_schema": {"type": "object", "properties": {}}}]
    body = chat(tools=tools, tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True})
    assert body["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"},
                                          "description": "Weather now", "strict": True}, "cache_control": CC},
        {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["parallel_tool_calls"] is False
    for anthropic_choice, openai_choice in (("auto", "auto"), ("any", "required"), ("none", "none")):
        body = chat(tools=tools, tool_choice={"type": anthropic_choice})
        assert body["tool_choice"] == openai_choice and "parallel_tool_calls" not in body


@pytest.mark.parametrize(("thinking", "output_config", "reasoning"), [
    ({"type": "enabled", "budget_tokens": 2048}, None, {"max_tokens": 2048}),
    ({"type": "disabled"}, None, None),
    ({"type": "adaptive"}, None, {"effort": "medium"}),
    ({"type": "adaptive"}, {"effort": "max"}, {"effort": "max"}),
    (None, {"effort": "low"}, None),
])
def test_thinking_becomes_openrouter_reasoning(thinking, output_config, reasoning):
    body = chat(thinking=thinking, output_config=output_config)
    assert body.get("reasoning") == reasoning


def test_fallbacks_and_models():
    assert chat(fallbacks=[{"model": "sim/large"}, {"model": "sim/flaky"}])["models"] == ["sim/large", "sim/flaky"]
    assert chat(models=["sim/large"])["models"] == ["sim/large"]


def test_count_tokens_requests_need_no_max_tokens_and_keep_only_the_prompt():
    body = wire.to_chat({"model": "claude-x", "messages": USER, "system": "S", "temperature": 0.3,
                         "tools": [{"name": "f", "input_schema": {"type": "object"}}]}, counting=True)
    assert body == {"model": "claude-x", "messages": [{"role": "system", "content": "S"}, *USER],
                    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}


@pytest.mark.parametrize(("change", "field"), [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"model": ""}, "model"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image", "source": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}]}]},
     "messages[0].content[0].input"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
     "messages[0].content[0].tool_use_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].source.type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "text/html", "data": "x"}}]}]},
     "messages[0].content[0].source.media_type"),
    ({"system": [{"type": "image"}]}, "system[0].type"),
    ({"temperature": 1.5}, "temperature"),
    ({"top_p": "high"}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"stream": "yes"}, "stream"),
    ({"metadata": {"user_id": 7}}, "metadata.user_id"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tool_choice": {"type": "some"}}, "tool_choice.type"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "extreme"}}, "output_config.effort"),
    ({"fallbacks": [{"model": "a"}], "models": ["b"]}, "fallbacks"),
    ({"fallbacks": [{"model": m} for m in "abcd"]}, "fallbacks"),
    ({"fallbacks": ["sim/large"]}, "fallbacks"),
    ({"models": ["a", "b", "c", "d"]}, "models"),
])
def test_invalid_requests_are_400s_naming_the_field(change, field):
    with pytest.raises(BadRequest) as caught:
        wire.to_chat({**BASE, **change})
    assert caught.value.metadata["field"] == field
    assert field in caught.value.message


def test_server_tools_are_refused_by_name():
    tools = [{"type": "web_search_20250305", "name": "web_search"}, {"name": "f", "input_schema": {"type": "object"}},
             {"type": "code_execution_20250825", "name": "code_execution"}]
    with pytest.raises(BadRequest, match="server tools are not supported by this gateway: web_search, code_execution"):
        wire.to_chat({**BASE, "tools": tools})


CATALOG = """
[providers.up]
name = "Upstream"
dialect = "openai"
base_url = "http://up.test/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false
""" + "".join(f"""
[[models]]
id = "{model_id}"
name = "{model_id}"
context_length = 1000
""" + "".join(f"""
[[models.endpoints]]
provider = "up"
model = "{upstream}"
max_completion_tokens = 100
pricing = {{ prompt = "0", completion = "0" }}
""" for upstream in upstreams) for model_id, upstreams in (
    ("a/one", ["one-v1"]), ("a/one:free", ["one-v1"]), ("a/two", ["two-v1", "two-v2"])))


def test_bare_upstream_ids_map_to_the_first_catalog_model_serving_them():
    aliases = wire.upstream_aliases(load_catalog(builtin=False, extra_text=CATALOG, env={}))
    assert aliases == {"one-v1": "a/one", "two-v1": "a/two", "two-v2": "a/two"}


# -- reply -----------------------------------------------------------------------------

def completion(message: dict[str, Any], finish: str = "stop", native: str | None = "stop",
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "gen-1", "model": "sim/small", "provider": "Sim", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish,
                         "native_finish_reason": native}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25,
                               "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                               "completion_tokens_details": {"reasoning_tokens": 0}}}


def message(body: dict[str, Any], stop: list[str] | None = None) -> dict[str, Any]:
    out = reply.message_from_chat(body, stop)
    anthropic.types.Message.model_validate(out)
    return out


def test_a_text_reply_and_its_usage():
    usage = {"prompt_tokens": 1000, "completion_tokens": 40, "cost": 0.5,
             "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
             "completion_tokens_details": {"reasoning_tokens": 12}}
    assert message(completion({"content": "Hello!"}, usage=usage)) == {
        "id": "gen-1", "type": "message", "role": "assistant", "model": "sim/small",
        "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 40, "cache_creation_input_tokens": 300,
                  "cache_read_input_tokens": 600, "output_tokens_details": {"thinking_tokens": 12}, "cost": 0.5},
        "provider": "Sim"}


def test_thinking_text_and_tool_use_blocks_in_order():
    body = completion({
        "content": None, "reasoning": "ignored: the details say it",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "Let me call.", "signature": "sig", "format": "anthropic-claude-v1"},
            {"type": "reasoning.encrypted", "data": "enc", "format": "anthropic-claude-v1"},
            {"type": "reasoning.encrypted", "data": "opaque", "format": "openai-responses-v1"}],
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                       {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{not json"}}]},
        finish="tool_calls", native="tool_calls")
    out = message(body)
    assert out["content"] == [
        {"type": "thinking", "thinking": "Let me call.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "enc"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}]
    assert out["stop_reason"] == "tool_use"


def test_reasoning_of_other_models_is_an_unsigned_thinking_block():
    out = message(completion({"content": "Answer.", "reasoning": "Thought."}))
    assert out["content"] == [{"type": "thinking", "thinking": "Thought.", "signature": ""},
                              {"type": "text", "text": "Answer."}]


def test_a_refusal_without_content_is_the_text():
    out = message(completion({"content": None, "refusal": "I can't."}, finish="content_filter",
                             native="content_filter"))
    assert out["content"] == [{"type": "text", "text": "I can't."}] and out["stop_reason"] == "refusal"


@pytest.mark.parametrize(("finish", "native", "reason"), [
    ("stop", "stop", "end_turn"),
    ("length", "length", "max_tokens"),
    ("tool_calls", "tool_calls", "tool_use"),
    ("tool_calls", "function_call", "tool_use"),
    ("content_filter", "content_filter", "refusal"),
    ("error", None, "end_turn"),
    (None, None, "end_turn"),
    ("stop", "end_turn", "end_turn"),
    ("stop", "stop_sequence", "stop_sequence"),
    ("stop", "pause_turn", "pause_turn"),
    ("length", "model_context_window_exceeded", "model_context_window_exceeded"),
])
def test_stop_reasons(finish, native, reason):
    assert reply.stop_reason(finish, native) == reason


def test_the_matched_stop_sequence_is_known_when_only_one_was_given():
    body = completion({"content": "a"}, native="stop_sequence")
    assert message(body, ["END"])["stop_sequence"] == "END"
    assert message(body, ["END", "STOP"])["stop_sequence"] is None
    assert message(completion({"content": "a"}), ["END"])["stop_sequence"] is None


# -- stream ----------------------------------------------------------------------------

def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, native: str | None = None) -> dict[str, Any]:
    return {"id": "gen-1", "model": "sim/large", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, "native_finish_reason": native}]}


FINAL = {"id": "gen-1", "model": "sim/large", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 20, "completion_tokens": 7, "cost": 0.1,
                   "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0}}}


def run(chunks: list[dict[str, Any]], stop: list[str] | None = None,
        final: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    encoder = reply.StreamEncoder("gen-1", stop)
    events = [e for c in chunks for e in encoder.chunk(c)] + encoder.finish(final or FINAL)
    for name, data in events:
        assert EVENT.validate_python(data).type == name == data["type"]
    return events


def shape(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """Each event as (name, index, what it carries) for compact comparisons."""
    out: list[tuple[Any, ...]] = []
    for name, data in events:
        if name == "content_block_start":
            out.append((name, data["index"], data["content_block"]["type"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            out.append((name, data["index"], delta["type"],
                        next(v for k, v in delta.items() if k != "type")))
        elif name == "content_block_stop":
            out.append((name, data["index"]))
        else:
            out.append((name,))
    return out


def test_a_text_stream():
    events = run([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
                  chunk({}, "stop", "stop")])
    assert shape(events) == [
        ("message_start",), ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Hel"), ("content_block_delta", 0, "text_delta", "lo"),
        ("content_block_stop", 0), ("message_delta",), ("message_stop",)]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["usage"]) == ("gen-1", "sim/large", {"input_tokens": 0,
                                                                                    "output_tokens": 0})
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"input_tokens": 15, "output_tokens": 7, "cache_creation_input_tokens": 0,
                                       "cache_read_input_tokens": 5, "cost": 0.1}}


def test_events_go_out_as_each_chunk_arrives():
    encoder = reply.StreamEncoder("gen-1", None)
    assert [n for n, _ in encoder.chunk(chunk({"role": "assistant", "content": ""}))] == ["message_start"]
    assert encoder.chunk(chunk({"role": "assistant"})) == []
    assert [n for n, _ in encoder.chunk(chunk({"content": "a"}))] == ["content_block_start", "content_block_delta"]
    assert [n for n, _ in encoder.chunk(chunk({"content": "b"}))] == ["content_block_delta"]


def test_thinking_with_its_signature_then_text():
    events = run([
        chunk({"reasoning": "Hmm", "reasoning_details": [{"type": "reasoning.text", "text": "Hmm"}]}),
        chunk({"reasoning": " ok"}),
        chunk({"reasoning_details": [{"type": "reasoning.text", "text": "", "signature": "sig",
                                      "format": "anthropic-claude-v1"}]}),
        chunk({"content": "Done."}), chunk({}, "stop", "end_turn")])
    assert shape(events) == [
        ("message_start",), ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta", "Hmm"), ("content_block_delta", 0, "thinking_delta", " ok"),
        ("content_block_delta", 0, "signature_delta", "sig"), ("content_block_stop", 0),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta", "Done."),
        ("content_block_stop", 1), ("message_delta",), ("message_stop",)]


def test_tool_calls_stream_as_tool_use_blocks():
    events = run([
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls", "tool_calls")])
    assert shape(events) == [
        ("message_start",), ("content_block_start", 0, "text"), ("content_block_delta", 0, "text_delta", "Let me check."),
        ("content_block_stop", 0), ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta", '{"city":'),
        ("content_block_delta", 1, "input_json_delta", '"Paris"}'), ("content_block_stop", 1),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta", "{}"),
        ("content_block_stop", 2), ("message_delta",), ("message_stop",)]
    assert events[4][1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_parallel_calls_told_apart_by_id_only():
    events = run([
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}]})])
    starts = [d["content_block"]["id"] for n, d in events if n == "content_block_start"]
    assert starts == ["a", "b"]


def test_interleaved_thinking_and_redacted_thinking():
    signed = {"type": "reasoning.text", "text": "", "signature": "s", "format": "anthropic-claude-v1"}
    events = run([
        chunk({"reasoning": "first"}), chunk({"reasoning_details": [signed]}),
        chunk({"reasoning": "second"}),  # a signed block is complete: this is a new one
        chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": "enc", "format": "anthropic-claude-v1"}]}),
        chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"reasoning": "third"}), chunk({"content": "end"})])
    assert [s for s in shape(events) if s[0] in ("content_block_start", "content_block_stop")] == [
        ("content_block_start", 0, "thinking"), ("content_block_stop", 0),
        ("content_block_start", 1, "thinking"), ("content_block_stop", 1),
        ("content_block_start", 2, "redacted_thinking"), ("content_block_stop", 2),
        ("content_block_start", 3, "tool_use"), ("content_block_stop", 3),
        ("content_block_start", 4, "thinking"), ("content_block_stop", 4),
        ("content_block_start", 5, "text"), ("content_block_stop", 5)]
    redacted = [d["content_block"] for n, d in events if n == "content_block_start" and d["index"] == 2]
    assert redacted == [{"type": "redacted_thinking", "data": "enc"}]


def test_length_stop_sequence_and_an_empty_stream():
    events = run([chunk({"content": "a"}), chunk({}, "length", "length")])
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    events = run([chunk({"content": "a"}), chunk({}, "stop", "stop_sequence")], stop=["###"])
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}
    assert shape(run([])) == [("message_start",), ("message_delta",), ("message_stop",)]


def test_a_mid_stream_error_is_an_error_event():
    encoder = reply.StreamEncoder("gen-1", None)
    encoder.chunk(chunk({"content": "a"}))
    error = {"code": 502, "message": "Provider returned error",
             "metadata": {"error_type": "provider_unavailable", "provider_name": "Sim"}}
    assert encoder.fail({"id": "gen-1", "error": error, "choices": []}) == [("error", {"type": "error", "error": {
        "type": "api_error", "message": "Provider returned error", "error_type": "provider_unavailable",
        "metadata": {"provider_name": "Sim"}}})]


def test_sse_framing():
    assert reply.sse([reply.PING, ("message_stop", {"type": "message_stop"})]) == (
        b'event: ping\ndata: {"type":"ping"}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (405, "invalid_request_error"),
    (413, "request_too_large"), (422, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"),
    (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error"),
])
def test_error_types_by_status(status, kind):
    assert reply.error_type(status) == kind


def test_error_body_keeps_openrouter_error_type_and_metadata():
    assert reply.error_body(400, "max_tokens: is required", {"error_type": "invalid_request", "field": "max_tokens"}) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: is required",
                                   "error_type": "invalid_request", "metadata": {"field": "max_tokens"}}}
    assert reply.error_body(401, "User not found.", {"error_type": "authentication"}) == {
        "type": "error", "error": {"type": "authentication_error", "message": "User not found.",
                                   "error_type": "authentication"}}
