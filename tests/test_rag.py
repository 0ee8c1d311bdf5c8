"""Retrieval-augmented answers: the real embedding model, a real LanceDB collection, the real chat model (and a stub
provider, to see exactly what a model is sent), through a real daemon and the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.upstreams import Upstream

DOCS = {
    "meeting.md": "The weekly team meeting is on Thursday at 10:30 in room Aurora.",
    "wifi.md": "The office Wi-Fi network is called Lantern and its password is printed on the kitchen fridge.",
    "parking.md": "Visitors park in the underground garage, level -2, spaces 40 to 55.",
    "lunch.md": "The canteen serves lunch from noon until two o'clock; Fridays are pizza days.",
}


@pytest.fixture
def d(stubs: tuple[Upstream, Upstream]) -> Iterator[DaemonProc]:
    a, _ = stubs
    home = short_home()
    (home / "config").mkdir(parents=True)
    config = {
        "providers": {"stubA": {"kind": "openai", "base_url": a.url + "/v1"}},
        "models": {"stub-m": {"provider": "stubA", "upstream_model": "gpt-stub"}},
    }
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"stubA": {"k1": {"secret": "sk-rag-0123456789abcdefSECRET"}}}))
    keys.chmod(0o600)
    daemon = start_daemon(home)
    c = daemon.client()
    assert c.post("/tiqo/vectors", json={"name": "office"}).status_code == 201
    docs = [{"id": name, "text": text, "metadata": {"source": name}} for name, text in DOCS.items()]
    r = c.post("/tiqo/vectors/office/upsert", json={"documents": docs})
    assert r.status_code == 200, r.text
    yield daemon
    daemon.stop()
    shutil.rmtree(home, ignore_errors=True)


def ask(d: DaemonProc, question: str, **extra: object) -> dict[str, object]:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 24, "temperature": 0, **extra}
    r = d.client().post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, object] = r.json()
    return result


def test_the_model_is_given_the_best_chunks_and_the_answer_lists_them(
    d: DaemonProc, stubs: tuple[Upstream, Upstream]
) -> None:
    a, _ = stubs
    body = ask(d, "Where can visitors park their car?", model="stub-m", tiqo={"rag": {"collection": "office"}})
    sources = body["x_tiqo"]["sources"]  # type: ignore[index]
    assert sources[0]["source"] == "parking.md" and sources[0]["n"] == 1
    assert sources[0]["score"] > sources[-1]["score"]
    sent = [q for q in a.requests if q["path"] == "/v1/chat/completions"][-1]["json"]
    system, user = sent["messages"][0], sent["messages"][-1]
    assert system["role"] == "system" and "[1] (source: parking.md)" in system["content"]
    assert DOCS["parking.md"] in system["content"] and user["content"] == "Where can visitors park their car?"
    assert "tiqo" not in sent  # tiqo's own field never goes to a provider


def test_local_model_streams_with_sources(d: DaemonProc) -> None:
    body = {
        "messages": [{"role": "user", "content": "When is the weekly team meeting?"}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
        "tiqo": {"rag": "office"},
    }
    with d.client().stream("POST", "/v1/chat/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    with_sources = [e for e in events if (e.get("x_tiqo") or {}).get("sources")]
    assert len(with_sources) == 1 and with_sources[0]["x_tiqo"]["sources"][0]["source"] == "meeting.md"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))


def test_restricted_chunks_keep_the_request_local(d: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    c = d.client()
    secret = {"id": "keys.md", "text": "The deploy key is AKIAABCDEFGHIJKLMNOP for the parking garage gate."}
    assert c.post("/tiqo/vectors/office/upsert", json={"documents": [secret]}).status_code == 200
    before = len(a.requests)
    r = c.post(
        "/v1/chat/completions",
        json={
            "model": "stub-m",
            "messages": [{"role": "user", "content": "How do I open the parking garage gate?"}],
            "tiqo": {"rag": {"collection": "office", "top_k": 5}},
        },
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data"
    assert len(a.requests) == before


def test_errors(d: DaemonProc) -> None:
    c = d.client()
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "tiqo": {"rag": "nope"}})
    assert r.status_code == 404 and "tiqo vec" in r.json()["error"]["hint"]
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "tiqo": {"rag": {}}})
    assert r.status_code == 400 and "collection" in r.json()["error"]["message"]


def test_cli_ask_rag_prints_the_sources(d: DaemonProc) -> None:
    out = d.cli("ask", "--rag", "office", "-t", "0", "--max-tokens", "20", "What is the Wi-Fi network called?")
    assert out.returncode == 0, out.stderr
    answer, _, listed = out.stdout.partition("\nSources:\n")
    assert answer.strip() and listed.splitlines()[0].strip().startswith("[1] wifi.md")
    data = json.loads(d.cli("ask", "--json", "--rag", "office", "--max-tokens", "8", "lunch hours?").stdout)
    assert data["sources"][0]["source"] == "lunch.md"
