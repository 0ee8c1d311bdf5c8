"""The client's transport: HTTP over the daemon's Unix socket, error decoding, and starting the daemon when a call
finds none (autostart)."""

from __future__ import annotations

import sys
import time
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from tiqo.client.streams import ApiError, DaemonUnavailable, Stream
from tiqo.core.paths import socket_answers
from tiqo.core.settings import Settings
from tiqo.protocol.headers import encode_name_headers

if TYPE_CHECKING:
    import httpx

EXIT_ALREADY_RUNNING = 3  # the daemon's exit code when another one holds the lock


def import_httpx() -> ModuleType:
    """httpx without its own command line: ``httpx/__init__`` imports ``httpx._main`` (click, rich, pygments: a
    third of a warm `tiqo ask`) for its ``httpx.main`` entry point, and falls back to a stub when that import fails.
    A None in ``sys.modules`` makes it fail for that one import; tiqo never calls ``httpx.main``."""
    if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]  # None in sys.modules: "cannot import"
        try:
            import httpx
        finally:
            del sys.modules["httpx._main"]
    import httpx

    return httpx


class Transport:
    def __init__(self, settings: Settings | None = None, *, autostart: bool | None = None) -> None:
        self.settings = settings or Settings.load()
        self.socket_path = self.settings.socket_path
        self.autostart = self.settings["daemon.autostart"] if autostart is None else autostart
        self._http: httpx.Client | None = None

    # ------------------------------------------------------------------ transport
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            httpx = import_httpx()
            self._http = httpx.Client(
                # Plain HTTP over a Unix socket: no TLS, so no CA bundle to load (that alone took 50+ ms a command).
                transport=httpx.HTTPTransport(uds=str(self.socket_path), verify=False),
                base_url="http://tiqo",
                timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        stream: bool = False,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        files: Any = None,
        data: Any = None,
    ) -> httpx.Response:
        httpx = import_httpx()
        for attempt in (1, 2):
            try:
                request = self.http.build_request(
                    method,
                    path,
                    json=json_body,
                    headers=encode_name_headers(headers),  # non-ASCII user names, percent-encoded
                    params=params,
                    files=files,
                    data=data,
                    timeout=httpx.Timeout(timeout, connect=5.0) if timeout else httpx.USE_CLIENT_DEFAULT,
                )
                return self.http.send(request, stream=stream)
            except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError):
                if attempt == 2:
                    raise DaemonUnavailable(
                        f"cannot reach the tiqo daemon at {self.socket_path}",
                        hint="see `tiqo daemon status` and `tiqo daemon logs`",
                    ) from None
                self.start_daemon()
            except httpx.RemoteProtocolError as exc:
                raise DaemonUnavailable(
                    f"the daemon closed the connection: {exc}",
                    hint="it may have crashed or been stopped; see `tiqo daemon logs`",
                ) from None
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        response = self._send(method, path, json_body=json_body, timeout=timeout, headers=headers, params=params)
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text[:500] or f"HTTP {response.status_code}"}}
        if response.status_code >= 400:
            raise ApiError(response.status_code, body, dict(response.headers))
        return body

    def stream(self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Stream:
        response = self._send("POST", path, json_body={**payload, "stream": True}, stream=True, headers=headers)
        if response.status_code >= 400:
            response.read()
            self._decode(response)
        return Stream(response)

    # ------------------------------------------------------------------ daemon
    def is_running(self) -> bool:
        return socket_answers(self.socket_path)

    def start_daemon(self) -> int:
        """Start the daemon and wait until it answers. Returns its pid."""
        from tiqo.client import process  # spawning and supervising: only when no daemon answered

        if not self.autostart:
            raise DaemonUnavailable(
                "the tiqo daemon is not running and autostart is off",
                hint="start it with `tiqo daemon start` (autostart is off because of --no-autostart, "
                "TIQO_NO_AUTOSTART=1 or daemon.autostart = false)",
            )
        process.clean_stale(self.settings)
        proc = process.spawn(self.settings)
        deadline = time.monotonic() + float(self.settings["daemon.startup_timeout"])
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None and code != EXIT_ALREADY_RUNNING:
                last = "\n".join(process.tail(self.settings.paths.log_file, 8))
                raise DaemonUnavailable(
                    f"the daemon exited during start-up (exit code {code}):\n{last}",
                    hint="see `tiqo daemon logs`; `tiqo daemon run` shows it in the foreground",
                )
            if socket_answers(self.socket_path):
                try:
                    return int(self.health(timeout=5.0)["pid"])
                except Exception:  # still starting: the socket is bound before the app is ready
                    pass
            time.sleep(0.05)
        raise DaemonUnavailable(
            f"the daemon did not answer within {self.settings['daemon.startup_timeout']:.0f}s",
            hint="see `tiqo daemon logs`, or raise daemon.startup_timeout",
        )

    def health(self, timeout: float | None = 5.0) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/health", timeout=timeout)
        return result
