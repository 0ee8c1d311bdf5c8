"""Issue 16, findings 5, 6, 11 (keep_alive and the upstream ``user``) and 12: the TCP listener trusts a caller with
exactly what its token names, whatever the user's name is written in, and nothing more.

One daemon with ``daemon.listen``, a stub OpenAI provider (tests/upstreams.py) and these users:
  josé (tier free), 山田 (tier basic), renée (tier free, 1 request a minute), pro-user (tier pro), untiered (no tier).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon, wait_for
from tests.test_tcp import free_port
from tests.upstreams import Upstream
from tiqo.daemon.http.tcp import BearerAuth

CHAT = "/v1/chat/completions"
LOCAL = "smollm2-135m"
USERS: dict[str, dict[str, Any]] = {
    "josé": {"tier": "free"},
    "山田": {"tier": "basic"},
    "renée": {"tier": "free", "rpm": 1},
    "pro-user": {"tier": "pro"},
    "untiered": {"data_class": "internal"},  # a table, a token, but no tier
}


def write_config(home: Path, up: Upstream) -> None:
    config = {
        "providers": {"alpha": {"kind": "openai", "base_url": up.url + "/v1"}},
        "models": {"alpha-m": {"provider": "alpha", "upstream_model": "alpha-up"}},
        "users": USERS,
    }
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"alpha": {"k1": {"secret": "sk-alpha-0123456789abcdefSECRET"}}}))
    keys.chmod(0o600)


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def tcp(up: Upstream) -> Iterator[tuple[DaemonProc, str, dict[str, str]]]:
    home = short_home()
    write_config(home, up)
    port = free_port()
    d = start_daemon(home, TIQO_LISTEN=f"127.0.0.1:{port}")
    tokens = {}
    for name in USERS:
        r = d.client().post(f"/tiqo/users/{quote(name, safe='')}/token")
        assert r.status_code == 201, r.text
        tokens[name] = r.json()["token"]
    yield d, f"http://127.0.0.1:{port}", tokens
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


def body(model: str = LOCAL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}


def over_tcp(url: str, token: str, payload: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url + CHAT, json=payload, headers={"authorization": f"Bearer {token}", **headers}, timeout=120)


def last_row(d: DaemonProc) -> dict[str, Any]:
    row: dict[str, Any] = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"][0]
    return row


# ------------------------------------------------------------------ finding 5: non-ASCII user names


@pytest.mark.parametrize(("name", "tier"), [("josé", "free"), ("山田", "basic")])
def test_a_non_ascii_token_user_gets_their_own_table(
    tcp: tuple[DaemonProc, str, dict[str, str]], name: str, tier: str
) -> None:
    d, url, tokens = tcp
    r = over_tcp(url, tokens[name], body())
    assert r.status_code == 200, r.text
    row = last_row(d)
    assert (row["user"], row["tier"]) == (name, tier)  # not latin-1 mojibake with the unrestricted default tier


def test_a_non_ascii_token_users_limits_apply(tcp: tuple[DaemonProc, str, dict[str, str]]) -> None:
    _, url, tokens = tcp
    assert over_tcp(url, tokens["renée"], body()).status_code == 200
    r = over_tcp(url, tokens["renée"], body())
    assert r.status_code == 429, r.text  # rpm = 1 in [users."renée"]
    assert "Retry-After" in r.headers


def test_socket_callers_name_non_ascii_users_percent_encoded_or_utf8(
    tcp: tuple[DaemonProc, str, dict[str, str]],
) -> None:
    d, _, _ = tcp
    c = d.client()
    r = c.post(CHAT, json=body(), headers={"x-tiqo-user": quote("josé")})
    assert r.status_code == 200, r.text
    assert (last_row(d)["user"], last_row(d)["tier"]) == ("josé", "free")
    r = c.post(CHAT, json=body(), headers={"x-tiqo-user": "山田".encode()})  # raw UTF-8 bytes
    assert r.status_code == 200, r.text
    assert (last_row(d)["user"], last_row(d)["tier"]) == ("山田", "basic")
    r = c.post(CHAT, json=body(), headers={"x-tiqo-user": b"jos\xe9"})  # latin-1, not UTF-8
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-tiqo-user", r.text
    assert "percent-encode" in r.json()["error"]["hint"]


def test_the_cli_sends_non_ascii_users(tcp: tuple[DaemonProc, str, dict[str, str]]) -> None:
    d, _, _ = tcp
    r = d.cli("ask", "--user", "山田", "--model", LOCAL, "--max-tokens", "2", "Hi")
    assert r.returncode == 0, r.stderr  # was a UnicodeEncodeError in httpx before the daemon saw it
    assert (last_row(d)["user"], last_row(d)["tier"]) == ("山田", "basic")
    r = d.cli("users", "list", "--json")
    assert {"josé", "山田"} <= {u["name"] for u in json.loads(r.stdout)["users"]}


# ------------------------------------------------------------------ finding 6: a token without a tier fails closed


def test_a_token_user_without_a_tier_gets_the_listen_tier_not_the_unrestricted_default(
    tcp: tuple[DaemonProc, str, dict[str, str]], up: Upstream
) -> None:
    d, url, tokens = tcp
    up.reset()
    r = over_tcp(url, tokens["untiered"], body("alpha-m"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_candidate", r.text
    assert "tier free does not allow provider alpha" in r.text
    assert not up.requests  # nothing left the machine
    assert over_tcp(url, tokens["untiered"], body()).status_code == 200  # local models still answer
    assert last_row(d)["tier"] == "free"
    # the socket's own callers keep routing.tier (the socket is private to the daemon's OS user)
    r = d.client().post(CHAT, json=body("alpha-m"), headers={"x-tiqo-user": "untiered"})
    assert r.status_code == 200, r.text
    assert last_row(d)["tier"] == "default"


def test_tokens_can_be_created_with_a_tier(tcp: tuple[DaemonProc, str, dict[str, str]]) -> None:
    d, url, _ = tcp
    r = d.client().post("/tiqo/users/newbie/token", json={"tier": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tier", r.text
    assert "free" in r.json()["error"]["message"]
    r = d.client().post("/tiqo/users/newbie/token")
    assert r.status_code == 201 and r.json()["tier"] == "free" and r.json()["tier_source"] == "daemon.listen_tier"
    r = d.cli("users", "token", "newbie2")
    assert r.returncode == 0 and r.stdout.strip().startswith("tq-") and "\n" not in r.stdout.strip()
    assert "daemon.listen_tier" in r.stderr and "--tier" in r.stderr  # says what the user gets and how to change it
    r = d.cli("users", "token", "newbie2", "--tier", "pro")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    users = {u["name"]: u for u in d.client().get("/tiqo/users").json()["users"]}
    assert users["newbie2"]["tier"] == "pro" and users["newbie2"]["token"] is True
    assert users["newbie"]["tier"] is None and users["newbie"]["tcp_tier"] == "free"
    assert over_tcp(url, token, body()).status_code == 200
    assert last_row(d)["tier"] == "pro"


def test_a_listen_tier_that_does_not_exist_refuses_instead_of_opening_up() -> None:
    from tiqo.core.errors import ConfigError
    from tiqo.daemon.catalog.routing_config import tcp_tier

    tiers = ("free", "pro")
    assert tcp_tier("pro", "free", tiers) == ("pro", "user")
    assert tcp_tier(None, "free", tiers) == ("free", "daemon.listen_tier")
    assert tcp_tier(None, "default", tiers) == ("default", "daemon.listen_tier")  # an explicit opt-in
    with pytest.raises(ConfigError) as err:
        tcp_tier(None, "gold", tiers)
    assert err.value.param == "daemon.listen_tier" and "tiqo users token" in (err.value.hint or "")


# ------------------------------------------------------------------ finding 11: keep_alive and the upstream user


def _keep_alive(d: DaemonProc) -> Any:
    models = {m["name"]: m for m in d.client().get("/tiqo/ps").json()["models"]}
    return models[LOCAL]["keep_alive_s"] if LOCAL in models else "unloaded"


def test_tcp_callers_cannot_pin_or_unload_shared_models(tcp: tuple[DaemonProc, str, dict[str, str]]) -> None:
    d, url, tokens = tcp
    assert d.client().post(CHAT, json=body(keep_alive="7m")).status_code == 200  # the socket may
    assert _keep_alive(d) == 420
    for value in ("-1", 0, "1s"):
        r = over_tcp(url, tokens["pro-user"], body(keep_alive=value))
        assert r.status_code == 200, r.text
        assert _keep_alive(d) == 420, value
        assert r.headers.get("x-tiqo-warning", "").startswith("keep_alive is ignored over TCP")
    r = httpx.post(
        url + "/v1/completions",
        json={"model": LOCAL, "prompt": "Hi", "max_tokens": 2, "keep_alive": 0},
        headers={"authorization": f"Bearer {tokens['pro-user']}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert _keep_alive(d) == 420


def test_providers_see_the_authenticated_user_never_one_the_caller_names(
    tcp: tuple[DaemonProc, str, dict[str, str]], up: Upstream
) -> None:
    d, url, tokens = tcp
    up.reset()
    assert over_tcp(url, tokens["pro-user"], body("alpha-m", user="josé")).status_code == 200
    assert over_tcp(url, tokens["pro-user"], body("alpha-m", user="someone-else")).status_code == 200
    assert over_tcp(url, tokens["pro-user"], body("alpha-m")).status_code == 200
    sent = [r["json"] for r in up.requests if r["path"].endswith("/chat/completions")]
    assert [s.get("user") for s in sent] == ["pro-user", "pro-user", None]
    assert "user" not in sent[2]  # a caller that names no user sends none upstream
    assert last_row(d)["user"] == "pro-user"
    # on the socket the user tiqo accounts the request to is the one the provider sees too
    up.reset()
    r = d.client().post(CHAT, json=body("alpha-m", user="bob"), headers={"x-tiqo-user": "ann"})
    assert r.status_code == 200, r.text
    assert up.requests[-1]["json"]["user"] == "ann" and last_row(d)["user"] == "ann"


# ------------------------------------------------------------------ finding 12: the listener itself


def test_health_over_tcp_says_only_ok(tcp: tuple[DaemonProc, str, dict[str, str]]) -> None:
    d, url, tokens = tcp
    r = httpx.get(url + "/tiqo/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}  # load balancers need no token
    r = httpx.get(url + "/tiqo/health", headers={"authorization": f"Bearer {tokens['josé']}"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}  # no pid, no socket path
    assert httpx.head(url + "/tiqo/health", timeout=30).status_code == 200
    assert "pid" in d.client().get("/tiqo/health").json()  # the socket still tells its owner everything


def _run_asgi(scope: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    called = False
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(BearerAuth(app, users=lambda: {})(scope, receive, send))
    return called, sent


@pytest.mark.parametrize("kind", ["websocket", "lifespan", "webtransport"])
def test_non_http_scopes_over_tcp_never_reach_the_app(kind: str) -> None:
    scope = {"type": kind, "path": "/v1/chat/completions", "headers": [], "server": ("127.0.0.1", 8311)}
    called, sent = _run_asgi(scope)
    assert not called
    if kind == "websocket":
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "only HTTP is served over TCP"}]
    # lifespan on the app itself (no server address) still runs: the daemon starts and stops through it
    called, _ = _run_asgi({"type": "lifespan"})
    assert called


def _open_idle(url: str, n: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    return [socket.create_connection((host, int(port))) for _ in range(n)]


def test_the_listener_caps_its_connections() -> None:
    port = free_port()
    d = start_daemon(short_home(), TIQO_LISTEN=f"127.0.0.1:{port}", TIQO_LISTEN_MAX_CONNECTIONS="2")
    url = f"http://127.0.0.1:{port}"
    idle = _open_idle(url, 2)
    try:

        def refused() -> httpx.Response | None:
            r = httpx.get(url + "/tiqo/health", timeout=10)
            return r if r.status_code == 503 else None

        r = wait_for(refused, timeout=15)
        assert r is not None, "a third TCP connection was served"
        assert r.json()["error"]["code"] == "too_many_connections" and "Retry-After" in r.headers
        assert "daemon.listen_max_connections" in r.json()["error"]["hint"]
        assert d.client().get("/tiqo/health").status_code == 200  # the socket is never capped by TCP callers
    finally:
        for s in idle:
            s.close()
    try:
        assert wait_for(lambda: httpx.get(url + "/tiqo/health", timeout=10).status_code == 200)
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


@pytest.mark.parametrize("name", ["ann", "josé", "山田太郎", "50% off", "a b"])
def test_user_names_survive_a_header_whatever_they_are_written_in(name: str) -> None:
    from tiqo.protocol.headers import decode_name, encode_name

    sent = encode_name(name)
    assert sent.isascii() and (sent == name or not name.isascii() or "%" in name)  # ASCII names go as they are
    as_starlette_reads_it = sent.encode("ascii").decode("latin-1")
    assert decode_name(as_starlette_reads_it, "x-tiqo-user") == name
    if "%" not in name:  # raw UTF-8 bytes work too (a literal % must be sent as %25)
        assert decode_name(name.encode().decode("latin-1"), "x-tiqo-user") == name
