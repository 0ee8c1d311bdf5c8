"""The ASGI application: middleware, error shapes and routers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiqo import __version__
from tiqo.core.errors import TiqoError
from tiqo.daemon.http.dependencies import Services
from tiqo.daemon.http.json_bounds import ExactCounter, JsonBounds
from tiqo.daemon.http.openapi_errors import document_errors
from tiqo.daemon.http.routes.audio import router as audio_router
from tiqo.daemon.http.routes.embeddings import router as embeddings_router
from tiqo.daemon.http.routes.gateway import router as gateway_router
from tiqo.daemon.http.routes.images import router as images_router
from tiqo.daemon.http.routes.jobs import router as jobs_router
from tiqo.daemon.http.routes.ledger import router as ledger_router
from tiqo.daemon.http.routes.manage import router as manage_router
from tiqo.daemon.http.routes.metrics import router as metrics_router
from tiqo.daemon.http.routes.openai import router as openai_router
from tiqo.daemon.http.routes.vectors import router as vectors_router
from tiqo.daemon.http.tcp import BearerAuth

log = logging.getLogger("tiqo.http")

# The HTTP parser buffers a request's headers whole: more than this is garbage or an attack, never a client of tiqo.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 256


class RequestContext:
    """Pure ASGI middleware: request id header, header (431) and body size limits (413), one access-log line per
    request."""

    def __init__(
        self, app: ASGIApp, max_body: int, max_audio: int | None = None, send_timeout: float | None = None
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_audio = max_body if max_audio is None else max_audio
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = "req_" + uuid.uuid4().hex[:24]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 0
        audio = scope["path"].startswith("/v1/audio/")
        limit, setting = (self.max_audio, "stt.max_upload") if audio else (self.max_body, "daemon.max_request_size")
        headers = scope["headers"]
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
            await _headers_too_large(send, rid, len(headers))
            return
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, rid, int(declared), limit, setting)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is larger than {limit} bytes (setting {setting})")
            return message

        # A client that leaves the answer unread would hold its model slot (and the engine) forever: past the
        # deadline the send fails, the response ends, and the slot and buffers are freed.
        deadline = SendDeadline(self.send_timeout)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-tiqo-request-id", rid.encode())]
            await deadline.send(send, message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            slow = exc if isinstance(exc, ClientTooSlow) else _within(exc, ClientTooSlow)
            if slow is None:
                raise
            log.warning("%s %s: %s; connection dropped %s", scope["method"], scope["path"], slow, rid)
            status = 499
        finally:
            deadline.close()
            log.info(
                "%s %s %s %.1fms %s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                rid,
            )


class SendDeadline:
    """Each send of one response must end within ``seconds`` of its start, kept by one timer per response rather
    than a timeout context (a timer armed and cancelled) per send: the timer wakes at the earliest moment the send
    in flight could be late, and cancels the sending task only when that send is still waiting then."""

    __slots__ = ("cancelling", "expired", "loop", "seconds", "since", "task", "timer")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.loop = asyncio.get_running_loop()
        self.since: float | None = None  # when the send in flight began (None: none is)
        self.task: asyncio.Task[Any] | None = None  # the task sending it (a task group may send from a task of its own)
        self.cancelling = 0
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False

    async def send(self, send: Send, message: Message) -> None:
        if self.seconds is None:  # no deadline (daemon.send_timeout unset)
            await send(message)
            return
        task = asyncio.current_task()
        assert task is not None
        self.since, self.task, self.cancelling = self.loop.time(), task, task.cancelling()
        if self.timer is None:
            self.timer = self.loop.call_at(self.since + self.seconds, self._check)
        try:
            await send(message)
        except asyncio.CancelledError:
            if self.expired and task.uncancel() <= self.cancelling:
                raise ClientTooSlow(self.seconds) from None
            raise
        finally:
            self.since = None

    def _check(self) -> None:
        self.timer = None
        if self.since is None or self.task is None:
            return  # no send in flight: the next one arms the timer again
        due = self.since + (self.seconds or 0.0)
        if self.loop.time() >= due:
            self.expired = True
            self.task.cancel()
        else:
            self.timer = self.loop.call_at(due, self._check)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ClientTooSlow(Exception):
    def __init__(self, seconds: float | None) -> None:
        super().__init__(f"the client read nothing for {seconds:g} s (daemon.send_timeout)")


def _within(exc: BaseException, kind: type[Exception]) -> BaseException | None:
    """The ``kind`` exception inside a (nested) exception group, as task groups raise them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _within(inner, kind)
            if found is not None:
                return found
    return exc if isinstance(exc, kind) else None


