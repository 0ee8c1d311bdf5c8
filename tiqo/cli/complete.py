"""Shell completion of the names the daemon knows: models, providers, keys.

Every TAB runs the CLI, so this stays cheap: the standard library's HTTP client on the Unix socket with a short
timeout, no httpx, and never starting the daemon. When it is not running nothing is offered (the shell falls back
to nothing rather than waiting)."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import quote

TIMEOUT_S = 0.5


def fetch(path: str, timeout: float = TIMEOUT_S) -> Any:
    """``GET path`` from the running daemon as JSON, or None (not running, slow, an error: no completions)."""
    try:
        from tiqo.core.settings import Settings

        sock = str(Settings.load().socket_path)
    except Exception:  # broken settings: completing must never print a traceback into the shell
        return None
    import http.client  # here, not at import: every `tiqo` command loads this module, few complete

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.settimeout(self.timeout)
            unix.connect(sock)
            self.sock = unix

    conn = UnixConnection("tiqo", timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _matching(pairs: list[tuple[str, str]], incomplete: str) -> list[tuple[str, str]]:
    return [(name, help_) for name, help_ in pairs if name.startswith(incomplete)]


def _models(local_only: bool) -> list[tuple[str, str]]:
    data = fetch("/tiqo/models") or {}
    out = []
    for m in data.get("models") or []:
        if local_only and m.get("provider"):
            continue
        where = f"{m['provider']} (external)" if m.get("provider") else f"local {m.get('kind') or ''}".strip()
        out.append((str(m["name"]), str(m.get("description") or where)))
    if not local_only:
        out += [(str(a), "alias: " + ", ".join(map(str, t))) for a, t in (data.get("aliases") or {}).items()]
    return out


def models(incomplete: str) -> list[tuple[str, str]]:
    """Every model name and alias (for -m/--model)."""
    return _matching(_models(local_only=False), incomplete)


def local_models(incomplete: str) -> list[tuple[str, str]]:
    """Models that load on this machine (for models load/unload)."""
    return _matching(_models(local_only=True), incomplete)


def providers(incomplete: str) -> list[tuple[str, str]]:
    data = fetch("/tiqo/providers") or {}
    pairs = [(str(p["name"]), f"{p.get('kind')} · {p.get('status')}") for p in data.get("providers") or []]
    return _matching(pairs, incomplete)


def keys(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    """Key names of the provider already on the command line (``tiqo keys rm PROVIDER <TAB>``)."""
    provider = (getattr(ctx, "params", None) or {}).get("provider")
    path = "/tiqo/keys" + (f"?provider={quote(str(provider), safe='')}" if provider else "")
    data = fetch(path) or {}
    pairs = [(str(k["name"]), f"{k['provider']} · {k.get('status')}") for k in data.get("keys") or []]
    return _matching(pairs, incomplete)


def voices(incomplete: str) -> list[tuple[str, str]]:
    """Voice names for `tiqo speak --voice` (local Piper voices the daemon has)."""
    data = fetch("/tiqo/voices") or {}
    pairs = [(str(v["name"]), str(v.get("description") or v.get("language") or "")) for v in data.get("voices") or []]
    return _matching(pairs, incomplete)
