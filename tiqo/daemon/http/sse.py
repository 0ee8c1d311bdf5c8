"""The streaming response of the generation routes: the body in the request's own task, one disconnect watcher."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from tiqo.daemon.http.dependencies import until_gone
from tiqo.daemon.runtime.streaming import ClosingStreamingResponse


class StreamResponse(ClosingStreamingResponse):
    """``ClosingStreamingResponse`` without Starlette's task group per response (an ASGI 2.3 server gets one task
    for the body and a cancel scope around both): the body is sent from the request's task while one watcher task
    waits for the disconnect, which ends the body as before (its generator is closed, its ``finally`` runs)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await until_gone(receive, self.stream_response(send))
        if self.background is not None:
            await self.background()
