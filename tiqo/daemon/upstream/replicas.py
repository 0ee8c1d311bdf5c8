"""Replicas: one provider served by several endpoints (vLLM, llama-server, Ollama's /v1, other tiqo daemons).

Config: ``endpoints = [{url = "http://a:8000/v1", weight = 2}, {url = "http://b:8000/v1"}]`` under
``[providers.NAME]``, next to the provider's kind, keys and limits, which every endpoint shares (they serve the same
models). A provider with ``endpoints`` gets the base URL ``replicas://NAME``: provider kinds build their requests
on it as on any base URL, and ``UpstreamClient.open`` (the one door every chat, speech, embeddings and images call
goes through) asks ``Replicas`` which endpoint serves it. So endpoint choice lives here alone; a provider with one
``base_url`` never reaches this module.

* Balancing: least outstanding requests per unit of weight; among equals, the fewest served per unit of weight (so
  sequential traffic still follows the weights).
* Health: passive (a real request that fails to connect, times out or gets a 5xx marks a failure;
  ``routing.replica_failures`` in a row, or one refused connection, takes the endpoint out) and active (every
  ``routing.replica_probe_interval`` a GET of ``{url}/models``; any answer below 500, a 401 included, means the
  server is up). An endpoint that is out comes back only after a successful probe.
* Failover before the first byte: ``open`` tries the next endpoint at once, so a dead replica costs no request while
  another one is up; the provider's circuit breaker only hears about failures when no endpoint is left.

Replica health is this daemon's own view (each daemon probes for itself): it is cheap, and a replica that one
daemon cannot reach may be reachable from another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger("tiqo.replicas")
SCHEME = "replicas://"
MAX_ENDPOINTS = 64  # each is probed every interval: bounded
PROBE_TIMEOUT_S = 2.0


@dataclass
class Endpoint:
    url: str
    weight: float = 1.0
    up: bool = True
    outstanding: int = 0
    served: int = 0  # requests it answered (counted when the answer ends)
    failures: int = 0  # consecutive
    last_error: str | None = None
    down_since: float | None = None
    last_probe: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "weight": self.weight,
            "healthy": self.up,
            "outstanding": self.outstanding,
            "served": self.served,
            "failures": self.failures,
            "last_error": self.last_error,
            "down_since": self.down_since,
            "last_probe": self.last_probe,
        }


def parse_endpoints(entry: Mapping[str, Any]) -> list[Endpoint] | None:
    """``endpoints`` of a ``[providers.NAME]`` table (None: a single ``base_url``, as before). Raises ValueError
    with the fix in the message (a hand-edited mistake is reported by ``tiqo providers list``)."""
    raw = entry.get("endpoints")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ValueError('endpoints must be a non-empty list such as [{url = "http://host:8000/v1", weight = 1}]')
    if len(raw) > MAX_ENDPOINTS:
        raise ValueError(f"at most {MAX_ENDPOINTS} endpoints per provider")
    out: list[Endpoint] = []
    for item in raw:
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            raise ValueError(f'endpoint {item!r} needs a url, e.g. {{url = "http://host:8000/v1", weight = 1}}')
        url = str(item["url"]).rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"endpoint URL {url!r} must start with http:// or https://")
        weight = float(item.get("weight", 1.0))
        if not 0 < weight <= 1000:
            raise ValueError(f"endpoint weight {weight:g} must be above 0 and at most 1000")
        if any(e.url == url for e in out):
            raise ValueError(f"endpoint {url} is listed twice")
        out.append(Endpoint(url=url, weight=weight))
    base = entry.get("base_url")
    if base and str(base).rstrip("/") not in {e.url for e in out}:
        raise ValueError(f"base_url {base} is not one of the endpoints: list it there, or drop base_url")
    return out


class ReplicaSet:
    def __init__(self, provider: str, endpoints: list[Endpoint], failures_to_remove: int) -> None:
        self.provider = provider
        self.endpoints = endpoints
        self.failures_to_remove = max(1, failures_to_remove)

    def healthy(self) -> int:
        return sum(1 for e in self.endpoints if e.up)

    def choose(self, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next request: least outstanding per weight among the healthy ones not tried yet.
        When every endpoint is out, the one that failed longest ago gets a try (the provider's breaker decides
        about a total outage, not this)."""
        skip = {id(e) for e in exclude}
        left = [e for e in self.endpoints if id(e) not in skip]
        up = [e for e in left if e.up]
        if up:
            return min(up, key=lambda e: (e.outstanding / e.weight, e.served / e.weight))
        if not left:
            return None
        return min(left, key=lambda e: e.down_since or 0.0)

    def failed(self, endpoint: Endpoint, kind: str, message: str, now: float) -> None:
        endpoint.failures += 1
        endpoint.last_error = f"{kind}: {message}"[:200]
        if endpoint.up and (kind == "connection" or endpoint.failures >= self.failures_to_remove):
            endpoint.up, endpoint.down_since = False, now
            log.warning(
                "replica %s of %s is out (%s); it returns after a successful probe",
                endpoint.url,
                self.provider,
                endpoint.last_error,
            )

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        # A real answer from an endpoint that is out does not bring it back: only a probe does (one lucky request
        # from a flapping server must not put it back in rotation).

    def probed(self, endpoint: Endpoint, error: str | None, now: float) -> None:
        endpoint.last_probe = now
        if error is None:
            if not endpoint.up:
                log.info("replica %s of %s is back (probe answered)", endpoint.url, self.provider)
            endpoint.up, endpoint.down_since, endpoint.failures = True, None, 0
        else:
            self.failed(endpoint, "probe", error, now)
            if endpoint.up:  # a failed probe always takes it out: probes are cheap and should never fail
                endpoint.up, endpoint.down_since = False, now

    def describe(self) -> list[dict[str, Any]]:
        return [e.describe() for e in self.endpoints]


