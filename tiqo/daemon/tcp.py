"""The optional TCP listener (``daemon.listen``, off by default): OpenAI-compatible routes for other machines or
containers, behind bearer tokens that map to users.

The Unix socket is private to the daemon's OS user, so it trusts its callers (an app may name its own users). A TCP
caller is trusted with nothing: it must send ``Authorization: Bearer <token>``; the token names the user, the user's
``[users.NAME]`` table gives the tier, and any ``x-tiqo-user`` / ``x-tiqo-tier`` it sends is replaced. Only the
``/v1/*`` routes and the health check are served there; management stays on the socket. Tokens are stored as
SHA-256 hashes (``[users.NAME] token_sha256``), so config.toml never holds one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

ALLOWED_PREFIXES = ("/v1/",)
ALLOWED_PATHS = ("/tiqo/health",)
DROPPED_HEADERS = {b"x-tiqo-user", b"x-tiqo-tier", b"authorization"}


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
        if scope["type"] != "http" or not _over_tcp(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not (path.startswith(ALLOWED_PREFIXES) or path in ALLOWED_PATHS):
            await _deny(
                send,
                403,
                "only the /v1 routes are served over TCP; manage tiqo on its Unix socket",
                "permission_error",
                "socket_only",
            )
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
        scheme, _, token = auth.partition(" ")
        user = self._user_of(token.strip()) if scheme.lower() == "bearer" else None
        if path not in ALLOWED_PATHS and user is None:
            await _deny(
                send, 401, "a valid bearer token is required over TCP", "authentication_error", "invalid_api_key"
            )
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in DROPPED_HEADERS]
        if user is not None:
            headers.append((b"x-tiqo-user", user.encode()))
        await self.app({**scope, "headers": headers}, receive, send)

    def _user_of(self, token: str) -> str | None:
        if not token:
            return None
        digest = token_hash(token)
        for name, entry in self.users().items():
            stored = entry.get("token_sha256") if isinstance(entry, dict) else None
            if isinstance(stored, str) and hmac.compare_digest(stored, digest):
                return str(name)
        return None


def _over_tcp(scope: Scope) -> bool:
    server = scope.get("server")
    return isinstance(server, (tuple, list)) and len(server) == 2 and server[1] is not None


async def _deny(send: Send, status: int, message: str, type_: str, code: str) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": type_,
                "code": code,
                "hint": "create a token with `tiqo users token NAME` on the daemon's machine",
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
