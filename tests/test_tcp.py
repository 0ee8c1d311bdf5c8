"""The optional TCP listener: bearer tokens map to users; management stays on the Unix socket."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import DaemonProc, short_home, start_daemon
from tiqo.daemon.http.tcp import parse_listen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tcp() -> Iterator[tuple[DaemonProc, str]]:
    port = free_port()
    d = start_daemon(short_home(), TIQO_LISTEN=f"127.0.0.1:{port}")
    yield d, f"http://127.0.0.1:{port}"
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def test_bearer_tokens_map_to_users(tcp: tuple[DaemonProc, str]) -> None:
    d, url = tcp
    r = d.client().post("/tiqo/users/ann/token")
    assert r.status_code == 201
    token = r.json()["token"]
    assert token.startswith("tq-") and token not in (d.home / "config" / "config.toml").read_text()
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with httpx.Client(base_url=url, timeout=60) as web:
        assert web.get("/tiqo/health").status_code == 200  # health needs no token
        r = web.post("/v1/chat/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "tiqo users token" in r.json()["error"]["hint"]
        r = web.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer tq-wrong"})
        assert r.status_code == 401
        auth = {"authorization": f"Bearer {token}", "x-tiqo-user": "root", "x-tiqo-tier": "enterprise"}
        r = web.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 200, r.text
        for path in ("/tiqo/keys", "/tiqo/budget", "/tiqo/logs"):  # management is socket-only, token or not
            r = web.get(path, headers=auth)
            assert r.status_code == 403 and r.json()["error"]["code"] == "socket_only"
    row = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"][0]
    # the token names the user; spoofed headers dropped; a user without a tier gets daemon.listen_tier (fail-closed)
    assert row["user"] == "ann" and row["tier"] == "free"
    # the official OpenAI SDK works against it with the token as its API key
    client = openai.OpenAI(base_url=url + "/v1", api_key=token)
    res = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert res.choices[0].message.content
    users = d.client().get("/tiqo/users").json()
    assert {u["name"]: u["token"] for u in users["users"]}["ann"] is True
    assert d.client().delete("/tiqo/users/ann/token").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("8311", ("127.0.0.1", 8311)), (":8311", ("0.0.0.0", 8311)), ("[::1]:9000", ("::1", 9000))],
)
def test_listen_addresses(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(text) == expected


def test_bad_listen_address_stops_the_daemon_with_a_hint() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost:http")
    with pytest.raises(RuntimeError, match="HOST:PORT"):
        start_daemon(short_home(), TIQO_LISTEN="localhost:http")


def test_users_cli_creates_lists_and_revokes_tokens(tcp: tuple[DaemonProc, str]) -> None:
    d, url = tcp
    r = d.cli("users", "token", "cli-user")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("tq-") and "\n" not in token
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    auth = {"authorization": f"Bearer {token}"}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=60).status_code == 200
    r = d.cli("users", "list")
    assert r.returncode == 0 and "cli-user" in r.stdout and "enterprise" in r.stdout and "127.0.0.1:" in r.stdout
    assert d.cli("users", "revoke", "cli-user").returncode == 0
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=60).status_code == 401
