"""A JSON body is bounded by the work it causes, not only by its bytes.

Parsing and validating JSON costs per value: 16 MiB of tiny messages (~1.7 M values) took 0.38 s in ``json.loads`` and
2.1 s in pydantic here, all of it holding the GIL on the event loop, so every other client waited (a thread does not
help: neither call lets go of the GIL). This middleware counts the body's possible values while it arrives (commas,
``{`` and ``[``: a cheap upper bound, ~2 ms per MiB spread over the chunks) and lets a body under
``daemon.max_json_values`` through untouched. Only a body over that bound is counted exactly, by ``json.loads`` in a
separate process (prose with many commas is fine; 500 k real values are not), so the loop never parses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiqo.core.errors import Busy, TiqoError

log = logging.getLogger("tiqo.http")


def count_values(body: bytes) -> int | str:
    """Values in a JSON document (objects, arrays and scalars, keys not counted), or the parse error's message.
    Runs in the worker process."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return str(exc) or type(exc).__name__
    n, stack = 0, [doc]
    while stack:
        value = stack.pop()
        n += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return n


def upper_bound(chunk: bytes) -> int:
    """Commas, ``{`` and ``[`` in a piece of JSON text. A document holds at most one more value than these (each value
    but the first in a container follows a comma, the first follows its container's opening); separators inside
    strings only make the bound larger."""
    return chunk.count(b",") + chunk.count(b"{") + chunk.count(b"[")


class ExactCounter:
    """One worker process, started on first use (spawned: the daemon's threads and models stay out of it)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def count(self, body: bytes) -> int | str:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.wrap_future(self._pool.submit(count_values, body))
        except BrokenProcessPool:
            self.close()
            raise Busy(
                "the JSON checker process died while reading this body",
                hint="retry; a body this large may need more memory than the machine has free",
                retry_after=1,
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class JsonBounds:
    """Pure ASGI middleware: a JSON body with more than ``max_values`` values is refused with 413 before the app
    parses it; invalid JSON found while counting is refused with 400."""

    def __init__(self, app: ASGIApp, max_values: int, counter: ExactCounter) -> None:
        self.app = app
        self.max_values = max_values
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD") or not self._may_exceed(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        bound = 1
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see what it sent, then that
                await self.app(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            bound += upper_bound(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        if bound > self.max_values:
            try:
                exact = await self.counter.count(body)
            except TiqoError as exc:
                await JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())(scope, receive, send)
                return
            refusal = _refusal(exact, self.max_values)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)

    def _may_exceed(self, scope: Scope) -> bool:
        """A JSON body that could hold more values than the limit: every value takes a byte at least, so a body
        declared no longer than the limit passes untouched (most requests: nothing buffered, nothing counted)."""
        if not _json_body(scope):
            return False
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        return declared is None or not declared.isdigit() or int(declared) > self.max_values


def _json_body(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when it says so, or says nothing."""
    ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"").split(b";")[0].strip().lower()
    return not ctype or ctype == b"application/json" or ctype.endswith(b"+json")


def _replay(body: bytes, receive: Receive, then: Message | None = None) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then is not None:
            return then
        return await receive()

    return replay


def _refusal(exact: int | str, limit: int) -> JSONResponse | None:
    if isinstance(exact, str):
        err: dict[str, Any] = {
            "message": f"request body is not valid JSON: {exact}",
            "type": "invalid_request_error",
            "code": "invalid_json",
            "hint": "send a JSON object with Content-Type: application/json",
        }
        return JSONResponse({"error": err}, status_code=400)
    if exact <= limit:
        return None
    err = {
        "message": f"request body holds {exact} JSON values; the limit is {limit}",
        "type": "invalid_request_error",
        "code": "too_many_json_values",
        "hint": "split it into smaller requests, or raise the limit with "
        f"`tiqo config set daemon.max_json_values {max(exact, 2 * limit)}`",
    }
    return JSONResponse({"error": err}, status_code=413)
