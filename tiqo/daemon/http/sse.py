"""The streaming response of every streaming route (generation, speech, live events): the body is sent in the
request's own task, one watcher waits for the disconnect, and the body's generator is closed however it ends."""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tiqo.daemon.http.dependencies import until_gone


class StreamResponse(StreamingResponse):
    """Starlette's streaming response with two changes.

    - No task group per response (an ASGI 2.3 server gets one task for the body and a cancel scope around both): the
      body is sent from the request's task while one watcher task waits for the disconnect, which ends the body.
    - The body's generator is closed however the response ends (finished, client gone, send deadline passed,
      cancelled), so its ``finally`` (the model slot, the ledger row) runs at once rather than whenever the garbage
      collector finds the abandoned generator."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await until_gone(receive, self.stream_response(send))
        if self.background is not None:
            await self.background()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
