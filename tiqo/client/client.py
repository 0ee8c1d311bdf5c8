"""Synchronous client of the daemon over its Unix socket: one method per route (the transport, daemon start-up and
event streams are in ``transport`` and ``events``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from tiqo.client.events import EventStreams
from tiqo.client.streams import ApiError, DaemonUnavailable, Stream, parse_sse

if TYPE_CHECKING:
    import httpx

__all__ = ["ApiError", "DaemonUnavailable", "Stream", "TiqoClient", "parse_sse"]


class TiqoClient(EventStreams):
    # ------------------------------------------------------------------ routes
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

    # ------------------------------------------------------------------ images and video
    def image_submit(
        self,
        fields: dict[str, Any],
        files: dict[str, tuple[str, bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``/v1/images/generations`` (or ``/edits`` with ``files`` image / mask) as a job, answered at once."""
        if not files:
            result: dict[str, Any] = self.request(
                "POST", "/v1/images/generations", {**fields, "wait": False}, headers=headers
            )
            return result
        form = {k: str(v) for k, v in {**fields, "wait": "false"}.items() if v is not None}
        response = self._send("POST", "/v1/images/edits", files=_files(files), data=form, headers=headers)
        return dict(self._decode(response))

    def video_submit(
        self,
        fields: dict[str, Any],
        files: dict[str, tuple[str, bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``/v1/videos`` (multipart, like OpenAI's SDK): the video's job, as OpenAI's Video object."""
        if not files:
            return dict(
                self.request("POST", "/v1/videos", {k: v for k, v in fields.items() if v is not None}, headers=headers)
            )
        form = {k: str(v) for k, v in fields.items() if v is not None}
        response = self._send("POST", "/v1/videos", files=_files(files), data=form, headers=headers)
        return dict(self._decode(response))

    # ------------------------------------------------------------------ jobs
    def jobs(
        self, kind: str | None = None, limit: int = 20, after: str | None = None, user: str | None = None
    ) -> dict[str, Any]:
        """Your jobs, newest first: ``{"data": [job, ...], "has_more"}`` (pass the last id as ``after``)."""
        params = {k: v for k, v in {"kind": kind, "limit": limit, "after": after}.items() if v is not None}
        result: dict[str, Any] = self.request("GET", "/tiqo/jobs", params=params, headers=self._as_user(user))
        return result

    def job(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/tiqo/jobs/{quote(job_id, safe='')}", headers=self._as_user(user)
        )
        return result

    def job_wait(self, job_id: str, timeout: float = 30.0, user: str | None = None) -> dict[str, Any]:
        """The job once finished, or as it is after ``timeout`` seconds (at most 60: the daemon's long-poll)."""
        result: dict[str, Any] = self.request(
            "GET",
            f"/tiqo/jobs/{quote(job_id, safe='')}/wait",
            params={"timeout": timeout},
            headers=self._as_user(user),
            timeout=timeout + 30.0,
        )
        return result

    def job_cancel(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/tiqo/jobs/{quote(job_id, safe='')}/cancel", headers=self._as_user(user)
        )
        return result

    def job_remove(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "DELETE", f"/tiqo/jobs/{quote(job_id, safe='')}", headers=self._as_user(user), timeout=60.0
        )
        return result

    def job_file(self, job_id: str, name: str, out: BinaryIO, user: str | None = None) -> int:
        """Write the job's file ``name`` to ``out``; the bytes written."""
        path = f"/tiqo/jobs/{quote(job_id, safe='')}/files/{quote(name, safe='')}"
        response = self._send("GET", path, stream=True, headers=self._as_user(user))
        try:
            if response.status_code >= 400:
                response.read()
                self._decode(response)
            written = 0
            for chunk in response.iter_bytes():
                out.write(chunk)
                written += len(chunk)
            return written
        finally:
            response.close()

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

    def usage(
        self, since: str = "7d", by: str = "day", user: str | None = None, *, local: bool = False
    ) -> dict[str, Any]:
        """Requests, tokens, cost, cache hits and errors since ``since`` (24h, 7d…): a row per ``by`` group, a total.
        Cluster-wide when the daemon shares state on Redis, unless ``local`` (this daemon's own rows)."""
        params: dict[str, Any] = {"since": since, "by": by, **({"user": user} if user is not None else {})}
        if local:
            params["local"] = "true"
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


def _files(files: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, bytes, str]]:
    return {field: (name, data, "application/octet-stream") for field, (name, data) in files.items()}
