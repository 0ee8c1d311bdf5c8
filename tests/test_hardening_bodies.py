"""Hardening (issue 16): big bodies do not stall other clients, and nothing is lost when a request is refused.

* A 16 MiB pathological chat body is answered (refused or served) while another client's ``/tiqo/health`` keeps
  answering; bounds are generous ratios (the machine is shared), bench/big_bodies.py gives the figures.
* Big bodies that are not valid JSON, or not a valid request, get the same 400 / 422 shapes as small ones.
* A battery of refused requests leaves the ledger (usage, logs), budgets and key states as they were: at most one
  ledger row per refused request, with a refusal outcome and no charge, and the daemon still serves.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.big_bodies import bodies
from tests.conftest import DaemonProc, short_home, start_daemon
from tests.test_gateway import write_home
from tests.upstreams import Upstream
from tiqo.daemon.http.json_bounds import count_values, upper_bound

CHAT = "/v1/chat/completions"
EXTRA: dict[str, Any] = {
    "users": {"tina": {"tpm": 1000}},
    "budgets": {"global": {"daily": 1000.0}, "users": {"poor": {"daily": 0.5}}},
}


@pytest.fixture(scope="module")
def bd(ups: tuple[Upstream, Upstream]) -> Iterator[DaemonProc]:
    home = short_home()
    write_home(home, *ups, EXTRA)
    d = start_daemon(home)
    yield d
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


def _health_during(d: DaemonProc, body: bytes) -> tuple[int, float, list[float]]:
    lat: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with d.client(30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.get("/tiqo/health")
                lat.append(time.perf_counter() - t)
                time.sleep(0.002)

    th = threading.Thread(target=probe)
    th.start()
    time.sleep(0.1)
    t = time.perf_counter()
    r = d.client(60).post(CHAT, content=body, headers={"content-type": "application/json"})
    took = time.perf_counter() - t
    stop.set()
    th.join()
    return r.status_code, took, lat


def test_a_16_mib_pathological_prompt_does_not_stall_health(bd: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    status, took, lat = _health_during(bd, bodies()["a."])
    assert status < 500
    assert took < 10  # issue: under 1 s (bench/big_bodies.py); generous here, the machine is shared
    assert lat, "health was never answered during the big request"
    # health waits at most for a slice of the big request, never for all of it
    assert max(lat) < max(0.25, 0.6 * took), (max(lat), took)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (bodies()["invalid"], 400, "invalid_json"),
        (b'{"model":"ext","messages":[{"role":"user","content":"' + b"a" * (1 << 20) + b'"}],"n":"x"}', 422, None),
        (b'{"messages":[{"role":"user","content":"' + b"a" * (1 << 20) + b'"}],"model":7}', 422, None),
    ],
)
def test_big_bad_bodies_get_the_same_errors_as_small_ones(
    bd: DaemonProc, body: bytes, status: int, code: str | None
) -> None:
    r = bd.client(60).post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert err["code"] == (code or "validation_error")
    if status == 422:
        small = body.replace(b"a" * (1 << 20), b"a")
        r2 = bd.client(60).post(CHAT, content=small, headers={"content-type": "application/json"})
        assert (r2.status_code, r2.json()["error"]["param"]) == (422, err["param"])


def test_a_body_of_many_tiny_values_is_refused_before_it_is_parsed(
    bd: DaemonProc, stubs: tuple[Upstream, Upstream]
) -> None:
    # ~560k messages in 16 MiB: json.loads and pydantic took 2.8-3.7 s on the loop here; now counted in a worker
    status, took, lat = _health_during(bd, bodies()["items"])
    assert status == 413
    assert lat, "health was never answered during the big request"
    assert max(lat) < max(0.25, 0.6 * took), (max(lat), took)
    r = bd.client(60).post(CHAT, content=bodies()["items"], headers={"content-type": "application/json"})
    err = r.json()["error"]
    assert (r.status_code, err["code"]) == (413, "too_many_json_values")
    assert "daemon.max_json_values" in err["hint"] and "50000" in err["message"]


def _messages(n: int) -> bytes:
    return b'{"model":"ext","messages":[' + b",".join([b'{"role":"user","content":"a"}'] * n) + b"]}"


def test_json_values_are_counted_not_guessed(bd: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    c = bd.client(60)
    json_ct = {"content-type": "application/json"}
    # 3 values per message + 3 for the request: 16665 messages make 50 k + 1 ... refused; 16665 - 1 make exactly 50 k
    over, at = _messages(16_666), _messages(16_665)
    r = c.post(CHAT, content=over, headers=json_ct)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_many_json_values"), r.text[:300]
    assert "50001 JSON values" in r.json()["error"]["message"]
    r = c.post(CHAT, content=at, headers={**json_ct, "x-tiqo-cache": "off"})
    assert r.status_code == 200, r.text[:300]
    # commas, braces and brackets inside strings are not values: 120 k of them in prose are served
    prose = b'{"model":"ext","messages":[{"role":"user","content":"' + b"a, {b} [c], " * 40_000 + b'"}]}'
    r = c.post(CHAT, content=prose, headers={**json_ct, "x-tiqo-cache": "off"})
    assert r.status_code == 200, r.text[:300]
    # a body over the bound that is not JSON gets the same 400 as a small one; so does one without a content type
    r = c.post(CHAT, content=over[:-1], headers=json_ct)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    r = c.post(CHAT, content=over)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_many_json_values")
    # multipart bodies are not JSON: not counted
    assert c.get("/tiqo/health").status_code == 200


# ------------------------------------------------------------------ nothing lost


def _state(c: httpx.Client) -> dict[str, Any]:
    return {p: c.get(p).json() for p in ("/tiqo/usage", "/tiqo/budget", "/tiqo/keys")}


def _rows(c: httpx.Client) -> list[dict[str, Any]]:
    data = c.get("/tiqo/logs", params={"n": 1000}).json()
    return list(data["data"] if isinstance(data, dict) and "data" in data else data)


def test_refused_requests_lose_nothing(bd: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    c = bd.client(60)
    assert c.post(CHAT, json={"model": "ext", "messages": [{"role": "user", "content": "warm up"}]}).status_code == 200
    tina = {"x-tiqo-user": "tina"}  # tpm 1000: a full bucket admits one request, then refuses
    big = {"model": "alpha-m", "max_tokens": 4, "messages": [{"role": "user", "content": "x" * 40_000}]}
    assert c.post(CHAT, json=big, headers=tina).status_code == 200
    before, rows_before = _state(c), _rows(c)
    msg = [{"role": "user", "content": "hello"}]
    json_h = {"content-type": "application/json"}
    refused: list[tuple[str, httpx.Response]] = [
        ("malformed json", c.post(CHAT, content=b'{"model": "ext", "messages": [', headers=json_h)),
        ("wrong types", c.post(CHAT, json={"model": "ext", "messages": "nope"})),
        ("oversize", c.post(CHAT, content=b"x" * ((16 << 20) + 1), headers=json_h)),
        ("unknown model", c.post(CHAT, json={"model": "no-such-model", "messages": msg})),
        (
            "restricted to external",
            c.post(CHAT, json={"model": "alpha-m", "messages": msg}, headers={"x-tiqo-class": "restricted"}),
        ),
        (
            "over budget",
            c.post(
                CHAT, json={"model": "alpha-m", "messages": msg, "max_tokens": 10**6}, headers={"x-tiqo-user": "poor"}
            ),
        ),
        (
            "rate limited",
            c.post(CHAT, json={"model": "alpha-m", "max_tokens": 4, "messages": msg}, headers=tina),
        ),
        ("bad audio", c.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio")})),
        (
            "over context",
            c.post(CHAT, json={"model": "alpha-m", "messages": [{"role": "user", "content": "x" * 8_000_000}]}),
        ),
    ]
    for name, r in refused:
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
    # refusals never touch a key, a budget or its reservations (the stream below does use a key and spends)
    keys_refused, budget_refused = c.get("/tiqo/keys").json()["keys"], c.get("/tiqo/budget").json()
    # a client that hangs up mid-stream
    stubs[0].reset()
    with c.stream("POST", CHAT, json={"model": "alpha-m", "messages": msg, "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_bytes())
    assert c.get("/tiqo/health").status_code == 200
    rows_after = _rows(c)
    new = [r for r in rows_after if r not in rows_before]
    refusals = [r for r in new if r.get("outcome") != "ok"]
    assert len(refusals) <= len(refused) + 1, refusals
    for row in refusals:
        assert row.get("outcome") in ("refused", "error", "cancelled", "interrupted"), row
        assert not row.get("cost_usd"), row
    assert keys_refused == before["/tiqo/keys"]["keys"]
    assert budget_refused == before["/tiqo/budget"]
    ok = c.post(CHAT, json={"model": "ext", "messages": [{"role": "user", "content": "still there?"}]})
    assert ok.status_code == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=',{}[]"\\a :'),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(alphabet=',{[a"'), inner, max_size=5),
    max_leaves=40,
)


@given(json_values, st.integers(min_value=1, max_value=64))
def test_the_cheap_bound_is_never_below_the_exact_count(doc: Any, chunk: int) -> None:
    text = json.dumps(doc, separators=(",", ":")).encode()
    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    assert count_values(text) <= 1 + sum(upper_bound(p) for p in pieces)
    assert isinstance(count_values(text[:-1] + b"!"), str)  # broken JSON: the parse error, not a count


def test_every_route_parses_json_with_pydantic_core() -> None:
    """json.loads held the event loop 29 ms for a 16 MiB prompt; pydantic-core's parser 5 ms (json_route.py)."""
    import importlib
    import pkgutil

    from fastapi.routing import APIRoute

    import tiqo.daemon.http.routes as routes
    from tiqo.daemon.http.json_route import JsonRoute

    slow = []
    for info in pkgutil.iter_modules(routes.__path__):
        module = importlib.import_module(f"{routes.__name__}.{info.name}")
        router = getattr(module, "router", None)
        if router is not None:
            slow += [r.path for r in router.routes if isinstance(r, APIRoute) and not isinstance(r, JsonRoute)]
    assert slow == []


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"n": 123456789012345678901234567890, "f": 1e400, "g": -0.0, "h": 1.5e-7}',
        '{"s": "caf\\u00e9 \\ud83d\\ude00 \\n\\t\\"", "t": "\\u0000"}',
        "[NaN, Infinity, -Infinity]",
        '{"deep": [[[[[[[[[[{}]]]]]]]]]]}',
        '"just a string"',
    ],
)
def test_pydantic_core_parses_like_json_loads(text: str) -> None:
    import json
    import math

    import pydantic_core

    def same(a: object, b: object) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or a == b
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    assert same(pydantic_core.from_json(text), json.loads(text))
