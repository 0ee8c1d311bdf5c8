"""The daemon's pooled HTTP client for external providers: one aiohttp session, SSE parsing, three timeouts.

aiohttp rather than httpx: measured with ``bench/upstream_clients.py`` (httpx.AsyncClient spends several times more
CPU per streamed request under concurrency; encode/httpx#3215).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp

from tiqo.daemon.upstream.replicas import Endpoint, Replicas, ReplicaSet
from tiqo.sdk.provider import FormFile, ProviderKind, UpstreamRequest

log = logging.getLogger("tiqo.upstream")
MAX_ERROR_BODY = 64 * 1024
MAX_SSE_LINE = 16 * 1024 * 1024  # an incomplete SSE line held while more of it arrives
MAX_ORIGINS = 1024  # remembered proxy decisions (origins come from config: providers and their replicas)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0  # TCP + TLS connect
    first_byte: float = 20.0  # request sent → first SSE event
    idle: float = 15.0  # between SSE events once streaming


class AttemptFailed(Exception):
    """One upstream attempt failed. ``kind`` is a FailureKind or timeout/connection/protocol."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind != "bad_request"


class ReadAhead:
    """Whether more of a streamed answer is already in hand (received and parsed, not yet passed on). A writer may
    then hold what it has and send it with what follows in one write; when ``more`` is False the next piece waits
    on the network, so nothing may be held."""

    __slots__ = ("more",)

    def __init__(self) -> None:
        self.more = False


class TrackedResponse(aiohttp.ClientResponse):
    """A response that tells its replica endpoint when it ends (released, closed, or cut off mid-answer), so the
    endpoint's outstanding count is exact for streamed answers too."""

    _replica: tuple[ReplicaSet, Endpoint] | None = None

    def track(self, replica_set: ReplicaSet, endpoint: Endpoint) -> None:
        endpoint.outstanding += 1
        self._replica = (replica_set, endpoint)

    def finish(self, error: AttemptFailed | None = None) -> None:
        replica, self._replica = self._replica, None
        if replica is None:
            return
        replica_set, endpoint = replica
        endpoint.outstanding -= 1
        if error is None:
            endpoint.served += 1
            replica_set.succeeded(endpoint)
        elif error.kind in REPLICA_FAILURES:
            replica_set.failed(endpoint, error.kind, error.message, time.time())

    def release(self) -> Any:
        self.finish()
        return super().release()

    def close(self) -> None:
        self.finish()
        super().close()


# Failures that say something about the endpoint (another replica may well answer), not about the request or key
REPLICA_FAILURES = frozenset({"connection", "timeout", "server", "protocol"})


