"""End to end through a real daemon and real sockets: external providers are local stub servers that speak the real
OpenAI / Anthropic / Gemini wire protocols (tests/upstreams.py) and inject 429s, 5xx, resets, hangs and quotas."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon, wait_for
from tests.upstreams import Upstream

CHAT = "/v1/chat/completions"
SECRETS = {
    "a1": "sk-alpha-one-0123456789abcdefSECRET",
    "a2": "sk-alpha-two-0123456789abcdefSECRET",
    "b1": "sk-bravo-one-0123456789abcdefSECRET",
    "g1": "AIzaGeminiKey0123456789abcdefSECRET",
    "c1": "sk-ant-claude-0123456789abcdefSECRET",
}


def write_home(home: Path, a: Upstream, b: Upstream, extra: dict[str, Any] | None = None) -> None:
    """Provider alpha (OpenAI wire, keys a1 a2) on stub A; bravo (OpenAI, b1), gem (Gemini, g1) and claude
    (Anthropic, c1) on stub B. Alias `ext` = alpha-m then bravo-m (then the local model)."""
    config: dict[str, Any] = {
        "providers": {
            "alpha": {"kind": "openai", "base_url": a.url + "/v1", "timeout_first_byte": "1s", "timeout_idle": "1s"},
            "bravo": {"kind": "openai", "base_url": b.url + "/v1", "timeout_first_byte": "1s", "timeout_idle": "1s"},
            "gem": {"kind": "gemini", "base_url": b.url},
            "claude": {"kind": "anthropic", "base_url": b.url},
        },
        "models": {
            "alpha-m": {"provider": "alpha", "upstream_model": "alpha-up", "price_in": 1.0, "price_out": 2.0},
            "bravo-m": {"provider": "bravo", "upstream_model": "bravo-up", "price_in": 3.0, "price_out": 4.0},
            "gem-m": {"provider": "gem", "upstream_model": "gemini-2.0-flash", "price_in": 0.1, "price_out": 0.4},
            "claude-m": {"provider": "claude", "upstream_model": "claude-x", "price_in": 3.0, "price_out": 15.0},
        },
        "aliases": {"ext": ["alpha-m", "bravo-m"]},
        "routes": {"chat": {"simple": ["ext"], "medium": ["ext"], "complex": ["ext"]}},
        "routing": {"breaker_failures": 3, "breaker_cooldown": "60s"},
    }
    for key, value in (extra or {}).items():
        for name, entry in value.items():
            table = config.setdefault(key, {})
            table[name] = {**table[name], **entry} if isinstance(entry, dict) and name in table else entry
    keys = {
        "alpha": {"a1": {"secret": SECRETS["a1"]}, "a2": {"secret": SECRETS["a2"]}},
        "bravo": {"b1": {"secret": SECRETS["b1"]}},
        "gem": {"g1": {"secret": SECRETS["g1"]}},
        "claude": {"c1": {"secret": SECRETS["c1"]}},
    }
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys_file = home / "config" / "keys.toml"
    keys_file.write_text(tomlkit.dumps(keys))
    keys_file.chmod(0o600)


@pytest.fixture
def gw(stubs: tuple[Upstream, Upstream]) -> Iterator[DaemonProc]:
    home = short_home()
    write_home(home, *stubs)
    d = start_daemon(home)
    yield d
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


def ask(d: DaemonProc, model: str = "ext", text: str = "hello there", **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return d.client(30).post(CHAT, json=body, headers=headers)


def sse(r: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in r.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def keys_of(d: DaemonProc) -> dict[str, dict[str, Any]]:
    return {f"{k['provider']}/{k['name']}": k for k in d.client().get("/tiqo/keys").json()["keys"]}


def served_by(up: Upstream) -> list[str | None]:
    return [r["key"] for r in up.requests if r["path"].endswith("/chat/completions")]


# ------------------------------------------------------------------ protocols


@pytest.mark.parametrize("model", ["alpha-m", "gem-m", "claude-m"])
def test_each_protocol_answers_json_and_stream(gw: DaemonProc, stubs: tuple[Upstream, Upstream], model: str) -> None:
    r = ask(gw, model)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "echo: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["completion_tokens"] == 3
    assert r.headers["x-tiqo-model"] == model and r.headers["x-tiqo-backend"] == model.split("-")[0]
    assert float(r.headers["x-tiqo-cost-usd"]) > 0
    r = ask(gw, model, stream=True, stream_options={"include_usage": True})
    events = sse(r)
    assert events[-1] == "[DONE]"
    text = "".join((e["choices"][0]["delta"].get("content") or "") for e in events[:-1] if e.get("choices"))
    assert text == "echo: hello there"
    usage = [e for e in events[:-1] if e.get("usage")]
    assert usage and usage[-1]["usage"]["completion_tokens"] == 3
    assert usage[-1]["x_tiqo"]["backend"] == r.headers["x-tiqo-backend"]
    assert all(e["model"] == model for e in events[:-1])


def test_gemini_key_goes_in_a_header_never_the_url(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    _, b = stubs
    assert ask(gw, "gem-m").status_code == 200
    req = [r for r in b.requests if r["protocol"] == "gemini"][-1]
    assert req["headers"]["x-goog-api-key"] == SECRETS["g1"]
    assert SECRETS["g1"] not in req["path"] + req["query"]
    assert b.violations == []


def test_openai_sdk_streams_an_external_model_through_the_socket(gw: DaemonProc) -> None:
    import openai

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(gw.socket)))
    client = openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http, max_retries=0)
    stream = client.chat.completions.create(
        model="claude-m", messages=[{"role": "user", "content": "stream me"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: stream me"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    res = client.chat.completions.create(model="alpha-m", messages=[{"role": "user", "content": "find x"}], tools=tools)
    call = res.choices[0].message.tool_calls[0]
    assert res.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"text": "find x"}


# ------------------------------------------------------------------ keys


def test_key_over_quota_is_skipped_and_the_next_key_serves(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    a.set_quota(SECRETS["a1"], 1)
    a.set_quota(SECRETS["a2"], 5)
    for _ in range(3):
        r = ask(gw, "alpha-m")
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "alpha", r.text
    # round-robin: a1, a2, then a1 answers 429 insufficient_quota → a2 serves (never a1 again in that request)
    assert served_by(a) == [SECRETS["a1"], SECRETS["a2"], SECRETS["a1"], SECRETS["a2"]]
    keys = keys_of(gw)
    assert keys["alpha/a1"]["status"] == "exhausted" and keys["alpha/a1"]["until"] > time.time()
    assert keys["alpha/a2"]["status"] == "healthy"
    assert ask(gw, "alpha-m").status_code == 200
    assert served_by(a)[-1] == SECRETS["a2"]  # the exhausted key is not tried again
    assert b.requests == []


def test_429_with_retry_after_cools_the_key_down(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    a.fail_next(1, "429", retry_after=30)
    r = ask(gw, "alpha-m")
    assert r.status_code == 200 and r.headers["x-tiqo-attempts"] == "2"
    key = keys_of(gw)["alpha/a1"]
    assert key["status"] == "cooling" and 25 < key["until"] - time.time() <= 31
    for _ in range(2):
        assert ask(gw, "alpha-m").status_code == 200
    assert served_by(a)[-2:] == [SECRETS["a2"], SECRETS["a2"]]


def test_bad_key_is_disabled_with_a_visible_reason(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    a.valid_keys = {SECRETS["a2"]}
    assert ask(gw, "alpha-m").status_code == 200
    key = keys_of(gw)["alpha/a1"]
    assert key["status"] == "disabled" and "rejected" in key["reason"]
    assert SECRETS["a1"] not in json.dumps(key)
    r = gw.client().post("/tiqo/keys/alpha/a1/enable")
    assert r.status_code == 200 and r.json()["status"] == "healthy"


def test_all_keys_rate_limited_is_429_with_retry_after(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    a.set_mode("429", retry_after=20)
    r = ask(gw, "alpha-m")
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 20
    assert len(served_by(a)) == 2  # each key once
    r = ask(gw, "alpha-m")  # both cooling: refused without calling the provider
    assert r.status_code == 429 and "cooling down" in r.json()["error"]["message"]
    assert len(served_by(a)) == 2


def test_key_counters_survive_a_restart(stubs: tuple[Upstream, Upstream]) -> None:
    home = short_home()
    write_home(home, *stubs)
    d = start_daemon(home)
    try:
        for _ in range(3):
            assert ask(d, "bravo-m").status_code == 200
        before = keys_of(d)["bravo/b1"]
        assert before["requests_today"] == 3 and before["tokens_today"] > 0
    finally:
        d.stop()
    d = start_daemon(home)
    try:
        after = keys_of(d)["bravo/b1"]
        assert (after["requests_today"], after["tokens_today"]) == (before["requests_today"], before["tokens_today"])
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ fallback and breakers


def test_server_errors_trip_the_breaker_and_traffic_moves_on(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    a.set_mode("500")
    for _ in range(5):
        r = ask(gw, "ext")
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "bravo", r.text
    # breaker_failures = 3: alpha saw three requests, then its circuit opened and it was skipped
    assert len(served_by(a)) == 3
    assert len(served_by(b)) == 5
    providers = {p["name"]: p for p in gw.client().get("/tiqo/providers").json()["providers"]}
    assert providers["alpha"]["circuit"] == "open" and "circuit open" in providers["alpha"]["status"]
    explain = gw.client().post("/tiqo/route/explain", json={"prompt": "hello there"}).json()
    alpha = next(c for c in explain["candidates"] if c["model"] == "alpha-m")
    assert not alpha["kept"] and "circuit open" in alpha["reason"]
    assert explain["chosen"] == "bravo-m"


@pytest.mark.parametrize("fault", ["reset", "hang", "503"])
def test_a_failing_provider_falls_back_before_the_first_byte(
    gw: DaemonProc, stubs: tuple[Upstream, Upstream], fault: str
) -> None:
    a, _ = stubs
    a.fail_next(1, fault)
    started = time.monotonic()
    r = ask(gw, "ext", stream=True)
    events = sse(r)
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "bravo"
    assert events[-1] == "[DONE]"
    if fault == "hang":  # abandoned after timeout_first_byte (1 s here), not the default minutes
        assert time.monotonic() - started < 10


def test_all_external_candidates_down_the_local_model_answers(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    a.set_mode("500")
    b.set_mode("reset")
    r = ask(gw, "auto", "Which city is the capital of France?", max_tokens=12, temperature=0)
    assert r.status_code == 200, r.text
    assert r.headers["x-tiqo-backend"] == "local:llama.cpp" and r.headers["x-tiqo-model"] == "smollm2-135m"
    assert r.json()["choices"][0]["message"]["content"].strip()  # an answer (its words differ between CPUs)
    assert r.json()["usage"]["completion_tokens"] > 0
    assert r.headers["x-tiqo-cost-usd"] == "0"


def test_a_provider_dying_mid_stream_yields_an_error_event(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    a.fail_next(1, "midstream", after=2)
    r = ask(gw, "alpha-m", stream=True)
    events = sse(r)
    assert r.status_code == 200
    assert "[DONE]" not in events
    assert "error" in events[-1] and events[-1]["error"]["code"] == "stream_interrupted"
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices"))
    assert content.startswith("echo:")
    # the failure counts toward the provider's health
    assert json.loads(gw.client().get("/tiqo/keys").text)["keys"][0]["failures_total"] == 1
    # a JSON request has sent nothing yet when the provider dies: it falls back instead
    a.fail_next(1, "midstream", after=2)
    r = ask(gw, "ext")
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "bravo"


def test_keyless_provider_rate_limit_does_not_retry_the_same_candidate(
    stubs: tuple[Upstream, Upstream],
) -> None:
    a, b = stubs
    home = short_home()
    # alpha and bravo have no pooled keys (a local vLLM, say): a fixed header authenticates them
    fixed = {"headers": {"Authorization": "Bearer static-token"}}
    write_home(home, a, b, {"providers": {"alpha": fixed, "bravo": fixed}})
    (home / "config" / "keys.toml").write_text("")
    d = start_daemon(home)
    try:
        a.set_mode("429", retry_after=1)
        r = ask(d, "ext")
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "bravo"
        assert len(a.requests) == 1
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ cache


def test_exact_cache_serves_repeats_json_and_stream(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    r1 = ask(gw, "alpha-m", "cache me", temperature=0)
    assert r1.headers["x-tiqo-cache"] == "miss"
    r2 = ask(gw, "alpha-m", "cache me", temperature=0)
    assert r2.headers["x-tiqo-cache"] == "hit" and r2.headers["x-tiqo-backend"] == "cache"
    assert r2.json()["choices"][0]["message"] == r1.json()["choices"][0]["message"]
    r3 = ask(gw, "alpha-m", "cache me", temperature=0, stream=True)
    assert r3.headers["x-tiqo-cache"] == "hit"
    events = sse(r3)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "echo: cache me"
    assert len(served_by(a)) == 1
    assert (
        ask(gw, "alpha-m", "cache me", temperature=0, headers={"x-tiqo-cache": "off"}).headers["x-tiqo-cache"] == "off"
    )
    assert ask(gw, "alpha-m", "cache me", temperature=0.7).headers["x-tiqo-cache"] == "off"  # not deterministic
    assert len(served_by(a)) == 3
    stats = gw.client().get("/tiqo/cache").json()
    assert stats["entries"] == 1 and stats["hits"] == 2
    assert gw.client().delete("/tiqo/cache").json()["removed"] == 1
    assert ask(gw, "alpha-m", "cache me", temperature=0).headers["x-tiqo-cache"] == "miss"


def test_restricted_requests_stay_local_and_cache_per_user(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    body = {"max_tokens": 8, "temperature": 0}
    r = ask(gw, "auto", "my secret plan", headers={"x-tiqo-class": "restricted", "x-tiqo-user": "ann"}, **body)
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:llama.cpp"
    assert r.headers["x-tiqo-cache"] == "miss"
    r = ask(gw, "auto", "my secret plan", headers={"x-tiqo-class": "restricted", "x-tiqo-user": "ann"}, **body)
    assert r.headers["x-tiqo-cache"] == "hit"
    r = ask(gw, "auto", "my secret plan", headers={"x-tiqo-class": "restricted", "x-tiqo-user": "bob"}, **body)
    assert r.headers["x-tiqo-cache"] == "miss"  # another user's restricted answer is never shared
    assert a.requests == [] and b.requests == []
    r = ask(gw, "alpha-m", "my secret plan", headers={"x-tiqo-class": "restricted"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data"  # fail closed


# ------------------------------------------------------------------ secrets


def test_keys_never_appear_in_anything_the_daemon_wrote(gw: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, b = stubs
    a.valid_keys = {SECRETS["a2"]}  # a1 is rejected: its error path runs too
    b.fail_next(1, "500")
    outputs = [ask(gw, m).text for m in ("alpha-m", "ext", "gem-m", "claude-m")]
    c = gw.client()
    outputs += [c.get(p).text for p in ("/tiqo/keys", "/tiqo/providers", "/tiqo/models", "/openapi.json")]
    outputs.append(c.post("/tiqo/route/explain", json={"prompt": "x"}).text)
    gw.stop()
    written = []
    for path in gw.home.rglob("*"):
        if path.is_file() and path.name != "keys.toml":
            written.append(path.read_bytes().decode("utf-8", "replace"))
    blob = "\n".join(outputs + written)
    assert "tiqo.db" in {p.name for p in gw.home.rglob("*")}
    for name, secret in SECRETS.items():
        assert secret not in blob, f"key {name} leaked"
        assert secret[:20] not in blob
    keys_file = gw.home / "config" / "keys.toml"
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o600


# ------------------------------------------------------------------ plugins


def test_a_broken_plugin_is_reported_and_the_daemon_still_serves(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "tiqo_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiqo-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tiqo]\nbroken = tiqo_broken_plugin\n")
    (site / "tiqo_broken_plugin.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    home = short_home()
    d = start_daemon(home, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    try:
        report = d.client().get("/tiqo/plugins").json()
        failed = {f["name"]: f["error"] for f in report["failed"]}
        assert "broken on purpose" in failed["broken"]
        assert {"openai", "anthropic", "gemini"} <= set(report["provider_kinds"])
        assert wait_for(lambda: d.client().get("/tiqo/health").status_code == 200)
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_configuration_mistakes_are_reported_not_fatal(stubs: tuple[Upstream, Upstream]) -> None:
    home = short_home()
    broken = {"providers": {"bravo": {"key_strategy": "fastest"}, "alpha": {"timeout_idle": "soon"}}}
    write_home(home, *stubs, broken)
    (home / "config" / "keys.toml").write_text(tomlkit.dumps({"claude": {"c1": {"secret": SECRETS["c1"]}}}))
    d = start_daemon(home)
    try:
        c = d.client()
        providers = {p["name"]: p for p in c.get("/tiqo/providers").json()["providers"]}
        assert "config error" in providers["bravo"]["status"] and "fastest" in providers["bravo"]["status"]
        assert "config error" in providers["alpha"]["status"]
        assert "no keys" in providers["gem"]["status"] and "tiqo keys add gem" in providers["gem"]["status"]
        r = ask(d, "gem-m")
        assert r.status_code == 400 and "no keys" in r.json()["error"]["message"]
        assert ask(d, "claude-m").status_code == 200  # the rest still serves
        r = c.post("/tiqo/models", json={"name": "ext", "provider": "claude", "upstream_model": "x"})
        assert r.status_code == 409 and "alias" in r.json()["error"]["message"]
        r = c.delete("/tiqo/providers/bravo")
        assert r.status_code == 409 and "bravo-m" in r.json()["error"]["message"]
        assert c.delete("/tiqo/models/bravo-m").status_code == 200
        assert c.delete("/tiqo/providers/bravo").status_code == 200  # a broken entry can be removed
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
