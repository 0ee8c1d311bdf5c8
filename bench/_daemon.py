"""Start a tiqo daemon for a benchmark: a private TIQO_HOME, its log in that home, ready once /tiqo/health answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def start_daemon(home: Path, env: dict[str, str], timeout: float = 600) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    """The daemon process and an httpx client on its socket (``timeout``: per request)."""
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with (home / "logs" / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tiqo.daemon"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    sock = str(home / "run" / "tiqo.sock")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://tiqo", timeout=timeout)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"daemon exited with {proc.returncode}; see {home}/logs/daemon.log")
        try:
            if client.get("/tiqo/health").status_code == 200:
                return proc, client
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"daemon did not answer within 60 s; see {home}/logs/daemon.log")


def stop_daemon(proc: subprocess.Popen[bytes], client: httpx.Client) -> None:
    """Ask the daemon to shut down (models unload cleanly); kill it if it does not within 30 s."""
    try:
        client.post("/tiqo/shutdown")
        proc.wait(timeout=30)
    except Exception:
        proc.kill()
        proc.wait()
    client.close()


class RawClient:
    """The lightest HTTP client there is: http.client on the daemon's socket, one kept-alive connection. Measures
    what the daemon costs without a client library's own overhead (httpx adds about a millisecond a request)."""

    def __init__(self, home: Path) -> None:
        import http.client
        import socket

        path = str(home / "run" / "tiqo.sock")

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)

        self.conn = Conn("tiqo")
        self.headers: dict[str, str] = {}  # the last response's headers, lower-cased names

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        sent = {"content-type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        resp = self.conn.getresponse()
        raw = resp.read()
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: daemon answered {resp.status}: {raw[:500]!r}")
        return json.loads(raw)

    def close(self) -> None:
        self.conn.close()
