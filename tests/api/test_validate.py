from __future__ import annotations

import pytest

from farebox.api.validate import validate_chat
from farebox.errors import BadRequest

OK = {"model": "a/b", "messages": [{"role": "user", "content": "hi"}]}


def test_a_minimal_request_and_unknown_fields_pass():
    validate_chat(dict(OK))
    validate_chat(dict(OK, anything={"goes": 1}, max_tokens=5, stop="x", temperature=0, top_p=1))
    validate_chat({"models": ["a/b"], "messages": OK["messages"]})


@pytest.mark.parametrize(("change", "field"), [
    ({"messages": None}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
    ({"model": ""}, "model"),
    ({"model": None}, "model"),
    ({"models": "a/b"}, "models"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 1.5}, "top_k"),
    ({"n": 0}, "n"),
    ({"seed": "1"}, "seed"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [1]}, "tools[0]"),
    ({"provider": []}, "provider"),
    ({"session_id": "x" * 257}, "session_id"),
    ({"logprobs": 1}, "logprobs"),
])
def test_errors_name_the_field(change, field):
    body = dict(OK, **change)
    with pytest.raises(BadRequest) as caught:
        validate_chat(body)
    assert caught.value.metadata["field"] == field
    assert caught.value.status == 400


def test_models_limit_message_is_openrouters():
    with pytest.raises(BadRequest, match=r"^'models' array must have 3 items or fewer\.$"):
        validate_chat(dict(OK, models=["a/b", "c/d", "e/f", "g/h"]))
