"""Issue 16, finding 15: bad input gets a 4xx the route's OpenAPI schema lists, never a 500.

The fuzz test drives a real daemon (its own throwaway TIQO_HOME, over the Unix socket) with schemathesis, from the
daemon's own ``/openapi.json``: every operation, positive and negative cases, for a bounded number of examples and a
bounded time (``TIQO_FUZZ_SECONDS``, default 150; ``TIQO_FUZZ_EXAMPLES`` per operation and mode, default 60). It fails
on any 5xx, any status the operation's schema does not list, and a daemon that died. The regression tests below pin
each 500 the fuzzer found.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.test_tcp import free_port

FUZZ_SECONDS = float(os.environ.get("TIQO_FUZZ_SECONDS", "150"))
FUZZ_EXAMPLES = int(os.environ.get("TIQO_FUZZ_EXAMPLES", "60"))

# Operations the fuzzer leaves alone, each with its reason.
EXCLUDED = {
    ("POST", "/tiqo/shutdown"): "stops the daemon under test (by design, for any body)",
    ("POST", "/tiqo/backup"): "writes an archive wherever a valid path points; its refusals: tests/test_backup.py",
    ("GET", "/tiqo/events"): "a server-sent event stream that never ends; its query is checked in a test below",
}
# Generation cost, not correctness: the fuzzer's copy of the schema caps what it asks the real models to produce.
CAPS = {"max_tokens": 4, "max_completion_tokens": 4}
TEXT_CAP = 200  # speech input, prompts: a long random text only makes the real engines slower


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[tuple[DaemonProc, str]]:
    home = short_home()
    port = free_port()
    try:  # a daemon that fails to start, or a failed run, leaves no home behind
        d = start_daemon(home, TIQO_LISTEN=f"127.0.0.1:{port}")
        try:
            yield d, f"127.0.0.1:{port}"
        finally:
            d.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _capped(schema: dict[str, Any]) -> dict[str, Any]:
    """The fuzzer's copy of the schema: generation lengths capped (see CAPS); the daemon's own schema is unchanged."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for name, prop in value.items():
                        if name in CAPS and isinstance(prop, dict):  # an integer no larger than the cap, never null
                            prop.clear()
                            prop.update(type="integer", minimum=1, maximum=CAPS[name])
                        if isinstance(prop, dict):
                            for alt in prop.get("anyOf", [prop]):
                                if alt.get("type") == "string" and "maxLength" not in alt:
                                    alt["maxLength"] = TEXT_CAP
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


def _send(client: httpx.Client, case: Any) -> httpx.Response:
    """Send a schemathesis case (serialized for `requests`) with httpx over the daemon's Unix socket."""
    kw = case.as_transport_kwargs(base_url="http://tiqo")
    args: dict[str, Any] = {"headers": kw.get("headers") or {}, "params": kw.get("params") or None}
    if "json" in kw:
        args["json"] = kw["json"]
    elif "files" in kw:
        args["files"] = kw["files"]
        args["data"] = kw.get("data")
    elif isinstance(kw.get("data"), str | bytes):
        args["content"] = kw["data"]
    elif kw.get("data") is not None:
        args["data"] = kw["data"]
    if kw.get("cookies"):
        client.cookies.clear()
        client.cookies.update(kw["cookies"])
    return client.request(kw["method"], kw["url"], **args)


def _documented(operation: Any) -> set[str]:
    return {str(code) for code in operation.definition.raw.get("responses", {})}


