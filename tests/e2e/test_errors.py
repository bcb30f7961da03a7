"""Every error status in OpenRouter's shape, the SDK's matching exception class for each,
and no money moved by any failed request."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def failing(sim_url, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway of this module's own for tests that make sim/small fail on purpose: on the
    shared gateway a dozen failures in a row would put the endpoint in outage (503) for
    whichever tests come next. Its ledger is verified when the module ends."""
    gw = Gateway(tmp_path_factory.mktemp("failing"), sim_url, {"FAREBOX_HEALTH_OUTAGE_FAILURES": "1000000"}).start()
    gw.org("failing", "5.00")
    key, _ = gw.key("failing")
    yield gw, "failing", key
    report = gw.verify()
    gw.stop()
    assert report["ok"], report


def assert_shape(body, status):
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["metadata"], dict)
    return error


@pytest.mark.parametrize(("payload", "field"), [
    (b'{"model": "sim/small", "messages": [', None),
    (b'[1, 2]', None),
    (b'{"model": "sim/small"}', "messages"),
    (b'{"model": "sim/small", "messages": []}', "messages"),
    (b'{"model": "sim/small", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "sim/small", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": "sim/small", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
     "messages[0].content[0].text"),
    (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "sim/small", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}', "temperature"),
    (b'{"model": "sim/small", "temperature": 3, "messages": [{"role": "user", "content": "x"}]}', "temperature"),
    (b'{"model": "sim/small", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
    (b'{"model": "sim/small", "max_tokens": true, "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
    (b'{"model": "sim/small", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}', "stream"),
    (b'{"model": "sim/small", "stop": [1], "messages": [{"role": "user", "content": "x"}]}', "stop"),
    (b'{"model": "sim/small", "max_tokens": 100000, "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
])
def test_bad_requests_are_400_naming_the_field(funded, payload, field):
    gw, org, key = funded
    before = gw.balance(org)
    status, body, _ = http("POST", f"{gw.api}/chat/completions", raw=payload, key=key)
    assert status == 400
    error = assert_shape(body, 400)
    if field is not None:
        assert error["metadata"]["field"] == field
        assert field in error["message"]
    assert gw.balance(org) == before


def test_sdk_raises_bad_request_for_a_wrong_type(funded):
    gw, _, key = funded
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client(gw, key).chat.completions.create(model="sim/small", messages=MSG, temperature="hot")


def test_authentication_errors(funded):
    gw, org, _key = funded
    for bad in (None, "sk-fb-v1-" + "0" * 64, "not-a-key"):
        status, body, _ = http("POST", f"{gw.api}/chat/completions", {"model": "sim/small", "messages": MSG}, bad)
        assert status == 401
        assert_shape(body, 401)
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-fb-v1-" + "1" * 64).chat.completions.create(model="sim/small", messages=MSG)
    # A disabled key stops working at once; an expired one too.
    key2, hash2 = gw.key(org, name="to-disable")
    gw.admin("PATCH", f"/keys/{hash2}", {"disabled": True})
    with pytest.raises(openai.AuthenticationError, match="disabled"):
        client(gw, key2).chat.completions.create(model="sim/small", messages=MSG)
    key3, _ = gw.key(org, name="expired", expires_at="2020-01-01T00:00:00Z")
    with pytest.raises(openai.AuthenticationError, match="expired"):
        client(gw, key3).chat.completions.create(model="sim/small", messages=MSG)


def test_management_key_cannot_call_inference_and_api_key_cannot_manage(funded):
    gw, _, key = funded
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, gw.management_key).chat.completions.create(model="sim/small", messages=MSG)
    status, body, _ = http("GET", f"{gw.api}/keys?organization=x", key=key)
    assert status == 403
    assert assert_shape(body, 403)["message"] == "Only management keys or members can perform this operation"


def test_insufficient_credits_gives_the_affordability_message(gateway, org_name):
    gateway.org(org_name, "0.001")
    key, _ = gateway.key(org_name)
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, key).chat.completions.create(model="sim/large", messages=MSG, max_tokens=10000)
    error = caught.value
    assert error.status_code == 402
    message = error.body["message"]
    assert message.startswith("This request requires more credits, or fewer max_tokens. "
                              "You requested up to 10000 tokens, but can only afford ")
    affordable = int(message.split("can only afford ")[1].split(".")[0])
    assert 0 < affordable < 10000
    # Asking for what it can afford works.
    completion = client(gateway, key).chat.completions.create(
        model="sim/large", messages=MSG, max_tokens=affordable, extra_body={"sim": {"output_tokens": 3}})
    assert completion.usage.completion_tokens == 3
    # Without max_tokens the hold is the model's max output (64k on sim/large).
    with pytest.raises(openai.APIStatusError, match="You requested up to 64000 tokens"):
        client(gateway, key).chat.completions.create(model="sim/large", messages=MSG)


@pytest.mark.parametrize("reset", [None, "daily"])
def test_key_limits(gateway, org_name, reset):
    gateway.org(org_name, "5.00")
    options = {"limit": "0.0001"} | ({"limit_reset": reset} if reset else {})
    key, khash = gateway.key(org_name, **options)
    ok = client(gateway, key).chat.completions.create(
        model="sim/small", messages=MSG, max_tokens=10, extra_body={"sim": {"output_tokens": 10}})
    data = gateway.admin("GET", f"/keys/{khash}")["data"]
    assert data["usage"] == Decimal(str(ok.usage.model_extra["cost"])) > 0
    assert data["limit_remaining"] == data["limit"] - data["usage"]
    # Remaining, but not enough for this request's hold: 402, pointing at the key's limit.
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, key).chat.completions.create(model="sim/small", messages=MSG, max_tokens=1000)
    assert caught.value.status_code == 402
    assert "raise this key's limit" in caught.value.body["message"]
    # Spent to the limit: the key is exhausted, 403 naming the period.
    gateway.admin("PATCH", f"/keys/{khash}", {"limit": str(data["usage"])})
    with pytest.raises(openai.PermissionDeniedError, match=rf"Key limit exceeded \({reset or 'total'} limit\)"):
        client(gateway, key).chat.completions.create(model="sim/small", messages=MSG, max_tokens=10)
    # Raising the limit lets it spend again; the organization's other keys never noticed.
    gateway.admin("PATCH", f"/keys/{khash}", {"limit": None})
    client(gateway, key).chat.completions.create(model="sim/small", messages=MSG, max_tokens=10)


