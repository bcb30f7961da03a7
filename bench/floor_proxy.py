"""The floor: the least any Python gateway can cost per request on this stack.

A pass-through proxy with no auth, no billing and no records: Starlette on uvicorn
(uvloop + httptools) in front of an aiohttp client. Farebox is measured against it in
the same run; the gap between the two is what our features cost.

    pip install starlette 'uvicorn[standard]' aiohttp orjson
    UPSTREAM=http://127.0.0.1:9000 uvicorn floor_proxy:app --port 9100 --no-access-log \
        --log-level warning --loop uvloop --http httptools

Copied from the CEO's benchmark kit (shared/bench/floor_proxy.py); `chat` is unchanged.
Added for bench/run: `chat_stream` on /s/v1/chat/completions, the streaming floor. It
relays the upstream's SSE bytes to the client as they arrive, without parsing events,
so it is the least a streaming pass-through costs on this stack.
"""
import contextlib
import os

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9000")
session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def lifespan(app):
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await session.close()


async def chat(request):
    body = orjson.loads(await request.body())
    async with session.post(
        f"{UPSTREAM}/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"content-type": "application/json"},
    ) as upstream:
        data = orjson.loads(await upstream.read())
    data["usage"]["cost"] = 0.0
    return Response(orjson.dumps(data), media_type="application/json")


async def chat_stream(request):
    body = orjson.loads(await request.body())
    upstream = await session.post(
        f"{UPSTREAM}/s/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"content-type": "application/json"},
    )

    async def relay():
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.release()

    return StreamingResponse(relay(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/s/v1/chat/completions", chat_stream, methods=["POST"]),
    ],
    lifespan=lifespan,
)