def _fuzz_operation(
    op: Any, client: httpx.Client, deadline: float, problems: list[str], counts: dict[str, int]
) -> None:
    label = f"{op.method.upper()} {op.path}"
    documented = _documented(op)
    strategies = [op.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # an operation with nothing to break (no parameters, no body)
        strategies.append(op.as_strategy(GenerationMode.NEGATIVE))

    @settings(
        max_examples=FUZZ_EXAMPLES * len(strategies),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(*strategies))
    def run(case: Any) -> None:
        if time.monotonic() > deadline or len(problems) > 400:
            raise _TimeUp  # ends the run now: returning would still generate every example left
        try:
            response = _send(client, case)
        except httpx.HTTPError as exc:
            problems.append(f"{label}: {type(exc).__name__}: {exc}\n  {case.as_curl_command()}")
            return
        counts[label] = counts.get(label, 0) + 1
        status = str(response.status_code)
        if response.status_code >= 500 or (status not in documented and f"{status[0]}XX" not in documented):
            problems.append(
                f"{label} -> {status} (documented {sorted(documented)}): {response.text[:300]}\n"
                f"  {case.as_curl_command()}"
            )

    with contextlib.suppress(_TimeUp):
        run()


class _TimeUp(Exception):
    """The operation's share of TIQO_FUZZ_SECONDS is spent (no shrink phase: hypothesis re-raises it at once)."""


def test_fuzz_openapi_schema(fuzz_daemon: tuple[DaemonProc, str]) -> None:
    """Every operation of /openapi.json: no 5xx, no undocumented status, the daemon alive at the end."""
    d, _ = fuzz_daemon
    client = d.client(timeout=60)
    raw = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(_capped(raw))
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in EXCLUDED:
            operations.append(op)
    assert len(operations) > 30, [f"{o.method} {o.path}" for o in operations]

    problems: list[str] = []
    counts: dict[str, int] = {}
    started = time.monotonic()
    per_op = FUZZ_SECONDS / len(operations)
    for i, op in enumerate(operations):
        label = f"{op.method.upper()} {op.path}"
        # Time left is shared out over the operations still to go, so a fast one leaves more for the rest.
        left = FUZZ_SECONDS - (time.monotonic() - started)
        op_deadline = time.monotonic() + max(per_op / 4, left / (len(operations) - i))

        _fuzz_operation(op, client, op_deadline, problems, counts)
        assert d.proc.poll() is None, f"daemon died fuzzing {label}:\n{d.log_text()[-3000:]}"

    elapsed = time.monotonic() - started
    print(f"fuzzed {sum(counts.values())} requests over {len(counts)} operations in {elapsed:.0f} s")
    assert not problems, "\n".join(problems[:40])
    assert client.get("/tiqo/health").status_code == 200


# ------------------------------------------------------------------ the 500s the fuzzer found, one test each
def test_alerts_count_out_of_range_is_a_422(daemon: DaemonProc) -> None:
    c = daemon.client()
    for n in (10**30, 0, -1):  # 10**30 overflowed SQLite's integer: a 500
        r = c.get("/tiqo/alerts", params={"n": n})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
    assert c.get("/tiqo/alerts", params={"n": 5}).status_code == 200


def test_budget_usd_must_be_a_number_not_a_boolean(daemon: DaemonProc) -> None:
    c = daemon.client()
    before = c.get("/tiqo/budget").json()
    r = c.put("/tiqo/budget", json={"usd": False})  # false used to become a budget of $0 (true: $1)
    assert r.status_code == 422, r.text
    # 1e308 USD overflowed to infinity nano-dollars: that PUT, and every GET /tiqo/budget after it, answered 500
    r = c.put("/tiqo/budget", json={"usd": 1.3e308})
    assert r.status_code == 422, r.text
    assert c.get("/tiqo/budget").json() == before


def test_a_budget_beyond_the_maximum_is_refused_with_a_hint() -> None:
    from tiqo.policy import budget as bp

    with pytest.raises(ValueError, match="set it to null"):  # a hand-written config.toml gets the same check
        bp.Limit("global", "", "day", 1e300)
    assert bp.to_nano(bp.Limit("global", "", "day", bp.MAX_USD).usd) == round(bp.MAX_USD * bp.NANO)


def _gguf(path: Path, alignment: int) -> Path:
    """A minimal GGUF v3: one metadata key (general.alignment, a uint32) and one f32 tensor of one element."""
    key = b"general.alignment"
    name = b"t"
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, alignment)
    header += struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 1, 0, 0)
    path.write_bytes(header + b"\0" * 64)
    return path


def test_gguf_with_alignment_zero_is_refused(daemon: DaemonProc, tmp_path: Path) -> None:
    from tiqo.daemon.catalog.gguf import GGUFError, read_gguf

    bad = _gguf(tmp_path / "zero.gguf", alignment=0)  # used to divide by zero: a 500 from POST /tiqo/models
    with pytest.raises(GGUFError, match=r"general\.alignment"):
        read_gguf(bad)
    r = daemon.client().post("/tiqo/models", json={"name": "zero-align", "path": str(bad)})
    assert r.status_code == 400, r.text
    assert "general.alignment" in r.json()["error"]["message"] and r.json()["error"]["hint"]
    assert "zero-align" not in [m["id"] for m in daemon.client().get("/v1/models").json()["data"]]


def test_empty_prompt_is_a_400_naming_the_prompt(daemon: DaemonProc) -> None:
    c = daemon.client()
    for model in ("smollm2-135m", "gemma3-270m"):  # llama.cpp aborted on an empty batch: a 500 (or a crash)
        r = c.post("/v1/completions", json={"model": model, "prompt": "", "max_tokens": 2})
        assert r.status_code in (200, 400), (model, r.text)
        if r.status_code == 400:
            assert r.json()["error"]["param"] == "prompt" and r.json()["error"]["hint"]
    assert daemon.proc.poll() is None
    r = c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "", "max_tokens": 2})
    assert r.status_code == 400, r.text  # smollm2 adds no start token: nothing to continue


@pytest.mark.parametrize(
    "messages",
    [[{"role": "nobody", "content": "hi"}], [{"content": "hi"}], ["hi"], [{"role": "user", "content": 5}]],
)
def test_route_explain_with_bad_messages_is_a_422(daemon: DaemonProc, messages: list[Any]) -> None:
    r = daemon.client().post("/tiqo/route/explain", json={"messages": messages})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