def test_unknown_model_is_404(funded):
    gw, _, key = funded
    with pytest.raises(openai.NotFoundError, match="nope/nothing"):
        client(gw, key).chat.completions.create(model="nope/nothing", messages=MSG)
    with pytest.raises(openai.NotFoundError):
        client(gw, key).chat.completions.create(model="nope/nothing", messages=MSG, stream=True)


def test_body_over_the_limit_is_413(make_gateway):
    gw = make_gateway(body_bytes_max=2048)
    gw.org("big", "1.00")
    key, _ = gw.key("big")
    huge = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as caught:
        client(gw, key).chat.completions.create(model="sim/small", messages=huge)
    assert caught.value.status_code == 413
    # Also when the client streams the body without announcing its length. The whole
    # chunked body goes out in one write, so the answer cannot race the upload.
    import socket

    host, port = gw.url.removeprefix("http://").split(":")
    payload = b'{"model":"sim/small","messages":[' + b" " * 4096 + b"]}"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                     + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert gw.balance("big") == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("control", "status", "exc"), [
    ({"status": 500}, 502, openai.InternalServerError),
    ({"status": 503}, 503, openai.InternalServerError),
    ({"garbage": True}, 502, openai.InternalServerError),
    ({"cut_after": 0}, 502, openai.InternalServerError),
    ({"status": 429, "retry_after": 7}, 429, openai.RateLimitError),
    ({"status": 400}, 400, openai.BadRequestError),
])
def test_upstream_failures(failing, control, status, exc, stream):
    gw, org, key = failing
    before = gw.balance(org)
    with pytest.raises(exc) as caught:
        result = client(gw, key).chat.completions.create(
            model="sim/small", messages=MSG, stream=stream, extra_body={"sim": control})
        if stream:
            list(result)
    error = caught.value
    assert error.status_code == status
    assert error.body["metadata"]["provider_name"] == "Farebox Simulator"
    if status == 429:
        assert error.response.headers["retry-after"] == "7"
    if status in (400, 429) or control.get("status"):
        assert "raw" in error.body["metadata"]
    assert gw.balance(org) == before


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_timeout_is_504(make_gateway, stream):
    gw = make_gateway(upstream_timeout_s=1, upstream_first_byte_timeout_s=1, hold_timeout_s=30, sse_keepalive_s=5)
    gw.org("slow", "1.00")
    key, _ = gw.key("slow")
    with pytest.raises(openai.InternalServerError) as caught:
        result = client(gw, key).chat.completions.create(
            model="sim/small", messages=MSG, stream=stream, extra_body={"sim": {"hang": True}})
        if stream:
            list(result)
    assert caught.value.status_code == 504
    assert gw.balance("slow") == 1


