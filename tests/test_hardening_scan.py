"""Hardening (issue 16), findings 3, 4 and the first part of 11: what a request sends upstream is what the policy
reads. Every caller-supplied text that would leave the machine is scanned for restricted data (not only the
system/developer/user turns); the budget reservation and the rate-limit admission count everything sent (tools,
tool calls, pass-through fields), not only message text; and a caller may raise its data class, never lower it below
its user's ``[users.NAME] data_class`` or what the patterns find.

End to end: one real daemon (Unix socket and TCP listener) with stub providers that record what reached them."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.test_gateway import write_home
from tests.upstreams import Upstream
from tiqo.policy.classify import classify
from tiqo.policy.outbound import MEDIA_PART_TOKENS, TooBig, form_texts, outbound
from tiqo.policy.routing import estimate_tokens
from tiqo.policy.textscan import compile_pattern

CHAT = "/v1/chat/completions"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAv4f0n3Zx0b9aFakeFakeFakeFakeFakeFakeFakeFakeFakeFake\n"
    "-----END RSA PRIVATE KEY-----\n"
)
AWS = "AKIAABCDEFGHIJKLMNOP"
EXTRA: dict[str, Any] = {
    "models": {
        "alpha-v": {
            "provider": "alpha",
            "upstream_model": "alpha-vision",
            "price_in": 1.0,
            "price_out": 2.0,
            "capabilities": ["chat", "tools", "json", "vision"],
        },
        "alpha-whisper": {
            "provider": "alpha",
            "upstream_model": "whisper-1",
            "capabilities": ["stt"],
            "price_minute": 0.006,
        },
    },
    "users": {
        "carol": {"data_class": "restricted"},
        "dave": {"data_class": "confidential"},
        "tina": {"tpm": 1000},
    },
    "budgets": {"global": {"daily": 1000.0}, "users": {"poor": {"daily": 0.5}}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hd(ups: tuple[Upstream, Upstream]) -> Iterator[tuple[DaemonProc, str]]:
    """One daemon for the module: stub providers alpha and bravo, users with data classes and limits, budgets, and
    the TCP listener."""
    port = free_port()
    home = short_home()
    write_home(home, *ups, EXTRA)
    d = start_daemon(home, TIQO_LISTEN=f"127.0.0.1:{port}")
    yield d, f"http://127.0.0.1:{port}"
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def d(hd: tuple[DaemonProc, str], stubs: tuple[Upstream, Upstream]) -> DaemonProc:
    return hd[0]


def post(d: DaemonProc, body: dict[str, Any], **headers: str) -> httpx.Response:
    return d.client(60).post(CHAT, json=body, headers={"x-tiqo-cache": "off", **headers})


def chat_requests(up: Upstream) -> list[dict[str, Any]]:
    return [r for r in up.requests if r["path"].endswith("/chat/completions")]


def last_row(d: DaemonProc) -> dict[str, Any]:
    rows: list[dict[str, Any]] = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"]
    return rows[0]


def last_call(d: DaemonProc) -> dict[str, Any]:
    calls: list[dict[str, Any]] = d.client().get("/tiqo/audit", params={"n": 1}).json()["data"]
    return calls[0]


def tool_turns(result: str, arguments: str = '{"path": "deploy.key"}') -> list[dict[str, Any]]:
    """A user turn, the assistant's tool call and the tool's result: the shape of every agent loop."""
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": arguments}}
    return [
        {"role": "user", "content": "what is in deploy.key?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


TOOL: dict[str, Any] = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Each: a request whose only restricted text is somewhere the classifier did not read (the user turn is harmless).
CARRIERS: dict[str, dict[str, Any]] = {
    "tool result": {"messages": tool_turns(PEM), "tools": [TOOL]},
    "tool-call arguments": {"messages": tool_turns("done", json.dumps({"aws_key_id": AWS})), "tools": [TOOL]},
    "assistant turn": {
        "messages": [
            {"role": "user", "content": "who do I write to?"},
            {"role": "assistant", "content": "write to bob@example.com"},
            {"role": "user", "content": "and then?"},
        ]
    },
    "tools definition": {
        "messages": [{"role": "user", "content": "call the api"}],
        "tools": [{**TOOL, "function": {**TOOL["function"], "description": f"uses api_key={AWS}"}}],
    },
    "file part": {
        "model": "alpha-v",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "summarise the attached file"},
                    {
                        "type": "file",
                        "file": {"filename": "notes.txt", "file_data": "data:text/plain;base64," + b64(PEM)},
                    },
                ],
            }
        ],
    },
    "message name": {"messages": [{"role": "user", "name": "bob@example.com", "content": "hello"}]},
    "pass-through field": {"messages": [{"role": "user", "content": "hello"}], "metadata": {"note": PEM}},
}


# ======================================================================================================================
# Finding 3: every caller-supplied text that would be sent upstream is scanned for restricted data.
# ======================================================================================================================


SHIPPED = [
    compile_pattern(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    compile_pattern(r"\bAKIA[0-9A-Z]{16}\b"),
    compile_pattern(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
]


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_outbound_reads_every_text_a_provider_would_get(carrier: str) -> None:
    wire = {"model": "alpha-m", "max_tokens": 4, **CARRIERS[carrier]}
    sent = "\n".join(outbound(wire).texts)
    assert any(secret in sent for secret in (PEM, AWS, "bob@example.com")), sent[:300]
    assert "alpha-m" not in sent  # replaced by the provider's model name: not the caller's text


def test_outbound_skips_binary_media_and_reads_text_payloads() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4000).decode()  # ~1.4 MB of base64
    wire = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}", "detail": "high"}},
                    {"type": "input_audio", "input_audio": {"data": b64(f"say {AWS}"), "format": "wav"}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,AAEC"}},
                ],
            }
        ]
    }
    sent = outbound(wire)
    assert png not in sent.texts and f"say {AWS}" in sent.texts  # text hidden in base64 is read as text
    # three media parts at their allowance; the PDF's 3 bytes and the audio's decoded text count as bytes sent
    assert sent.media_parts == 3
    assert sent.worst_prompt_tokens < 3 * MEDIA_PART_TOKENS + 1000  # not the 1.4 MB of the image
    assert classify(["what is this?"], scan=sent.texts, restricted_patterns=SHIPPED).data_class == "restricted"


def test_outbound_counts_everything_sent_and_ordinary_requests_as_before() -> None:
    plain = {"model": "m", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    sent = outbound(plain)
    assert sent.worst_prompt_tokens == 11 + 8  # what the reservation always counted: bytes + 8 a message
    assert sent.est_prompt_tokens == estimate_tokens(["hello there"])  # routing estimates unchanged
    for extra in ({"tools": big_tools(BIG)}, {"messages": tool_turns("done", "x" * BIG)}, {"metadata": "y" * BIG}):
        big = outbound({**plain, **extra})
        assert BIG <= big.worst_prompt_tokens < BIG + 1000, extra.keys()
        assert big.est_prompt_tokens >= BIG // 4
    assert outbound({"messages": [{"role": "user", "content": "héllo"}]}).worst_prompt_tokens == 6 + 8  # UTF-8


def test_outbound_with_a_limit_stops_early() -> None:
    small = {"messages": [{"role": "user", "content": "hi"}], "tools": big_tools(1000)}
    assert outbound(small, limit=16_384).texts == outbound(small).texts
    with pytest.raises(TooBig):
        outbound({"messages": [{"role": "user", "content": "hi"}], "tools": big_tools(100_000)}, limit=16_384)


def test_form_texts_are_the_forwarded_fields() -> None:
    fields: dict[str, str | list[str]] = {"model": "m", "prompt": "p", "include": ["a", "b"], "user": "u"}
    assert form_texts(fields, ("model", "user")) == ["prompt", "p", "include", "a", "b"]


def test_classify_scans_what_leaves_but_reads_the_task_from_visible_turns() -> None:
    visible = ["what is in deploy.key?"]
    hidden = "```python\ndef main():\n    import os\n```\n" + PEM  # code markers and a key, in a tool result
    base = classify(visible, restricted_patterns=SHIPPED)
    c = classify(visible, scan=[*visible, hidden], restricted_patterns=SHIPPED)
    assert (c.task, c.complexity) == (base.task, base.complexity) == ("chat", "simple")
    assert (base.data_class, c.data_class) == ("internal", "restricted")
    assert classify(visible, scan=[*visible, "x" * 101], max_scan_chars=100).data_class == "restricted"  # too long


def test_classify_a_caller_raises_the_class_never_lowers_it() -> None:
    assert classify(["hi"], data_class="public", min_class="confidential").data_class == "confidential"
    assert classify(["hi"], data_class="restricted", min_class="internal").data_class == "restricted"
    assert classify(["hi"], min_class="confidential", default_class="confidential").data_class == "confidential"
    assert classify(["hi"], data_class="public").data_class == "public"  # no user class: the caller may say public
    assert classify([AWS], data_class="public", restricted_patterns=SHIPPED).data_class == "restricted"
    with pytest.raises(ValueError, match="unknown data class"):
        classify(["hi"], min_class="secret")


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_restricted_data_anywhere_in_the_request_never_reaches_a_provider(
    d: DaemonProc, stubs: tuple[Upstream, Upstream], carrier: str
) -> None:
    a, b = stubs
    body = {"model": "alpha-m", "max_tokens": 4, **CARRIERS[carrier]}
    r = post(d, body)
    assert r.status_code == 403, (carrier, r.status_code, r.text)  # naming an external model: fail closed
    assert r.json()["error"]["code"] == "restricted_data"
    assert chat_requests(a) == [] and chat_requests(b) == []
    row = last_row(d)
    assert row["data_class"] == "restricted" and row["outcome"] == "refused"


def test_a_restricted_tool_result_is_answered_locally_when_routing_may_choose(
    d: DaemonProc, stubs: tuple[Upstream, Upstream]
) -> None:
    a, b = stubs
    r = post(d, {"model": "auto", "max_tokens": 4, "messages": tool_turns(PEM)})
    assert r.status_code == 200, r.text
    assert r.headers["x-tiqo-backend"] == "local:llama.cpp"
    assert last_row(d)["content"] is None  # never written with content
    # with tools the request needs a model that takes tools: the bundled local one does (issue 20), so it answers
    r = post(d, {"model": "auto", "max_tokens": 4, "messages": tool_turns(PEM), "tools": [TOOL]})
    assert r.status_code in (200, 422), r.text  # 422: a call cut off by max_tokens 4, never sent anywhere else
    assert r.headers["x-tiqo-backend"] == "local:llama.cpp" or r.json()["error"]["code"] == "json_truncated"
    assert chat_requests(a) == [] and chat_requests(b) == []


def test_ordinary_tool_turns_still_go_out_and_keep_their_task(d: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    """Only the restricted-data scan widened: code in a tool result does not make a chat request a code task, and a
    harmless agent turn still reaches the provider as sent."""
    a, _ = stubs
    result = "```python\ndef main():\n    import os\n```"
    body = {"model": "alpha-m", "max_tokens": 4, "messages": tool_turns(result), "tools": [TOOL]}
    r = post(d, body)
    assert r.status_code == 200, r.text
    (sent,) = chat_requests(a)
    assert sent["json"]["messages"][2]["content"] == result and sent["json"]["tools"] == [TOOL]
    row = last_row(d)
    assert (row["task"], row["data_class"]) == ("chat", "internal")


def silent_wav(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return out.getvalue()


def test_stt_form_fields_sent_upstream_are_scanned(d: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs

    def transcribe(**fields: str) -> httpx.Response:
        files = {"file": ("talk.wav", silent_wav(), "audio/wav")}
        data = {"model": "alpha-whisper", **fields}
        return d.client(60).post("/v1/audio/transcriptions", files=files, data=data)

    r = transcribe(language="en")  # an ordinary request goes out, with its fields
    assert r.status_code == 200, r.text
    assert [x["form"].get("language") for x in a.requests] == ["en"]
    r = transcribe(metadata=f"deploy with {AWS}")  # a field the provider gets, not only the prompt
    assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data", r.text
    assert len(a.requests) == 1


# ======================================================================================================================
# Finding 4: the worst-case reservation and the rate-limit admission count everything sent upstream.
# ======================================================================================================================

BIG = 1_000_000  # characters of tools: a million prompt tokens at worst, $1 at alpha-m's $1 per million


def big_tools(n: int) -> list[dict[str, Any]]:
    return [{**TOOL, "function": {**TOOL["function"], "description": "lorem ipsum " * (n // 12 + 1)}}]


def test_megabytes_of_tools_cannot_slip_under_a_budget(d: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    a, _ = stubs
    body = {"model": "alpha-m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    r = post(d, {**body, "tools": big_tools(BIG)}, **{"x-tiqo-user": "poor"})  # $0.50 a day
    assert r.status_code == 429, r.text[:300]
    assert r.json()["error"]["code"] == "budget_exceeded"
    assert chat_requests(a) == []
    assert post(d, body, **{"x-tiqo-user": "poor"}).status_code == 200  # a small request still fits


@pytest.mark.parametrize("where", ["tools", "tool-call arguments", "pass-through field"])
def test_the_reservation_covers_everything_sent(d: DaemonProc, stubs: tuple[Upstream, Upstream], where: str) -> None:
    a, _ = stubs
    n = 200_000
    filler = "lorem ipsum " * (n // 12)
    body: dict[str, Any] = {"model": "alpha-m", "max_tokens": 10}
    if where == "tools":
        body |= {"messages": [{"role": "user", "content": "hi"}], "tools": big_tools(n)}
    elif where == "tool-call arguments":
        body |= {"messages": tool_turns("done", json.dumps({"text": filler})), "tools": [TOOL]}
    else:
        body |= {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "description": filler}},
            },
        }
    r = post(d, body, **{"x-tiqo-user": "rich"})
    assert r.status_code == 200, r.text[:300]
    assert len(chat_requests(a)) == 1
    call = last_call(d)
    # every byte sent a token at worst: 200k prompt tokens at $1 per million, plus 10 completion tokens at $2
    assert call["reserved_usd"] >= n * 1.0 / 1e6, call
    assert call["reserved_usd"] < 2 * n * 1.0 / 1e6, call  # and not wildly more
    assert d.client().get("/tiqo/budget").json()["reserved_usd"] == 0  # settled


def test_tools_count_against_the_token_rate_limit(d: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    body = {"model": "alpha-m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    r = post(d, {**body, "tools": big_tools(100_000)}, **{"x-tiqo-user": "tina"})  # tpm 1000
    assert r.status_code == 200, r.text[:300]  # a full bucket admits one request, however big
    r = post(d, body, **{"x-tiqo-user": "tina"})  # ... and that one spent about 25k tokens of it
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text


# ======================================================================================================================
# Finding 11 (first part): a caller may raise its data class, never lower it.
# ======================================================================================================================


def test_a_caller_cannot_lower_its_users_data_class_on_the_socket(
    d: DaemonProc, stubs: tuple[Upstream, Upstream]
) -> None:
    a, _ = stubs
    body = {"model": "alpha-m", "max_tokens": 4, "messages": [{"role": "user", "content": "a harmless prompt"}]}
    r = post(d, body, **{"x-tiqo-user": "carol", "x-tiqo-class": "public"})  # carol's data is restricted
    assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data", r.text
    r = post(d, body, **{"x-tiqo-user": "dave", "x-tiqo-class": "public"})  # dave's is confidential
    assert r.status_code == 200, r.text
    assert last_row(d)["data_class"] == "confidential" and last_call(d)["class"] == "confidential"
    r = post(d, body, **{"x-tiqo-user": "dave", "x-tiqo-class": "restricted"})  # raising it is fine
    assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data"
    r = post(d, body, **{"x-tiqo-class": "public"})  # a user with no class of their own may say public
    assert r.status_code == 200 and last_row(d)["data_class"] == "public"
    r = post(d, {**body, "messages": [{"role": "user", "content": f"use {AWS}"}]}, **{"x-tiqo-class": "public"})
    assert r.status_code == 403  # nor below what the patterns find
    assert len(chat_requests(a)) == 2


def test_a_token_holder_cannot_lower_its_users_data_class_over_tcp(
    hd: tuple[DaemonProc, str], stubs: tuple[Upstream, Upstream]
) -> None:
    d, url = hd
    a, _ = stubs
    token = d.client().post("/tiqo/users/carol/token").json()["token"]
    body = {"model": "alpha-m", "max_tokens": 4, "messages": [{"role": "user", "content": "a harmless prompt"}]}
    with httpx.Client(base_url=url, timeout=60) as web:
        r = web.post(CHAT, json=body, headers={"authorization": f"Bearer {token}", "x-tiqo-class": "public"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data", r.text
    assert chat_requests(a) == []
    row = last_row(d)
    assert (row["user"], row["data_class"]) == ("carol", "restricted")