def test_non_ascii_digit_last_event_id_is_ignored(daemon: DaemonProc) -> None:
    # "²".isdigit() is True but int("²") raises: the stream answered 500 (headers arrive decoded as latin-1)
    with daemon.client(timeout=10).stream("GET", "/tiqo/events", headers={"Last-Event-ID": "²".encode("latin-1")}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")


def test_every_operation_lists_its_error_statuses(daemon: DaemonProc) -> None:
    from tiqo.daemon.http.openapi_errors import ANY_ROUTE

    schema = daemon.client().get("/openapi.json").json()
    assert "ErrorBody" in schema["components"]["schemas"]
    missing = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            places = {p["in"] for p in op.get("parameters", [])}
            want = set(ANY_ROUTE)
            if "requestBody" in op:
                want |= {400, 422}
            if places:
                want.add(422)
            if "path" in places:
                want.add(404)
            listed = {int(code) for code in op["responses"] if code.isdigit()}
            if want - listed:
                missing.append(f"{method.upper()} {path}: {sorted(want - listed)}")
            for code, response in op["responses"].items():
                if code.isdigit() and int(code) >= 400:
                    ref = response["content"]["application/json"]["schema"].get("$ref", "")
                    assert ref.endswith("/ErrorBody"), (method, path, code, response)
    assert not missing, "\n".join(missing)
    # statuses a route names on its decorator, beyond those its shape implies
    assert {"400", "404", "409"} <= set(schema["paths"]["/tiqo/models"]["post"]["responses"])
    assert {"400", "404"} <= set(schema["paths"]["/tiqo/route/explain"]["post"]["responses"])
    assert {"403", "429", "502", "503"} <= set(schema["paths"]["/v1/chat/completions"]["post"]["responses"])


# ------------------------------------------------------------------ garbage on the wire
_GARBAGE: dict[str, bytes] = {
    "random bytes": random.Random(15).randbytes(8192),
    "random bytes after a request line": b"GET /tiqo/health HTTP/1.1\r\n" + random.Random(16).randbytes(4096),
    "truncated request line": b"GET /tiqo/hea",
    "truncated headers": b"POST /v1/chat/completions HTTP/1.1\r\nHost: tiqo\r\nContent-Le",
    "truncated body": b"POST /v1/chat/completions HTTP/1.1\r\nHost: tiqo\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"model": "smollm2-135m", "messa',
    "bad content length": b"POST /tiqo/budget HTTP/1.1\r\nHost: tiqo\r\nContent-Length: -5\r\n\r\n{}",
    "bad chunk": b"POST /tiqo/budget HTTP/1.1\r\nHost: tiqo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "NUL in a header": b"GET /tiqo/health HTTP/1.1\r\nHost: tiqo\r\nX-A: a\x00b\r\n\r\n",
    "huge header line": b"GET /tiqo/health HTTP/1.1\r\nHost: tiqo\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
    "huge request line": b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: tiqo\r\n\r\n",
    "many headers": b"GET /tiqo/health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20_000)) + b"\r\n",
    "TLS ClientHello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + random.Random(17).randbytes(508),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    "SSH banner": b"SSH-2.0-OpenSSH_9.6\r\n",
    "redis": b"*1\r\n$4\r\nPING\r\n",
    "SMTP": b"EHLO tiqo\r\n",
    "HTTP/0.9": b"GET /\r\n",
}


def _throw(connect: Any, payload: bytes) -> bytes:
    """Send ``payload``, close our side, read what comes back until the daemon closes (at most 10 s)."""
    with connect() as s:
        s.settimeout(10)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):  # it closed on us mid-send: allowed
            pass
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_garbage_bytes_get_a_4xx_or_a_closed_connection(fuzz_daemon: tuple[DaemonProc, str], transport: str) -> None:
    d, address = fuzz_daemon
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"  # loopback only

    def connect() -> socket.socket:
        if transport == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket))
            return s
        return socket.create_connection((host, int(port)), timeout=10)

    bad = []
    for name, payload in _GARBAGE.items():
        try:
            answer = _throw(connect, payload)
        except TimeoutError:
            bad.append(f"{name}: no answer and not closed after 10 s")
            continue
        status_line = answer.split(b"\r\n", 1)[0]
        if answer and not status_line.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")):
            bad.append(f"{name}: {status_line[:120]!r}")
        assert d.proc.poll() is None, f"daemon died on {name} over {transport}:\n{d.log_text()[-3000:]}"
    assert not bad, "\n".join(bad)
    assert d.client(10).get("/tiqo/health").status_code == 200
    with httpx.Client(base_url=f"http://{address}", timeout=10) as web:
        assert web.get("/tiqo/health").status_code == 200


@pytest.mark.parametrize(
    ("route", "path"), [("/tiqo/voices", "~nosuchuser15/v.onnx"), ("/tiqo/models", "~nosuchuser15/m.gguf")]
)
def test_a_tilde_naming_no_user_is_a_400(daemon: DaemonProc, route: str, path: str) -> None:
    r = daemon.client().post(route, json={"name": "tilde", "path": path})  # expanduser raised RuntimeError: a 500
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "path" and r.json()["error"]["hint"]