class UpstreamClient:
    def __init__(self, replicas: Replicas | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str] = {}
        self._proxy_of: dict[str, str | None] = {}  # origin -> its proxy (None: direct)
        self.replicas = replicas or Replicas()

    def _proxy_for(self, url: str) -> str | None:
        if not self._proxies:
            return None
        scheme, _, rest = url.partition("://")
        origin = scheme + "://" + rest.split("/", 1)[0]
        if origin not in self._proxy_of:
            # proxy_bypass reads the whole environment (about 0.3 ms): once per origin, not once per request
            if len(self._proxy_of) >= MAX_ORIGINS:
                self._proxy_of.clear()
            host = urllib.parse.urlsplit(url).hostname or ""
            bypass = urllib.request.proxy_bypass(host) or host in ("127.0.0.1", "localhost", "::1")
            self._proxy_of[origin] = None if bypass else self._proxies.get(url.split(":", 1)[0])
        return self._proxy_of[origin]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False),
                auto_decompress=True,
                # trust_env costs two thread-pool round trips per request (netrc + proxy lookup); proxies are
                # read from the environment once, here, instead.
                trust_env=False,
                response_class=TrackedResponse,
            )
            self._proxies = urllib.request.getproxies()
            self._proxy_of.clear()
        return self._session

    async def close(self) -> None:
        await self.replicas.close()
        if self._session is not None:
            await self._session.close()

    async def open(self, req: UpstreamRequest, kind: ProviderKind, timeouts: Timeouts) -> aiohttp.ClientResponse:
        """Send ``req``; return the response once its headers say 2xx, else raise ``AttemptFailed``. A request to a
        provider with replicas (``replicas://NAME/…``) goes to the endpoint ``Replicas`` picks, and on a failure
        before the first byte to the next one, until an endpoint answers or none is left."""
        try:
            target = self.replicas.resolve(req.url)
        except LookupError as exc:
            raise AttemptFailed("connection", str(exc)) from None
        if target is None:
            return await self._open(req, kind, timeouts)
        replica_set, path = target
        self.replicas.ensure_probing(self.session)
        tried: list[Endpoint] = []
        while (endpoint := replica_set.choose(tried)) is not None:
            tried.append(endpoint)
            endpoint.outstanding += 1  # counted from the choice: concurrent choices see it at once
            try:
                resp = await self._open(dataclasses.replace(req, url=endpoint.url + path), kind, timeouts)
            except AttemptFailed as exc:
                if exc.kind in REPLICA_FAILURES:
                    replica_set.failed(endpoint, exc.kind, exc.message, time.time())
                    if replica_set.choose(tried) is not None:
                        log.info(
                            "replica %s of %s failed (%s); trying the next",
                            endpoint.url,
                            replica_set.provider,
                            exc.kind,
                        )
                        continue
                raise
            finally:
                endpoint.outstanding -= 1
            if isinstance(resp, TrackedResponse):
                resp.track(replica_set, endpoint)
            return resp
        raise AttemptFailed("connection", f"provider {replica_set.provider} has no endpoint left to try")

    async def _open(self, req: UpstreamRequest, kind: ProviderKind, timeouts: Timeouts) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, connect=timeouts.connect)
        try:
            async with asyncio.timeout(timeouts.first_byte + timeouts.connect):
                session = self.session()
                body: dict[str, Any] = {"json": req.json} if req.form is None else {"data": _form_data(req.form)}
                resp = await session.request(
                    req.method,
                    req.url,
                    headers=req.headers,
                    timeout=timeout,
                    proxy=self._proxy_for(req.url),
                    **body,
                )
                if resp.status < 400:
                    return resp
                try:
                    error_body = await resp.content.read(MAX_ERROR_BODY)
                finally:
                    resp.release()
        except TimeoutError:
            raise AttemptFailed("timeout", f"no answer within {timeouts.first_byte + timeouts.connect:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise AttemptFailed("connection", f"cannot connect: {exc.os_error or exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AttemptFailed("connection", f"{type(exc).__name__}: {exc}") from None
        failure = kind.failure(resp.status, {k.lower(): v for k, v in resp.headers.items()}, error_body)
        raise AttemptFailed(failure.kind, failure.message, status=failure.status, retry_after=failure.retry_after)


def _mid_answer(resp: aiohttp.ClientResponse, kind: str, message: str) -> AttemptFailed:
    """The failure of an answer cut off midway, counted against the replica endpoint that sent it (if any)."""
    exc = AttemptFailed(kind, message)
    if isinstance(resp, TrackedResponse):
        resp.finish(exc)
    return exc


def _form_data(parts: tuple[tuple[str, str | FormFile], ...]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in parts:
        if isinstance(value, FormFile):
            form.add_field(name, value.content, filename=value.filename, content_type=value.content_type)
        else:
            form.add_field(name, value)
    return form


async def read_body(resp: aiohttp.ClientResponse, timeouts: Timeouts, limit: int = 64 * 1024 * 1024) -> bytes:
    """A whole (non-SSE) answer, with the first-byte timeout for the wait and the idle timeout between chunks."""
    out = bytearray()
    try:
        async for chunk in iter_body(resp, timeouts):
            out += chunk
            if len(out) > limit:
                raise AttemptFailed("protocol", f"answer larger than {limit} bytes")
    finally:
        resp.release()
    return bytes(out)


async def iter_body(
    resp: aiohttp.ClientResponse, timeouts: Timeouts, size: int = 64 * 1024
) -> AsyncGenerator[bytes, None]:
    """The body in chunks as they arrive (streamed audio). Timeouts and dropped connections raise AttemptFailed."""
    wait = timeouts.first_byte
    try:
        while True:
            async with asyncio.timeout(wait):
                chunk = await resp.content.readany()
            if not chunk:
                break
            wait = timeouts.idle
            yield chunk
    except TimeoutError:
        raise _mid_answer(resp, "timeout", f"provider went silent for {wait:g}s mid-answer") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _mid_answer(resp, "connection", f"connection lost mid-answer ({type(exc).__name__})") from None
    finally:
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


async def sse_events(
    resp: aiohttp.ClientResponse, timeouts: Timeouts, ahead: ReadAhead | None = None
) -> AsyncGenerator[tuple[str | None, str], None]:
    """(event, data) pairs of an SSE body. The first event must come within ``first_byte``, the next ones within
    ``idle`` of each other; a dropped connection raises ``AttemptFailed("connection")``.

    The body is read as it arrives, not line by line: a provider usually sends several events per network read, and
    a ``readline`` (with its timer) per line was the biggest fixed cost of a streamed event. ``ahead`` says, with
    each event, whether another one is already parsed."""
    content = resp.content
    wait = timeouts.first_byte
    parser = _SseParser()
    try:
        while True:
            eof = False
            # One timeout per event (comments and keep-alives do not restart it), not per read.
            async with asyncio.timeout(wait):
                while not parser.ready:
                    chunk = await content.readany()
                    if not chunk:
                        eof = True
                        parser.end()
                        break
                    parser.feed(chunk)
            if parser.ready:
                wait = timeouts.idle
                ready, parser.ready = parser.ready, []
                last = len(ready) - 1
                for i, event in enumerate(ready):
                    if ahead is not None:
                        ahead.more = i < last
                    yield event
            if eof:
                break
    except TimeoutError:
        raise _mid_answer(resp, "timeout", f"provider went silent for {wait:g}s mid-answer") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _mid_answer(resp, "connection", f"connection lost mid-answer ({type(exc).__name__})") from None
    finally:
        if content.at_eof():
            resp.release()
        else:
            resp.close()  # stop the upstream generation; the connection is not reusable anyway


class _SseParser:
    """The SSE line protocol over bytes as they arrive: complete events collect in ``ready``."""

    __slots__ = ("data", "event", "ready", "rest")

    def __init__(self) -> None:
        self.event: str | None = None
        self.data: list[str] = []
        self.rest = bytearray()  # an incomplete line
        self.ready: list[tuple[str | None, str]] = []

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:  # more of a long line: appended, not copied again with every chunk
            self.rest += chunk
            if len(self.rest) > MAX_SSE_LINE:
                raise AttemptFailed("protocol", f"an SSE line longer than {MAX_SSE_LINE} bytes")
            return
        lines = (bytes(self.rest) + chunk).split(b"\n") if self.rest else chunk.split(b"\n")
        self.rest = bytearray(lines.pop())
        if len(self.rest) > MAX_SSE_LINE:
            raise AttemptFailed("protocol", f"an SSE line longer than {MAX_SSE_LINE} bytes")
        for raw in lines:
            self.line(raw.decode("utf-8").rstrip("\r"))

    def end(self) -> None:
        if self.rest:
            self.line(self.rest.decode("utf-8").rstrip("\r"))
            self.rest = bytearray()
        self.line("")

    def line(self, line: str) -> None:
        if not line:
            if self.data:
                self.ready.append((self.event, "\n".join(self.data)))
                self.data = []
            self.event = None
            return
        if line[0] == ":":
            return  # comment / keep-alive
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
