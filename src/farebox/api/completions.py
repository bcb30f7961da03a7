"""POST /api/v1/completions (legacy text completions) and POST /api/v1/embeddings.

Both are OpenAI APIs that only OpenAI-dialect endpoints serve; the relay routes, holds,
settles and records them exactly like chat completions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from farebox.api.chat import stream_to_client
from farebox.api.http import JSON_HEADERS, Request, Response
from farebox.api.inference import json_object, new_request
from farebox.api.validate import validate_completion, validate_embedding
from farebox.ledger.pricing import measure_inputs

if TYPE_CHECKING:
    from farebox.app import Gateway


async def completions(gw: Gateway, req: Request) -> Response | None:
    raw = await req.body(gw.settings.body_bytes_max)
    key = gw.directory.authenticate(req.header(b"authorization"))
    body = json_object(raw)
    validate_completion(body)
    stream = body.get("stream") is True
    request = new_request(gw, req, key, body, api="completion", stream=stream, max_tokens=body.get("max_tokens"),
                          prompt=measure_inputs([body["prompt"]]))
    if not stream:
        answer = await gw.relay.complete(request)
        return Response(200, orjson.dumps(answer), JSON_HEADERS + [(b"x-generation-id", request.gen_id.encode())])
    await stream_to_client(gw, req, request)
    return None


async def embeddings(gw: Gateway, req: Request) -> Response:
    raw = await req.body(gw.settings.body_bytes_max)
    key = gw.directory.authenticate(req.header(b"authorization"))
    body = json_object(raw)
    validate_embedding(body)
    inputs = body["input"]
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    body.pop("stream", None)
    request = new_request(gw, req, key, body, api="embedding", stream=False, max_tokens=None,
                          prompt=measure_inputs(inputs))
    answer = await gw.relay.complete(request)
    return Response(200, orjson.dumps(answer), JSON_HEADERS + [(b"x-generation-id", request.gen_id.encode())])
