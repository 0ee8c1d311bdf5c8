"""The optional TCP listener (``daemon.listen``, off by default): OpenAI-compatible routes for other machines or
containers, behind bearer tokens that map to users.

The Unix socket is private to the daemon's OS user, so it trusts its callers (an app may name its own users). A TCP
caller is trusted with nothing: it must send ``Authorization: Bearer <token>``; the token names the user, the user's
``[users.NAME]`` table gives the tier, and any ``x-tiqo-user`` / ``x-tiqo-tier`` it sends is replaced. Only the
``/v1/*`` routes, ``/metrics`` and the health check are served there; management stays on the socket. Tokens are
stored as SHA-256 hashes (``[users.NAME] token_sha256``), so config.toml never holds one.

A scrape token (``[users.NAME] role = "metrics"``, made by ``tiqo users token NAME --scrape``) reads ``GET /metrics``
and nothing else (403 elsewhere); a user's token does not read it (403): metrics show every user's traffic.

What a TCP caller is refused, whatever it sends:
- a tier of its own: a user whose table names none gets ``daemon.listen_tier`` (``free``: local models only), never
  the unrestricted ``routing.tier`` of the socket's callers (``routing_config.tcp_tier``);
- ``keep_alive``: shared models stay loaded for ``scheduler.keep_alive`` (a remote caller can neither pin nor unload
  them); and a ``user`` of its choosing upstream (providers see the token's user);
- anything but HTTP (websocket and other ASGI scopes never reach the app);
- more than ``daemon.listen_max_connections`` connections at once (503; the Unix socket is never counted);
- the health check's details: without or with a token it answers ``{"status": "ok"}`` only (no pid, no paths).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tiqo.protocol.headers import encode_name

log = logging.getLogger("tiqo.tcp")

ALLOWED_PREFIXES = ("/v1/",)
HEALTH = "/tiqo/health"
METRICS = "/metrics"
SCRAPE_ROLE = "metrics"  # [users.NAME] role of a scrape token
DROPPED_HEADERS = {b"x-tiqo-user", b"x-tiqo-tier", b"authorization"}
TCP_USER = "tiqo.tcp_user"  # key in the request's ASGI state: the user a TCP caller's token names
TOKEN_HINT = "create a token with `tiqo users token NAME` on the daemon's machine"


def new_token() -> tuple[str, str]:
    """A fresh token and the hash config.toml keeps."""
    token = "tq-" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_listen(text: str) -> tuple[str, int] | None:
    """``127.0.0.1:8311`` / ``:8311`` (all interfaces) / ``8311`` (loopback) / ``""`` (off)."""
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"daemon.listen {text!r} is not HOST:PORT")
    if not sep:
        host = "127.0.0.1"
    return (host.strip("[]") or "0.0.0.0"), int(port)


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class BearerAuth:
    """ASGI middleware: requests that arrive over TCP must carry a known bearer token."""

    def __init__(self, app: ASGIApp, users: Callable[[], Mapping[str, Any]]) -> None:
        self.app = app
        self.users = users  # the [users] table, read per request so new tokens work at once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _over_tcp(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websocket or anything else: never past this point
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "only HTTP is served over TCP"})
            return
        path = scope["path"]
        if path == HEALTH and scope["method"] in ("GET", "HEAD"):
            await _health(send, head=scope["method"] == "HEAD")
            return
        if path != METRICS and not path.startswith(ALLOWED_PREFIXES):
            await _deny(
                send,
                403,
                "only the /v1 routes and /metrics are served over TCP; manage tiqo on its Unix socket",
                "permission_error",
                "socket_only",
            )
            return
        caller = self._caller(scope)
        if caller is None:
            await _deny(
                send, 401, "a valid bearer token is required over TCP", "authentication_error", "invalid_api_key"
            )
            return
        user, scraper = caller
        if scraper != (path == METRICS):
            await _deny(send, 403, *_WRONG_TOKEN[scraper])
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in DROPPED_HEADERS]
        headers.append((b"x-tiqo-user", encode_name(user).encode("ascii")))  # what request_meta decodes
        state = {**(scope.get("state") or {}), TCP_USER: user}
        await self.app({**scope, "headers": headers, "state": state}, receive, send)

    def _caller(self, scope: Scope) -> tuple[str, bool] | None:
        """The user the request's bearer token names, and whether it is a scrape token; None without a known one."""
        auth = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = token_hash(token)
        for name, entry in self.users().items():
            stored = entry.get("token_sha256") if isinstance(entry, dict) else None
            if isinstance(stored, str) and hmac.compare_digest(stored, digest):
                return str(name), entry.get("role") == SCRAPE_ROLE
        return None


# (message, type, code, hint) of a 403 for a token on the wrong route, by whether it is a scrape token
_WRONG_TOKEN = {
    True: (
        "a scrape token reads GET /metrics and nothing else",
        "permission_error",
        "scrape_only",
        "make a user's token for the /v1 routes with `tiqo users token NAME`",
    ),
    False: (
        "a user's token does not read /metrics (it shows every user's traffic); use a scrape token",
        "permission_error",
        "scrape_token_required",
        "make one with `tiqo users token NAME --scrape` on the daemon's machine",
    ),
}


def tcp_user(scope: Scope) -> str | None:
    """The user a TCP caller's token names; None for the Unix socket's callers."""
    state = scope.get("state")
    user = state.get(TCP_USER) if isinstance(state, dict) else None
    return user if isinstance(user, str) else None


def _over_tcp(scope: Scope) -> bool:
    server = scope.get("server")
    return isinstance(server, (tuple, list)) and len(server) == 2 and server[1] is not None


async def _health(send: Send, *, head: bool) -> None:
    body = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _deny(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str,
    hint: str = TOKEN_HINT,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = json.dumps({"error": {"message": message, "type": type_, "code": code, "hint": hint}})
    extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra, *headers],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def connection_limited(http: str, limit: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol ``http`` (``h11`` or ``httptools``), serving at most ``limit`` TCP connections at
    once (``daemon.listen_max_connections``). Each one over it answers its requests with a 503 and is closed;
    connections on the Unix socket are never counted, so a TCP flood cannot lock the daemon's owner out."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    base: Any = import_from_string(HTTP_PROTOCOLS[http])
    served: set[asyncio.Protocol] = set()
    last_warning = [0.0]

    class ConnectionLimited(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if not isinstance(transport.get_extra_info("sockname"), tuple):  # a Unix socket's is a path
                return
            if len(served) < limit:
                served.add(self)
                return
            self.app = _too_many_connections
            if time.monotonic() - last_warning[0] > 60:
                last_warning[0] = time.monotonic()
                log.warning("TCP connection refused: %d open (daemon.listen_max_connections)", len(served))

        def connection_lost(self, exc: Exception | None) -> None:
            served.discard(self)
            super().connection_lost(exc)

    return ConnectionLimited


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await _deny(
        send,
        503,
        "too many TCP connections to tiqo at once; try again shortly",
        "server_error",
        "too_many_connections",
        hint="close idle connections, or raise the limit: `tiqo config set daemon.listen_max_connections 256`",
        headers=((b"retry-after", b"1"), (b"connection", b"close")),
    )
