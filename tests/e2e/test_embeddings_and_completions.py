"""POST /api/v1/embeddings and the legacy POST /api/v1/completions through a real gateway
and simulator, with the official openai SDK as the client."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import http

EMBED_PRICE = Decimal("0.00000002")
SMALL_PROMPT, SMALL_COMPLETION = Decimal("0.00000015"), Decimal("0.0000006")


def generation(gw, key: str, gen_id: str) -> dict:
    status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
    assert status == 200, data
    return data["data"]


def test_embeddings_are_billed_on_prompt_tokens(funded):
    gw, org, key = funded
    before = gw.balance(org)
    raw = client(gw, key).embeddings.with_raw_response.create(
        model="sim/embed", input=["first text to embed", "second one"], dimensions=64)
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 64 for d in result.data)
    assert result.model == "sim/embed"
    usage = result.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens
    cost = Decimal(str(usage.model_extra["cost"]))
    assert cost == usage.prompt_tokens * EMBED_PRICE > 0
    assert gw.balance(org) == before - cost
    record = generation(gw, key, raw.headers["x-generation-id"])
    assert record["tokens_prompt"] == usage.prompt_tokens and record["tokens_completion"] == 0
    assert Decimal(str(record["total_cost"])) == cost


def test_embeddings_as_base64_and_token_arrays(funded):
    gw, _, key = funded
    result = client(gw, key).embeddings.create(model="sim/embed", input=[[1, 2, 3], [4, 5]])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0  # the SDK decodes base64 itself
    assert result.usage.prompt_tokens == 5


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "sim/embed"}, "input"),
    ({"model": "sim/embed", "input": []}, "input"),
    ({"model": "sim/embed", "input": [""]}, "input[0]"),
    ({"model": "sim/embed", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "sim/embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "sim/small", "input": "x"}, "model"),
])
def test_bad_embedding_requests_name_the_field_and_cost_nothing(funded, body, field):
    gw, org, key = funded
    before = gw.balance(org)
    status, data, _ = http("POST", f"{gw.api}/embeddings", body, key=key)
    assert status == 400, data
    assert data["error"]["metadata"]["field"] == field
    assert gw.balance(org) == before


def test_chat_with_an_embedding_model_is_a_clear_400(funded):
    gw, _, key = funded
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client(gw, key).chat.completions.create(model="sim/embed", messages=[{"role": "user", "content": "hi"}])


def test_legacy_completion_shape_and_charge(funded):
    gw, org, key = funded
    before = gw.balance(org)
    raw = client(gw, key).completions.with_raw_response.create(model="sim/small", prompt="Once upon a time",
                                                               max_tokens=12)
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id == raw.headers["x-generation-id"]
    assert completion.choices[0].text and completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert 0 < usage.completion_tokens <= 12
    cost = Decimal(str(usage.model_extra["cost"]))
    assert cost == usage.prompt_tokens * SMALL_PROMPT + usage.completion_tokens * SMALL_COMPLETION
    assert gw.balance(org) == before - cost
    assert Decimal(str(generation(gw, key, completion.id)["total_cost"])) == cost


def test_legacy_completion_streams_text_and_usage(funded):
    gw, org, key = funded
    before = gw.balance(org)
    chunks = list(client(gw, key).completions.create(model="sim/small", prompt="Stream a story", stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    cost = Decimal(str(final.usage.model_extra["cost"]))
    assert cost == final.usage.prompt_tokens * SMALL_PROMPT + final.usage.completion_tokens * SMALL_COMPLETION
    assert gw.balance(org) == before - cost


def test_legacy_completion_rejects_batches(funded):
    gw, _, key = funded
    status, data, _ = http("POST", f"{gw.api}/completions", {"model": "sim/small", "prompt": ["a", "b"]}, key=key)
    assert status == 400 and data["error"]["metadata"]["field"] == "prompt"