class Replicas:
    """Every provider's replica set, keyed by provider name, and the probe loop that keeps their health current."""

    def __init__(self, probe_interval: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.sets: dict[str, ReplicaSet] = {}
        self.probe_interval = probe_interval
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def base_url(provider: str) -> str:
        return f"{SCHEME}{provider}"

    def resolve(self, url: str) -> tuple[ReplicaSet, str] | None:
        """(replica set, path) of a ``replicas://NAME/path`` URL; None for an ordinary URL."""
        if not url.startswith(SCHEME):
            return None
        name, slash, rest = url[len(SCHEME) :].partition("/")
        replica_set = self.sets.get(name)
        if replica_set is None:
            raise LookupError(f"provider {name} has no endpoints configured")
        return replica_set, slash + rest

    def healthy(self, provider: str) -> int | None:
        """Healthy endpoints of ``provider`` (None: it has a single base_url)."""
        s = self.sets.get(provider)
        return None if s is None else s.healthy()

    def ensure_probing(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        if self.sets and (self._task is None or self._task.done()) and self.probe_interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._probe_loop(session), name="replica-probes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        targets = [(s, e) for s in list(self.sets.values()) for e in s.endpoints]
        results = await asyncio.gather(*(_probe(session, e.url) for _, e in targets))
        now = self.clock()
        for (s, e), error in zip(targets, results, strict=True):
            s.probed(e, error, now)

    async def _probe_loop(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.probe_all(session())
            except Exception:  # a probe round must never end the loop
                log.exception("replica probes failed")


async def _probe(session: aiohttp.ClientSession, url: str) -> str | None:
    """None when the server answers GET {url}/models below 500 (a 401 too: it is up, and probes carry no key)."""
    try:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        async with session.get(url + "/models", timeout=timeout, allow_redirects=False) as resp:
            if resp.status >= 500:
                return f"probe answered {resp.status}"
            return None
    except TimeoutError:
        return f"probe: no answer within {PROBE_TIMEOUT_S:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return f"probe: {type(exc).__name__}: {exc}"[:200]
