"""Synchronous client of the daemon over its Unix socket. One method per route; starts the daemon if needed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tiqo.client import process
from tiqo.client.streams import ApiError, DaemonUnavailable, Stream, parse_sse
from tiqo.core.settings import Settings
from tiqo.protocol.headers import encode_name_headers

if TYPE_CHECKING:
    import asyncio

    import httpx

__all__ = ["ApiError", "DaemonUnavailable", "Stream", "TiqoClient", "parse_sse"]

EXIT_ALREADY_RUNNING = 3  # the daemon's exit code when another one holds the lock
RECONNECT_HEALTHY_S = 5.0  # an event stream open this long had been fine: reconnect at once when it drops
RECONNECT_TRIES = 5  # reconnections in a row that each dropped quickly before events() gives up


class TiqoClient:
    def __init__(self, settings: Settings | None = None, *, autostart: bool | None = None) -> None:
        self.settings = settings or Settings.load()
        self.socket_path = self.settings.socket_path
        self.autostart = self.settings["daemon.autostart"] if autostart is None else autostart
        self._http: httpx.Client | None = None

    # ------------------------------------------------------------------ transport
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            import httpx

            self._http = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.socket_path)),
                base_url="http://tiqo",
                timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> TiqoClient:
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
        import httpx

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
        return process.socket_answers(self.socket_path)

    def start_daemon(self) -> int:
        """Start the daemon and wait until it answers. Returns its pid."""
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
            if process.socket_answers(self.socket_path):
                try:
                    return int(self.health(timeout=5.0)["pid"])
                except Exception:  # still starting: the socket is bound before the app is ready
                    pass
            time.sleep(0.05)
        raise DaemonUnavailable(
            f"the daemon did not answer within {self.settings['daemon.startup_timeout']:.0f}s",
            hint="see `tiqo daemon logs`, or raise daemon.startup_timeout",
        )

    # ------------------------------------------------------------------ routes
    def health(self, timeout: float | None = 5.0) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/health", timeout=timeout)
        return result

    def ps(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/ps")
        return result

    def models(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/tiqo/models")["models"])

    def model_catalog(self) -> dict[str, Any]:
        """Models (local and external) and aliases."""
        result: dict[str, Any] = self.request("GET", "/tiqo/models")
        return result

    def add_model(self, name: str, path: str | None = None, **options: Any) -> dict[str, Any]:
        """A local GGUF (``path``) or an external model (``provider=``, ``upstream_model=``, prices, ...)."""
        body = {"name": name, "path": path, **options}
        body = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self.request("POST", "/tiqo/models", body)
        return result

    def remove_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/tiqo/models/{name}")
        return result

    def load(self, name: str, keep_alive: str | None = None) -> dict[str, Any]:
        body = {"keep_alive": keep_alive} if keep_alive is not None else None
        result: dict[str, Any] = self.request("POST", f"/tiqo/models/{name}/load", body)
        return result

    def unload(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/tiqo/models/{name}/unload")
        return result

    def backup(self, path: str, include_keys: bool = False) -> dict[str, Any]:
        """Have the daemon write a backup archive at ``path`` (absolute) while it serves; its summary."""
        result: dict[str, Any] = self.request("POST", "/tiqo/backup", {"path": path, "include_keys": include_keys})
        return result

    def shutdown(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/tiqo/shutdown", timeout=10.0)
        return result

    def chat(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", "/v1/chat/completions", {**payload, "stream": False}, headers=headers
        )
        return result

    def chat_stream(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Stream:
        """``headers``: x-tiqo-user / -tier / -class / -cache / -task (see the README's routing section)."""
        return self.stream("/v1/chat/completions", {"stream_options": {"include_usage": True}, **payload}, headers)

    # ------------------------------------------------------------------ gateway
    def route_explain(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/tiqo/route/explain", body)
        return result

    def providers(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/providers")
        return result

    def add_provider(self, name: str, kind: str, base_url: str | None = None, **options: Any) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "base_url": base_url, **options}
        result: dict[str, Any] = self.request(
            "POST", "/tiqo/providers", {k: v for k, v in body.items() if v is not None}
        )
        return result

    def remove_provider(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/tiqo/providers/{name}")
        return result

    def keys(self, provider: str | None = None) -> list[dict[str, Any]]:
        params = {"provider": provider} if provider else None
        return list(self.request("GET", "/tiqo/keys", params=params)["keys"])

    def add_key(self, provider: str, secret: str, name: str | None = None, **limits: Any) -> dict[str, Any]:
        body = {"provider": provider, "secret": secret, "name": name, **limits}
        result: dict[str, Any] = self.request("POST", "/tiqo/keys", {k: v for k, v in body.items() if v is not None})
        return result

    def remove_key(self, provider: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/tiqo/keys/{provider}/{name}")
        return result

    def set_key_enabled(self, provider: str, name: str, enabled: bool) -> dict[str, Any]:
        action = "enable" if enabled else "disable"
        result: dict[str, Any] = self.request("POST", f"/tiqo/keys/{provider}/{name}/{action}")
        return result

    def plugins(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/plugins")
        return result

    def cache_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/cache")
        return result

    def cache_clear(self, expired_only: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", "/tiqo/cache", params={"expired": str(expired_only).lower()})
        return result

    def users(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/users")
        return result

    def create_token(self, user: str, tier: str | None = None, scrape: bool = False) -> dict[str, Any]:
        body = {k: v for k, v in (("tier", tier), ("scrape", scrape or None)) if v is not None} or None
        result: dict[str, Any] = self.request("POST", f"/tiqo/users/{quote(user, safe='')}/token", body)
        return result

    def revoke_token(self, user: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/tiqo/users/{quote(user, safe='')}/token")
        return result

    def complete(self, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/completions", {**payload, "stream": False})
        return result

    # ------------------------------------------------------------------ ledger and budgets
    # ------------------------------------------------------------------ voice
    def transcribe(
        self,
        audio: bytes,
        filename: str = "audio",
        fields: dict[str, Any] | None = None,
        *,
        translate: bool = False,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Any:
        """``/v1/audio/transcriptions`` (or ``translations``). ``fields``: model, language, response_format,
        timestamp_granularities (a list), prompt, temperature, sample_rate / channels / sample_format (raw PCM).
        JSON formats return a dict, text formats a str; ``stream=True`` returns a Stream of transcript events."""
        path = "/v1/audio/translations" if translate else "/v1/audio/transcriptions"
        form: dict[str, str | list[str]] = {}
        for name, value in (fields or {}).items():
            if isinstance(value, (list, tuple)):
                form[f"{name}[]"] = [str(v) for v in value]
            elif value is not None:
                form[name] = str(value)
        if stream:
            form["stream"] = "true"
        files = {"file": (filename, audio, "application/octet-stream")}
        response = self._send("POST", path, files=files, data=form, headers=headers, stream=stream)
        if stream:
            if response.status_code >= 400:
                response.read()
                self._decode(response)
            return Stream(response)
        if response.status_code < 400 and not response.headers.get("content-type", "").startswith("application/json"):
            return response.text
        return self._decode(response)

    def speech(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        """``/v1/audio/speech``: an open streaming response (iterate ``iter_bytes()``, then ``close()``)."""
        response = self._send("POST", "/v1/audio/speech", json_body=payload, headers=headers, stream=True)
        if response.status_code >= 400:
            response.read()
            self._decode(response)
        return response

    def voices(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/tiqo/voices")
        return result

    def add_voice(self, path: str, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in {"path": path, "name": name, "description": description}.items() if v is not None}
        result: dict[str, Any] = self.request("POST", "/tiqo/voices", body)
        return result

    # ------------------------------------------------------------------ vectors
    @staticmethod
    def _as_user(user: str | None) -> dict[str, str] | None:
        return {"x-tiqo-user": user} if user else None

    def vec_list(self, user: str | None = None) -> list[dict[str, Any]]:
        """Collections the user owns or that others share: name, owner, model, dimension, rows, indexed."""
        return list(self.request("GET", "/tiqo/vectors", headers=self._as_user(user))["collections"])

    def vec_create(
        self,
        name: str,
        model: str | None = None,
        shared: bool = False,
        dimension: int | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "model": model, "shared": shared, "dimension": dimension}
        result: dict[str, Any] = self.request("POST", "/tiqo/vectors", body, headers=self._as_user(user))
        return result

    def vec_remove(self, name: str, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "DELETE", f"/tiqo/vectors/{quote(name, safe='')}", headers=self._as_user(user)
        )
        return result

    def vec_ingest(self, name: str, documents: list[dict[str, Any]], user: str | None = None, **chunking: Any) -> Any:
        """Documents ({source, text, metadata}) chunked and embedded; counts added / unchanged / replaced."""
        body = {"documents": documents, **{k: v for k, v in chunking.items() if v is not None}}
        return self.request("POST", f"/tiqo/vectors/{quote(name, safe='')}/ingest", body, headers=self._as_user(user))

    def vec_upsert(self, name: str, body: dict[str, Any], user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/tiqo/vectors/{quote(name, safe='')}/upsert", body, headers=self._as_user(user)
        )
        return result

    def vec_query(self, name: str, body: dict[str, Any], user: str | None = None) -> dict[str, Any]:
        """{"text" or "vector", "top_k", "filter", "hybrid"} → {"matches": [{id, score, text, metadata}]}."""
        result: dict[str, Any] = self.request(
            "POST", f"/tiqo/vectors/{quote(name, safe='')}/query", body, headers=self._as_user(user)
        )
        return result

    def vec_delete(self, name: str, body: dict[str, Any], user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/tiqo/vectors/{quote(name, safe='')}/delete", body, headers=self._as_user(user)
        )
        return result

    def embed(
        self,
        inputs: str | list[str],
        model: str | None = None,
        dimensions: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``/v1/embeddings``: one vector per input (OpenAI's answer: data[i].embedding, model, usage)."""
        body: dict[str, Any] = {"input": inputs}
        if model is not None:
            body["model"] = model
        if dimensions is not None:
            body["dimensions"] = dimensions
        result: dict[str, Any] = self.request("POST", "/v1/embeddings", body, headers=headers)
        return result

    def usage(self, since: str = "7d", by: str = "day", user: str | None = None) -> dict[str, Any]:
        """Requests, tokens, cost, cache hits and errors since ``since`` (24h, 7d…): a row per ``by`` group, a total."""
        params = {"since": since, "by": by, **({"user": user} if user is not None else {})}
        result: dict[str, Any] = self.request("GET", "/tiqo/usage", params=params)
        return result

    def logs(self, n: int = 20, user: str | None = None) -> list[dict[str, Any]]:
        """The ``n`` most recent requests, newest first."""
        params: dict[str, Any] = {"n": n, **({"user": user} if user is not None else {})}
        return list(self.request("GET", "/tiqo/logs", params=params)["data"])

    def audit(self, n: int = 20, since: str | None = None) -> list[dict[str, Any]]:
        """Off-machine calls, newest first: provider, model, key, data class, why it was allowed, status, cost."""
        params: dict[str, Any] = {"n": n, **({"since": since} if since is not None else {})}
        return list(self.request("GET", "/tiqo/audit", params=params)["data"])

    def budget(self) -> dict[str, Any]:
        """Each limit (spent, reserved, left, percent, resets_at), thresholds and their actions, recent alerts."""
        result: dict[str, Any] = self.request("GET", "/tiqo/budget")
        return result

    def set_budget(self, scope: str, name: str | None, period: str, usd: float | None) -> dict[str, Any]:
        """Set one limit (``scope`` global|user|provider|model, ``period`` day|month); ``usd=None`` removes it.
        Returns the budgets as :meth:`budget` does."""
        body = {"scope": scope, "name": name, "period": period, "usd": usd}
        result: dict[str, Any] = self.request("PUT", "/tiqo/budget", body)
        return result

    def alerts(self, n: int = 50) -> list[dict[str, Any]]:
        return list(self.request("GET", "/tiqo/alerts", params={"n": n})["data"])

    def events(
        self,
        kinds: str | Iterable[str] | None = None,
        last_event_id: int | str | None = None,
        *,
        reconnect: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Live events (``{"id", "ts", "kind", "data"}``) until the iterator is closed (which hangs up).

        ``kinds`` filters them (``"request,alert"`` or a list); ``last_event_id`` first replays what came after it
        from the daemon's short history. Keep-alive comments are skipped. With ``reconnect`` (what server-sent
        events expect of a client) a dropped stream is opened again with the last id seen, as long as the daemon
        answers (it is never started for that); otherwise :class:`DaemonUnavailable` is raised."""
        last, failures, first = last_event_id, 0, True
        gone: DaemonUnavailable | None = None
        while True:
            if first:
                response = self._open_events(kinds, last)  # may start the daemon, like every other call
            else:
                autostart, self.autostart = self.autostart, False
                try:
                    response = self._open_events(kinds, last)
                except DaemonUnavailable as exc:
                    raise (gone or exc) from None
                finally:
                    self.autostart = autostart
            first, opened = False, time.monotonic()
            try:
                for event in self._read_events(response):
                    ident = event.get("id")
                    if isinstance(ident, int) and ident > 0:
                        last = ident
                    yield event
                gone = DaemonUnavailable(
                    "the daemon ended the event stream (it is stopping)", hint="see `tiqo daemon status`"
                )
            except DaemonUnavailable as exc:
                gone = exc
            finally:
                response.close()
            failures = 0 if time.monotonic() - opened > RECONNECT_HEALTHY_S else failures + 1
            if not reconnect or failures > RECONNECT_TRIES or not self.is_running():
                raise gone
            if failures:
                time.sleep(min(2.0, 0.25 * 2 ** (failures - 1)))

    def _open_events(self, kinds: str | Iterable[str] | None, last_event_id: int | str | None) -> httpx.Response:
        params: dict[str, Any] = {}
        if kinds is not None:
            params["kinds"] = kinds if isinstance(kinds, str) else ",".join(kinds)
        headers = {"accept": "text/event-stream"}
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        response = self._send("GET", "/tiqo/events", stream=True, headers=headers, params=params)
        if response.status_code >= 400:
            try:
                response.read()
                self._decode(response)
            finally:
                response.close()
        return response

    @staticmethod
    def _read_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            for raw in parse_sse(response.iter_lines()):
                try:
                    event = json.loads(raw["data"])
                except ValueError:
                    event = {"data": raw["data"]}
                if not isinstance(event, dict):
                    event = {"data": event}
                event.setdefault("kind", raw["event"])
                if raw["id"] is not None:
                    event.setdefault("id", int(raw["id"]) if raw["id"].isdigit() else raw["id"])
                yield event
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(
                f"the daemon went away in the middle of the event stream ({type(exc).__name__})",
                hint="see `tiqo daemon logs`; run the command again once it is back",
            ) from None

    # ------------------------------------------------------------------ asyncio (the dashboard)
    async def aevents(
        self,
        kinds: str | Iterable[str] | None = None,
        last_event_id: int | str | None = None,
        *,
        connect_timeout: float = 3.0,
        opened: asyncio.Event | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Live events as :meth:`events` yields them, for asyncio programs (``tiqo dash``). One connection: it never
        starts the daemon and never reconnects by itself; when the daemon cannot be reached or the stream ends it
        raises :class:`DaemonUnavailable`, so the caller can say so and open it again after the last id it saw.
        ``opened`` is set once the daemon has answered: it has subscribed this stream, so nothing published from
        then on is missed (fetch a snapshot after that, not before). Cancelling the iteration hangs up at once."""
        import httpx

        params: dict[str, Any] = {}
        if kinds is not None:
            params["kinds"] = kinds if isinstance(kinds, str) else ",".join(kinds)
        headers = {"accept": "text/event-stream"}
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        timeout = httpx.Timeout(connect_timeout, read=None)
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://tiqo", timeout=timeout) as http,
                http.stream("GET", "/tiqo/events", params=params, headers=headers) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    self._decode(response)
                if opened is not None:
                    opened.set()
                block: list[str] = []
                async for line in response.aiter_lines():
                    if line.strip("\r\n"):
                        block.append(line)
                        continue
                    for raw in parse_sse([*block, ""]):  # one event at its blank line
                        yield self._event_of(raw)
                    block = []
        except (httpx.HTTPError, OSError) as exc:
            raise DaemonUnavailable(
                f"cannot reach the tiqo daemon at {self.socket_path} ({type(exc).__name__})",
                hint="start it with `tiqo daemon start`; see `tiqo daemon logs`",
            ) from None
        raise DaemonUnavailable("the daemon ended the event stream (it is stopping)", hint="see `tiqo daemon status`")

    @staticmethod
    def _event_of(raw: dict[str, Any]) -> dict[str, Any]:
        """``{"id", "ts", "kind", "data"}`` of one server-sent event as :func:`parse_sse` gives it."""
        try:
            event = json.loads(raw["data"])
        except ValueError:
            event = {"data": raw["data"]}
        if not isinstance(event, dict):
            event = {"data": event}
        event.setdefault("kind", raw["event"])
        if raw["id"] is not None:
            event.setdefault("id", int(raw["id"]) if raw["id"].isdigit() else raw["id"])
        return event
