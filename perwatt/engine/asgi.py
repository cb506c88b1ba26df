"""The HTTP surface of ``perwatt serve``: a Starlette app whose routes validate a request
(:mod:`perwatt.engine.openai_request`) and run it through the engine thread
(:mod:`perwatt.engine.openai_bridge`).

starlette is the optional ``server`` extra: this module imports it at the top, and
:meth:`perwatt.engine.server.OpenAIServer.app` imports this module only once it has checked that
the extra is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from perwatt.engine.openai_bridge import BatcherBridge
from perwatt.engine.openai_request import APIError, RequestParser


def error_response(e: APIError) -> Response:
    return JSONResponse(e.body(), status_code=e.status)


async def wait_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


class EventStream(StreamingResponse):
    """SSE body that also watches for the client going away and cancels its request.

    Starlette's own StreamingResponse notices a disconnect only when a write fails
    (ASGI spec >= 2.4) or not at all for a request whose body is still buffered; a
    decode can run for minutes, so this one listens for ``http.disconnect`` itself.
    """

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.body_iter = body
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for data in self.body_iter:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump_task, watch_task):
                t.cancel()
            for t in (pump_task, watch_task):
                # The client going away surfaces here as OSError/ClientDisconnect.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            aclose = getattr(self.body_iter, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            # Client gone or stream done: the slot is freed at the next step boundary
            # (a no-op for a request that already finished).
            self.on_close()


async def read_json(request: HTTPRequest) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


def build_app(parser: RequestParser, bridge: BatcherBridge) -> Starlette:
    """The Starlette app: the routes of :mod:`perwatt.engine.server`'s docstring."""

    async def generate(request: HTTPRequest, *, chat: bool) -> Response:
        try:
            parsed = parser.parse(await read_json(request), chat=chat)
            req, queue = bridge.submit(parsed)  # errors here are still a proper 4xx
            if parsed.stream:
                return EventStream(
                    bridge.stream(parsed, req, queue), lambda: bridge.batcher.cancel(req)
                )
            result_task = asyncio.ensure_future(bridge.complete(parsed, req, queue))
            watch_task = asyncio.ensure_future(wait_disconnect(request.receive))
            try:
                await asyncio.wait({result_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch_task
            if not result_task.done():  # client gone: drop the request, free its slot
                bridge.batcher.cancel(req)
                result_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, APIError):
                    await result_task
                return Response(status_code=499)
            return JSONResponse(result_task.result())
        except APIError as e:
            return error_response(e)

    async def completions(request: HTTPRequest) -> Response:
        return await generate(request, chat=False)

    async def chat_completions(request: HTTPRequest) -> Response:
        return await generate(request, chat=True)

    async def models(request: HTTPRequest) -> Response:
        return JSONResponse(bridge.models())

    async def health(request: HTTPRequest) -> Response:
        if not bridge.batcher.running:
            return error_response(APIError(503, "the engine thread is not running"))
        return Response(status_code=200)

    async def metrics(request: HTTPRequest) -> Response:
        return Response(
            bridge.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def not_found(request: HTTPRequest, exc: Exception) -> Response:
        return error_response(APIError(404, f"no route {request.method} {request.url.path}"))

    async def bad_method(request: HTTPRequest, exc: Exception) -> Response:
        return error_response(
            APIError(405, f"method {request.method} not allowed on {request.url.path}")
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: bad_method},
    )
