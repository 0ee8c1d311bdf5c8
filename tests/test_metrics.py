"""Prometheus metrics (issue 21): a real Prometheus scrapes the daemon's TCP listener with a scrape token and its
query API agrees with `tiqo usage`; tokens are checked per route; promtool accepts the exposition; labels stay
bounded."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DaemonProc, short_home, start_daemon, wait_for
from tests.test_gateway import ask, write_home
from tests.test_tcp import free_port
from tests.upstreams import Upstream
from tiqo.daemon.accounting.events import QUEUE, EventBus
from tiqo.daemon.accounting.ledger import RequestRow
from tiqo.daemon.accounting.metrics import NONE, OTHER, LabelBound, Metrics
from tiqo.daemon.telemetry.gauges import LiveState

LOCAL = "smollm2-135m"
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs Debian's prometheus package (make system-deps installs it)",
)


# ------------------------------------------------------------------ units: labels stay bounded
def test_label_bound_keeps_the_first_values_and_counts_the_rest_as_other() -> None:
    bound = LabelBound(limit=2)
    assert [bound("model", m) for m in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    assert bound("task", "chat") == "chat"  # each label has its own bound
    assert bound("model", "") == NONE  # an empty value is "none", never counted against the bound
    long = "x" * 500
    assert bound("task", long) == "x" * 64 and bound("task", long) == "x" * 64  # cut, then the same value
    assert bound("task", "y") == OTHER


def _row(i: int, **kw: Any) -> RequestRow:
    base = {"task": "chat", "backend": "alpha", "model": f"m{i}", "user": f"user{i}", "tokens_in": 3, "tokens_out": 5}
    return RequestRow(id=f"r{i}", ts=0.0, latency_ms=12.5, **{**base, "cost_nusd": 1500, **kw})


def _samples(metrics: Metrics) -> dict[str, list[Any]]:
    text = metrics.exposition()[0].decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_request_series_are_bounded_and_users_are_labels_only_when_asked() -> None:
    metrics = Metrics(max_label_values=3)
    for i in range(10):
        metrics.observe(_row(i), first_token_s=0.01)
    requests = _samples(metrics)["tiqo_requests"]
    assert sorted(s.labels["model"] for s in requests) == ["m0", "m1", "m2", OTHER]
    assert sum(s.value for s in requests) == 10 and all("user" not in s.labels for s in requests)
    with_users = Metrics(user_labels=True, max_label_values=2)
    for i in range(4):
        with_users.observe(_row(0, user=f"user{i}"))
    assert sorted(s.labels["user"] for s in _samples(with_users)["tiqo_requests"]) == [OTHER, "user0", "user1"]


def test_one_observation_moves_every_request_metric() -> None:
    metrics = Metrics()
    metrics.observe(_row(1, cache="hit"), first_token_s=0.02)
    metrics.observe(_row(1, outcome="refused", backend="", model="", tokens_in=0, tokens_out=0, cost_nusd=0))
    got = _samples(metrics)
    assert {(s.labels["outcome"], s.labels["backend"]) for s in got["tiqo_requests"]} == {
        ("ok", "alpha"),
        ("refused", NONE),
    }
    tokens = {(s.labels["direction"], s.labels["backend"]): s.value for s in got["tiqo_tokens"]}
    assert tokens == {("in", "alpha"): 3, ("out", "alpha"): 5, ("in", NONE): 0, ("out", NONE): 0}
    assert sum(s.value for s in got["tiqo_cost_usd"]) == pytest.approx(1.5e-6)
    assert {s.labels["kind"]: s.value for s in got["tiqo_cache_hits"]} == {"exact": 1, "semantic": 0}
    counts = {s.labels["backend"]: s.value for s in got["tiqo_request_duration_seconds"] if s.name.endswith("_count")}
    assert counts == {"alpha": 1, NONE: 1}
    first = [s.value for s in got["tiqo_time_to_first_token_seconds"] if s.name.endswith("_count")]
    assert first == [1, 0]  # only the request that sent a token


# ------------------------------------------------------------------ a real daemon, a real Prometheus
@dataclass
class Scraped:
    d: DaemonProc
    tcp: str  # the daemon's TCP listener
    prom: str  # Prometheus' HTTP API
    scrape_token: str
    user_token: str
    stubs: tuple[Upstream, Upstream]


def _prometheus_config(target: str, token: str) -> str:
    job = "  - job_name: {name}\n{auth}    static_configs:\n      - targets: ['{target}']\n"
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
        + job.format(name="tiqo", auth=f"    authorization:\n      credentials: '{token}'\n", target=target)
        + job.format(name="tiqo-no-token", auth="", target=target)
    )


@pytest.fixture(scope="module")
def scraped(ups: tuple[Upstream, Upstream]) -> Iterator[Scraped]:
    home, port = short_home(), free_port()
    write_home(home, *ups)
    d = start_daemon(home, TIQO_LISTEN=f"127.0.0.1:{port}")
    scrape = d.client().post("/tiqo/users/prometheus/token", json={"scrape": True}).json()["token"]
    user = d.client().post("/tiqo/users/ann/token").json()["token"]
    folder = Path(tempfile.mkdtemp(prefix="tiqo-prom-"))
    (folder / "prometheus.yml").write_text(_prometheus_config(f"127.0.0.1:{port}", scrape))
    prom_port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        assert wait_for(lambda: _ready(prom), timeout=60), (folder / "prometheus.log").read_text()[-3000:]
        yield Scraped(d, f"http://127.0.0.1:{port}", prom, scrape, user, ups)
    finally:
        proc.terminate()
        proc.wait(20)
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def _ready(prom: str) -> bool:
    try:
        return httpx.get(prom + "/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(prom: str, expr: str) -> float | None:
    """The value of a query that yields one sample (Prometheus' own HTTP API), None when it yields none."""
    body = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@needs_prometheus
def test_tcp_scrape_needs_a_scrape_token_and_a_scrape_token_reads_nothing_else(scraped: Scraped) -> None:
    with httpx.Client(base_url=scraped.tcp, timeout=30) as web:
        assert web.get("/metrics").status_code == 401
        assert web.get("/metrics", headers={"authorization": "Bearer tq-wrong"}).status_code == 401
        r = web.get("/metrics", headers={"authorization": f"Bearer {scraped.user_token}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "scrape_token_required"
        auth = {"authorization": f"Bearer {scraped.scrape_token}"}
        r = web.get("/metrics", headers=auth)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "tiqo_requests_total" in r.text or "# TYPE tiqo_requests_total counter" in r.text
        body = {"model": LOCAL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/tiqo/usage")):
            r = web.request(method, path, headers=auth, json=body if method == "POST" else None)
            assert r.status_code == 403, (path, r.text)
    made = scraped.d.cli("users", "token", "scraper", "--scrape")
    assert made.returncode == 0, made.stderr
    assert httpx.get(scraped.tcp + "/metrics", headers={"authorization": f"Bearer {made.stdout.strip()}"}).is_success
    listed = scraped.d.cli("users", "list")
    assert listed.returncode == 0 and "scrape" in listed.stdout
    # Prometheus' own view: the job with the token is up, the one without is refused (up = 0)
    assert wait_for(lambda: query(scraped.prom, 'up{job="tiqo"}') == 1, timeout=60)
    assert wait_for(lambda: query(scraped.prom, 'up{job="tiqo-no-token"}') == 0, timeout=60)


def _mix(scraped: Scraped) -> None:
    """Local (JSON and stream), external (JSON and stream), cached (a repeat), failed and refused requests."""
    d, (_, b) = scraped.d, scraped.stubs
    for stream in (False, True):
        assert ask(d, LOCAL, "Say hi", max_tokens=4, stream=stream).status_code == 200
        assert ask(d, "ext", "external hello", stream=stream).status_code == 200
    for expected in ("miss", "hit"):
        r = ask(d, "alpha-m", "cache me please", temperature=0)
        assert r.status_code == 200 and r.headers["x-tiqo-cache"] == expected
    b.set_mode("500")
    try:
        assert ask(d, "bravo-m", "this one fails").status_code == 502
    finally:
        b.set_mode(None)
    assert ask(d, "no-such-model", "refused").status_code == 404


@needs_prometheus
def test_prometheus_totals_equal_tiqo_usage(scraped: Scraped) -> None:
    _mix(scraped)
    r = scraped.d.cli("usage", "--since", "1d", "--json")
    assert r.returncode == 0, r.stderr
    total = json.loads(r.stdout)["total"]
    assert total == scraped.d.client().get("/tiqo/usage", params={"since": "1d"}).json()["total"]
    assert total["requests"] >= 8 and total["cost_usd"] > 0 and total["cache_hits"] == 1 and total["errors"] >= 2
    prom = scraped.prom
    # the scrape after the last request has happened once Prometheus counts every request
    assert wait_for(lambda: query(prom, "sum(tiqo_requests_total)") == total["requests"], timeout=60), query(
        prom, "sum(tiqo_requests_total)"
    )
    assert query(prom, 'sum(tiqo_tokens_total{direction="in"})') == total["tokens_in"]
    assert query(prom, 'sum(tiqo_tokens_total{direction="out"})') == total["tokens_out"]
    assert query(prom, "sum(tiqo_cost_usd_total)") == pytest.approx(total["cost_usd"], rel=1e-9, abs=1e-12)
    assert query(prom, "sum(tiqo_cache_hits_total)") == total["cache_hits"]
    assert query(prom, 'sum(tiqo_requests_total{outcome!="ok"})') == total["errors"]
    assert query(prom, "sum(tiqo_request_duration_seconds_count)") == total["requests"]
    assert (query(prom, "sum(tiqo_time_to_first_token_seconds_count)") or 0) >= 5  # every answer that sent text
    assert query(prom, f'tiqo_model_loaded{{model="{LOCAL}"}}') == 1
    assert query(prom, 'tiqo_key_state{provider="alpha",key="a1",state="healthy"}') == 1
    assert query(prom, 'tiqo_breaker_state{provider="bravo",state="closed"}') == 1


@needs_prometheus
def test_promtool_accepts_the_exposition(scraped: Scraped) -> None:
    text = scraped.d.client().get("/metrics").text  # the Unix socket needs no token
    assert "tiqo_key_cooldown_seconds" in text and "secret" not in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_metrics_can_be_turned_off() -> None:
    d = start_daemon(short_home(), TIQO_METRICS="false")
    try:
        r = d.client().get("/metrics")
        assert r.status_code == 404 and "metrics.enabled" in r.json()["error"]["hint"]
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def _budget_row(scope: str, name: str, counter: str, spent: float) -> dict[str, Any]:
    return {"scope": scope, "name": name, "counter": counter, "period": "day", "limit_usd": 2.0, "spent_usd": spent}


def test_budget_gauges_name_users_only_when_asked() -> None:
    rows = [
        _budget_row("global", "global", "global", 1.0),
        _budget_row("user", "*", "user:ann", 0.5),
        _budget_row("user", "*", "user:bob", 1.5),
        _budget_row("provider", "*", "provider:alpha", 0.2),
    ]
    budgets = SimpleNamespace(limit_rows=lambda now: [{**r, "reserved_usd": 0.0} for r in rows])
    scheduler = SimpleNamespace(ps=list, pending=0, memory_budget=1 << 30)
    parts: Any = (SimpleNamespace(providers={}), scheduler, budgets, EventBus())

    def ratios(user_labels: bool) -> dict[tuple[str, str], float]:
        live = LiveState(*parts, user_labels=user_labels)
        metrics = Metrics()
        metrics.register(live)
        text = asyncio.run(metrics.render())[0].decode()
        family = next(f for f in text_string_to_metric_families(text) if f.name == "tiqo_budget_used_ratio")
        return {(s.labels["scope"], s.labels["subject"]): s.value for s in family.samples}

    assert ratios(False) == {("global", "global"): 0.5, ("user", "*"): 0.75, ("provider", "alpha"): 0.1}
    by_user = {("global", "global"): 0.5, ("user", "ann"): 0.25, ("user", "bob"): 0.75, ("provider", "alpha"): 0.1}
    assert ratios(True) == by_user


def test_events_lost_by_a_slow_subscriber_are_counted() -> None:
    async def lose_five() -> int:
        bus = EventBus()
        feed = bus.subscribe().__aiter__()
        reader = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)  # subscribed, and waiting
        for i in range(QUEUE + 5):
            bus.publish("request", {"i": i})
        await reader
        await feed.aclose()  # type: ignore[attr-defined]
        return bus.dropped_total

    assert asyncio.run(lose_five()) == 5