def test_the_first_byte_bound_ends_with_the_first_token(make_gateway):
    """upstream_first_byte_timeout_s bounds the wait for the first token only: a stream
    whose tokens keep coming for longer than it runs to its end and is billed."""
    gw = make_gateway(upstream_first_byte_timeout_s=1, upstream_idle_timeout_s=5, upstream_timeout_s=30,
                      hold_timeout_s=60)
    gw.org("long", "1.00")
    key, _ = gw.key("long")
    chunks = list(client(gw, key).chat.completions.create(
        model="sim/small", messages=MSG, stream=True,
        extra_body={"sim": {"output_tokens": 6, "tokens_per_s": 2.5}}))   # about 2.4 s of tokens
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert not any(getattr(c, "error", None) for c in chunks)
    assert gw.balance("long") == Decimal("1.00") - Decimal(str(chunks[-1].usage.cost))


def test_failure_after_keepalives_started_arrives_as_an_error_chunk(make_gateway):
    """Once keep-alive comments went out the status line is sent, so a failure before
    the first token is the stream's last event, with the error's own code."""
    gw = make_gateway(upstream_first_byte_timeout_s=1, sse_keepalive_s=0.2)
    gw.org("late", "1.00")
    key, _ = gw.key("late")
    stream = client(gw, key).chat.completions.create(
        model="sim/small", messages=MSG, stream=True, extra_body={"sim": {"hang": True}})
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.body["code"] == 504
    assert caught.value.body["metadata"]["error_type"] == "timeout"
    assert gw.balance("late") == 1


def test_mid_stream_failure_becomes_an_error_chunk_and_bills_what_was_delivered(failing):
    gw, org, key = failing
    before = gw.balance(org)
    stream = client(gw, key).chat.completions.create(
        model="sim/small", messages=MSG, stream=True, extra_body={"sim": {"cut_after": 3, "output_tokens": 20}})
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert "broke off" in str(caught.value) or "closed" in str(caught.value)
    # The upstream sent 3 tokens then broke; when the break reaches the gateway before it
    # has read them all, the unread ones are lost. What matters: billed == delivered.
    content = [c for c in received if c.choices and c.choices[0].delta.content]
    assert 1 <= len(content) <= 3
    gen_id = received[0].id
    status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
    assert status == 200
    record = data["data"]
    assert record["finish_reason"] == "error" and record["tokens_completion"] == len(content)
    assert record["usage_estimated"] is True
    assert record["total_cost"] > 0
    assert gw.balance(org) == before - record["usage"]


def test_unknown_path_and_method(gateway):
    status, body, _ = http("GET", f"{gateway.api}/nothing-here")
    assert status == 404
    assert_shape(body, 404)
    status, body, _ = http("DELETE", f"{gateway.api}/chat/completions")
    assert status == 405
    assert_shape(body, 405)