async def _too_large(send: Send, rid: str, size: int, limit: int, setting: str) -> None:
    body = TiqoError(
        f"request body is {size} bytes; the limit is {limit}",
        hint=f"raise it with `tiqo config set {setting} {max(64, 2 * size >> 20)}MiB`",
    ).to_body()
    body["error"].update(type="invalid_request_error", code="payload_too_large")
    response = JSONResponse(body, status_code=413, headers={"x-tiqo-request-id": rid})
    await response({"type": "http"}, _no_receive, send)


async def _headers_too_large(send: Send, rid: str, count: int) -> None:
    body = TiqoError(
        f"the request's {count} headers are too large (at most {MAX_HEADERS} headers, {MAX_HEADER_BYTES} bytes)",
        hint="send large values in the body, not in headers",
    ).to_body()
    body["error"].update(type="invalid_request_error", code="headers_too_large")
    response = JSONResponse(body, status_code=431, headers={"x-tiqo-request-id": rid})
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def error_response(
    status: int,
    message: str,
    *,
    type_: str,
    code: str,
    param: str | None = None,
    hint: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    err: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if param is not None:
        err["param"] = param
    if hint:
        err["hint"] = hint
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TiqoError)
    async def tiqo_error(request: Request, exc: TiqoError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return error_response(
                400,
                f"request body is not valid JSON: {first.get('msg')}",
                type_="invalid_request_error",
                code="invalid_json",
                hint="send a JSON object with Content-Type: application/json",
            )
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_response(
            422,
            message,
            type_="invalid_request_error",
            code="validation_error",
            param=field,
            hint="the request's schema is in GET /openapi.json",
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        messages = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed here"}
        message = messages.get(exc.status_code) or str(exc.detail)
        hint = "see the routes at GET /openapi.json" if exc.status_code in (404, 405) else None
        if exc.status_code == 413:
            setting = "stt.max_upload" if request.url.path.startswith("/v1/audio/") else "daemon.max_request_size"
            hint = f"raise it with `tiqo config set {setting} 1GiB`"
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "error")
        return error_response(exc.status_code, message, type_="invalid_request_error", code=code, hint=hint)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            f"internal error: {type(exc).__name__}: {exc}",
            type_="server_error",
            code="internal_error",
            hint="this is a bug in tiqo; details are in `tiqo daemon logs`",
        )


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        counter.close()
        log.info("shutting down: unloading models")
        await services.close()

    app = FastAPI(
        title="tiqo",
        version=__version__,
        description="Local-first AI services: an OpenAI-compatible API plus tiqo's own management routes.",
        lifespan=lifespan,
    )
    app.state.services = services  # what the routes call (dependencies.services_of)
    app.state.metrics = services.metrics  # what GET /metrics reads (None: metrics.enabled is off)
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(audio_router)
    app.include_router(embeddings_router)
    app.include_router(manage_router)
    app.include_router(gateway_router)
    app.include_router(ledger_router)
    app.include_router(vectors_router)
    app.include_router(jobs_router)
    app.include_router(images_router)
    app.include_router(metrics_router)
    document_errors(app)
    counter = ExactCounter()
    app.add_middleware(JsonBounds, max_values=services.settings["daemon.max_json_values"], counter=counter)
    app.add_middleware(BearerAuth, users=lambda: services.settings.toml.get("users", {}))
    app.add_middleware(
        RequestContext,
        max_body=services.settings["daemon.max_request_size"],
        max_audio=services.settings["stt.max_upload"],
        send_timeout=services.settings["daemon.send_timeout"],
    )
    return app
