"""Replicas of one model (stub servers in their own processes, a real daemon) and a remote tiqo behind a token."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.test_tcp import free_port
from tests.upstreams import UpstreamProcess
from tiqo.tui.feed import replica_rows

CHAT = {"model": "pooled", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


def _port(url: str) -> int:
    return int(urllib.parse.urlsplit(url).port or 0)


def _served(*stubs: UpstreamProcess) -> list[int]:
    return [sum(1 for r in s.recorded()["requests"] if r.get("path") == "/v1/chat/completions") for s in stubs]


def _endpoints(d: DaemonProc, provider: str = "pool") -> list[dict[str, Any]]:
    rows = d.client().get("/tiqo/providers").json()["providers"]
    return next(r for r in rows if r["name"] == provider)["endpoints"]  # type: ignore[no-any-return]


@pytest.fixture
def pool() -> Iterator[tuple[DaemonProc, UpstreamProcess, UpstreamProcess]]:
    a = UpstreamProcess("--delay-s", "0.4").start()
    b = UpstreamProcess("--delay-s", "0.4").start()
    d = start_daemon(short_home(), TIQO_REPLICA_PROBE_INTERVAL="0.3s")
    try:
        c = d.client()
        endpoints = [{"url": a.url + "/v1"}, {"url": b.url + "/v1"}]
        r = c.post("/tiqo/providers", json={"name": "pool", "kind": "openai", "endpoints": endpoints})
        assert r.status_code == 201, r.text
        assert c.post("/tiqo/keys", json={"provider": "pool", "secret": "sk-test-0123456789"}).status_code == 201
        model = {"name": "pooled", "provider": "pool", "upstream_model": "gpt-4o-mini"}
        assert c.post("/tiqo/models", json=model).status_code == 201
        yield d, a, b
    finally:
        d.stop()
        a.stop()
        b.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def _chat(d: DaemonProc, n: int, threads: int, **extra: Any) -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), base_url="http://tiqo", timeout=60) as c:
            return c.post("/v1/chat/completions", json={**CHAT, **extra})

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_load_spreads_by_outstanding_requests_and_a_killed_replica_costs_no_request(
    pool: tuple[DaemonProc, UpstreamProcess, UpstreamProcess],
) -> None:
    d, a, b = pool
    # 24 concurrent slow requests: each endpoint holds at most one more than the other, so the split is even
    answers = _chat(d, 24, 12)
    assert [r.status_code for r in answers] == [200] * 24
    assert {r.headers["x-tiqo-backend"] for r in answers} == {"pool"}
    split = _served(a, b)
    print(f"\nsplit of 24 concurrent requests over 2 equal replicas: {split}")
    assert sum(split) == 24 and min(split) >= 8, split

    # the config is on disk as the documented table shape
    config = (d.home / "config" / "config.toml").read_text()
    assert "endpoints" in config and a.url in config

    # kill one replica (SIGKILL) while 24 requests are in flight: every one of them is answered by the other
    a_port = _port(a.url)
    with ThreadPoolExecutor(1) as bg:
        running = bg.submit(_chat, d, 24, 6)
        time.sleep(0.6)
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait(5)
        answers = running.result()
    assert [r.status_code for r in answers] == [200] * 24, [r.text for r in answers if r.status_code != 200]
    rows = {e["url"]: e for e in _endpoints(d)}
    dead = rows[a.url + "/v1"]
    assert dead["healthy"] is False and dead["last_error"] and dead["outstanding"] == 0
    assert rows[b.url + "/v1"]["healthy"] is True
    # the provider as a whole stayed healthy: its breaker never heard of the dead replica
    provider = next(p for p in d.client().get("/tiqo/providers").json()["providers"] if p["name"] == "pool")
    assert provider["circuit"] == "closed" and provider["status"] == "available"
    listing = d.cli("providers", "list")
    assert listing.returncode == 0 and "out" in listing.stdout and "served" in listing.stdout, listing.stdout
    shown = replica_rows(d.client().get("/tiqo/providers").json())  # what the dashboard's keys tab lists
    assert {(r["url"], r["healthy"]) for r in shown} == {(a.url + "/v1", False), (b.url + "/v1", True)}
    explain = d.client().post("/tiqo/route/explain", json={"prompt": "hi", "model": "pooled"}).json()
    assert explain["replicas"]["pool"]["next"] == b.url + "/v1"

    # while it is out, nothing is sent to it; restarted on the same port, it returns after a probe
    back = UpstreamProcess("--port", str(a_port), "--delay-s", "0.4").start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _endpoints(d)[0]["healthy"]:
            time.sleep(0.1)
        assert _endpoints(d)[0]["healthy"] is True
        answers = _chat(d, 8, 8)
        assert [r.status_code for r in answers] == [200] * 8
        assert _served(back)[0] >= 2  # it takes its share again
    finally:
        back.stop()


def test_weights_and_config_errors(pool: tuple[DaemonProc, UpstreamProcess, UpstreamProcess]) -> None:
    d, a, b = pool
    c = d.client()
    endpoints = [{"url": a.url + "/v1", "weight": 1}, {"url": b.url + "/v1", "weight": 3}]
    assert c.post("/tiqo/providers", json={"name": "heavy", "endpoints": endpoints}).status_code == 201
    assert c.post("/tiqo/keys", json={"provider": "heavy", "secret": "sk-test-0123456789"}).status_code == 201
    model = {"name": "weighted", "provider": "heavy", "upstream_model": "gpt-4o-mini"}
    assert c.post("/tiqo/models", json=model).status_code == 201
    before = _served(a, b)
    answers = _chat(d, 24, 12, model="weighted")
    assert [r.status_code for r in answers] == [200] * 24
    after = _served(a, b)
    split = [x - y for x, y in zip(after, before, strict=True)]
    print(f"\nsplit of 24 concurrent requests over weights 1:3: {split}")
    assert split[1] > 2 * split[0], split
    # sequential requests (nothing outstanding) still follow the weights
    before = _served(a, b)
    for _ in range(8):
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "weighted"}).status_code == 200
    seq = [x - y for x, y in zip(_served(a, b), before, strict=True)]
    print(f"split of 8 sequential requests over weights 1:3: {seq}")
    assert seq[1] >= 2 * seq[0] and seq[0] >= 1, seq  # served per unit of weight evens out over time

    bad = c.post("/tiqo/providers", json={"name": "bad", "endpoints": [{"url": "ftp://x"}]})
    assert bad.status_code == 400 and "http://" in bad.json()["error"]["message"]
    assert "--endpoint" in bad.json()["error"]["hint"]
    dup = [{"url": a.url + "/v1"}, {"url": a.url + "/v1/"}]
    assert c.post("/tiqo/providers", json={"name": "dup", "endpoints": dup}).status_code == 400
    assert c.post("/tiqo/providers", json={"name": "w0", "endpoints": [{"url": a.url, "weight": 0}]}).status_code == 422


# ------------------------------------------------------------------ a remote tiqo


@pytest.fixture(scope="module")
def remote() -> Iterator[tuple[DaemonProc, str, str]]:
    """A second real daemon with its TCP listener on, and a token for the front daemon."""
    port = free_port()
    d = start_daemon(short_home(), TIQO_LISTEN=f"127.0.0.1:{port}")
    try:
        token = d.client().post("/tiqo/users/front/token").json()["token"]
        yield d, f"http://127.0.0.1:{port}/v1", token
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def test_remote_tiqo_end_to_end_and_restricted_data_only_when_trusted(remote: tuple[DaemonProc, str, str]) -> None:
    far, url, token = remote
    d = start_daemon(short_home())
    try:
        env = {"TIQO_TOKEN": token}
        r = d.cli("providers", "add", "far", "--kind", "tiqo", "--base-url", url, "--key", "env:TIQO_TOKEN", **env)
        assert r.returncode == 0, r.stderr
        assert token not in (d.home / "config" / "config.toml").read_text()
        refused = d.cli("providers", "add", "x", "--kind", "tiqo", "--base-url", url, "--key", token)
        assert refused.returncode != 0 and "--key -" in refused.stderr + refused.stdout
        r = d.cli(
            "providers",
            "add",
            "far-trusted",
            "--kind",
            "tiqo",
            "--base-url",
            url,
            "--key",
            "-",
            "--trusted",
            input=token + "\n",
        )
        assert r.returncode == 0 and "restricted" in r.stdout, r.stdout + r.stderr
        c = d.client()
        for name, provider in (("remote-small", "far"), ("trusted-small", "far-trusted")):
            model = {"name": name, "provider": provider, "upstream_model": "smollm2-135m"}
            assert c.post("/tiqo/models", json=model).status_code == 201

        # chat through the remote daemon, end to end (its local model answers; its ledger names the token's user)
        body = {"model": "remote-small", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-tiqo-backend"] == "far" and r.json()["choices"][0]["message"]["content"] is not None
        rows = far.client().get("/tiqo/logs", params={"n": 5}).json()["data"]
        assert rows[0]["user"] == "front" and rows[0]["outcome"] == "ok"

        # restricted data never goes to an untrusted remote tiqo ...
        explain = c.post(
            "/tiqo/route/explain", json={"prompt": "hi", "model": "remote-small", "class": "restricted"}
        ).json()
        dropped = next(x for x in explain["candidates"] if x["model"] == "remote-small")
        assert not dropped["kept"] and "trusted = true" in dropped["reason"]
        seen = len(far.client().get("/tiqo/logs", params={"n": 100}).json()["data"])
        r = c.post("/v1/chat/completions", json=body, headers={"x-tiqo-class": "restricted"})
        assert r.headers.get("x-tiqo-backend", "") != "far"
        assert len(far.client().get("/tiqo/logs", params={"n": 100}).json()["data"]) == seen
        # ... and goes to a trusted one, which is told the class and keeps it on its own machine as well
        r = c.post(
            "/v1/chat/completions", json={**body, "model": "trusted-small"}, headers={"x-tiqo-class": "restricted"}
        )
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "far-trusted", r.text
        row = far.client().get("/tiqo/logs", params={"n": 1}).json()["data"][0]
        assert row["data_class"] == "restricted" and row["backend"].startswith("local")
        listed = {p["name"]: p for p in c.get("/tiqo/providers").json()["providers"]}
        assert listed["far-trusted"]["trusted"] is True and listed["far"]["trusted"] is False
        assert listed["far"]["max_class"] == "confidential" and listed["far-trusted"]["max_class"] == "restricted"
        assert json.dumps(listed).count(token) == 0
        counts = Counter(p["kind"] for p in listed.values())
        assert counts["tiqo"] == 2
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


@pytest.mark.parametrize(
    ("endpoints", "base_url"),
    [([], None), ({"url": "http://h:1/v1"}, None), (["ftp://h/v1"], None), (["http://h:1/v1/"], "http://h:1/v1")],
)
def test_a_new_providers_endpoints_are_checked_before_anything_is_written(endpoints: Any, base_url: str | None) -> None:
    """An empty list, a table instead of a list or a bad URL is a 400 naming --endpoint (an empty list was a 500);
    URLs given as plain strings give the base URL."""
    from types import SimpleNamespace

    from tiqo.core.errors import BadRequest
    from tiqo.daemon.upstream.provider_entries import provider_entry

    kinds: Any = {"openai": SimpleNamespace(default_base_url="https://api.openai.com/v1")}
    if base_url is None:
        with pytest.raises(BadRequest) as err:
            provider_entry("openai", None, {"endpoints": endpoints}, kinds)
        assert err.value.param == "endpoints" and "--endpoint" in (err.value.hint or "")
    else:
        assert provider_entry("openai", None, {"endpoints": endpoints}, kinds)["base_url"] == base_url
