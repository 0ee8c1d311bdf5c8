"""Hardening (issue 16), findings 7 and 8: the response cache never hands one user another's answer, and an engine
thread never runs ahead of a client that stopped reading.

Finding 7 is checked on the cache itself (exact and semantic, with an embedder that makes every question a paraphrase
of every other) and end to end through a daemon whose provider is a stub, over the socket and over TCP with tokens.
Finding 8 is checked on the engine-to-loop bridge with the fake engine (how far the engine ran ahead of a consumer
that stopped reading: a count, no timing), and through a real daemon speaking with the real Piper voice to a client
that reads nothing (how much audio was synthesised, and the daemon's RSS, both against generous bounds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, run_cli, short_home, start_daemon, wait_for
from tests.fakes import FakeEngine, spec
from tests.test_gateway import ask, served_by, write_home
from tests.test_tcp import free_port
from tests.upstreams import Upstream
from tiqo.daemon.cache.response_cache import ResponseCache
from tiqo.daemon.pipeline.served import Served
from tiqo.daemon.runtime import streaming
from tiqo.daemon.state.store import Store
from tiqo.policy.classify import Classification
from tiqo.sdk.engine import GenerationParams, Piece, StopFlag

# ======================================================================================================================
# Finding 7: cached answers are per user unless sharing is configured (cache.scope = all); restricted answers stay
# per user whatever the setting; a class the caller names itself (x-tiqo-class) never picks a shared scope.
# ======================================================================================================================


class SameVector:
    """Embeds every question as the same unit vector: any two questions are paraphrases (similarity 1.0)."""

    async def local(self, texts: list[str], model: str | None = None) -> tuple[Any, Any]:
        import numpy as np

        from tiqo.daemon.runtime.engines.embed import Embedded

        return SimpleNamespace(name="e"), Embedded(np.ones((len(texts), 4), np.float32) / 2, len(texts), 0)


def who(user: str, data_class: str = "internal") -> Classification:
    return Classification("chat", "simple", data_class, user, "default")


def body(question: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": question}], "temperature": 0}


def lookup(cache: ResponseCache, c: Classification, question: str, named_class: bool = False) -> str:
    """hit / semantic / miss for one request, storing the answer ("<user>'s answer") on a miss."""

    async def run() -> str:
        wire = body(question)
        use = await cache.use(wire, c, "use", **({"named_class": True} if named_class else {}))
        assert use is not None
        served = Served()
        if (hit := await cache.lookup(wire, ["m"], use)) is not None:
            served.cached(hit)
            return served.cache
        cache.put(wire, "m", use, f"{c.user}'s answer", [], Piece("", "stop", 3, 2))
        return "miss"

    return asyncio.run(run())


def make_cache(tmp_path: Path, **settings: Any) -> tuple[ResponseCache, Store]:
    values = {"cache.mode": "deterministic", "cache.semantic": True, "cache.semantic_threshold": 0.9, "cache.ttl": 60}
    values["cache.scope"] = "user"  # the default
    store = Store(tmp_path / "c.db")
    cache = ResponseCache(store, {**values, **settings}, lambda: 100.0)
    cache.embeddings = SameVector()
    return cache, store


def test_cached_answers_are_per_user_by_default(tmp_path: Path) -> None:
    cache, store = make_cache(tmp_path)
    assert lookup(cache, who("ann"), "What is my salary?") == "miss"
    assert lookup(cache, who("ann"), "What is my salary?") == "hit"
    assert lookup(cache, who("ann"), "How much do I earn?") == "semantic"  # her own paraphrase
    # Another user of the same class gets neither the exact nor the semantic entry: his own request goes out.
    assert lookup(cache, who("bob"), "What is my salary?") == "miss"
    assert lookup(cache, who("carol"), "How much do I earn?") == "miss"
    # The scopes the stats show are per user.
    scopes = store.cache_stats(100.0)["scopes"]
    assert len(scopes) == 3 and all("ann" in s or "bob" in s or "carol" in s for s in scopes), scopes
    store.close()


def test_sharing_across_users_is_an_explicit_setting(tmp_path: Path) -> None:
    cache, store = make_cache(tmp_path, **{"cache.scope": "all"})
    assert lookup(cache, who("ann"), "What is the capital of France?") == "miss"
    assert lookup(cache, who("bob"), "What is the capital of France?") == "hit"  # shared within its class
    assert lookup(cache, who("carol"), "Capital of France?") == "semantic"
    assert lookup(cache, who("dan", "public"), "What is the capital of France?") == "miss"  # another class
    # Restricted answers stay with their user whatever the setting.
    assert lookup(cache, who("ann", "restricted"), "My PIN is 1234, what is it?") == "miss"
    assert lookup(cache, who("bob", "restricted"), "My PIN is 1234, what is it?") == "miss"
    assert lookup(cache, who("ann", "restricted"), "My PIN is 1234, what is it?") == "hit"
    # A class the caller named itself (x-tiqo-class) keeps its entries to that caller, in both directions: it never
    # reads the class's shared entries and never writes into them.
    assert lookup(cache, who("eve"), "What is the capital of France?", named_class=True) == "miss"
    assert lookup(cache, who("eve"), "What is the capital of France?", named_class=True) == "hit"  # her own
    assert lookup(cache, who("fay", "confidential"), "Who wrote Faust?", named_class=True) == "miss"
    assert lookup(cache, who("gus", "confidential"), "Who wrote Faust?") == "miss"  # fay's entry is not shared
    assert lookup(cache, who("hal", "confidential"), "Who wrote Faust?") == "hit"  # gus's is
    store.close()


def test_the_scope_setting_is_checked() -> None:
    from tiqo.core.errors import ConfigError
    from tiqo.core.paths import Paths
    from tiqo.core.settings import Settings, validate

    assert validate("cache.scope", "all").key == "cache.scope"
    with pytest.raises(ConfigError, match=r"cache\.scope"):
        validate("cache.scope", "everyone")
    assert Settings(Paths.from_env({"TIQO_HOME": "/nonexistent"}), {}, {})["cache.scope"] == "user"


# ---------------------------------------------------------------- through a daemon, over the socket and over TCP


@pytest.fixture
def shared_tcp(request: pytest.FixtureRequest, stubs: tuple[Upstream, Upstream]) -> Iterator[tuple[DaemonProc, str]]:
    """A daemon on the stub providers with a TCP listener; ann and carol are configured confidential, bob and dan
    take the default class. ``cache.scope`` as parametrized (default: left unset)."""
    home = short_home()
    users: dict[str, Any] = {name: {"tier": "default"} for name in ("ann", "bob", "carol", "dan")}  # may go out
    users["ann"]["data_class"] = users["carol"]["data_class"] = "confidential"
    write_home(home, *stubs, extra={"users": users})
    port = free_port()
    scope = getattr(request, "param", None)
    d = start_daemon(home, TIQO_LISTEN=f"127.0.0.1:{port}", **({"TIQO_CACHE_SCOPE": scope} if scope else {}))
    yield d, f"http://127.0.0.1:{port}"
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


def tokens(d: DaemonProc, *names: str) -> dict[str, dict[str, str]]:
    out = {}
    for name in names:
        r = d.client().post(f"/tiqo/users/{name}/token")
        assert r.status_code == 201, r.text
        out[name] = {"authorization": f"Bearer {r.json()['token']}"}
    return out


def tcp_ask(url: str, auth: dict[str, str], text: str, **headers: str) -> httpx.Response:
    chat = {"model": "alpha-m", "messages": [{"role": "user", "content": text}], "temperature": 0}
    with httpx.Client(base_url=url, timeout=30) as web:
        r = web.post("/v1/chat/completions", json=chat, headers={**auth, **headers})
    assert r.status_code == 200, r.text
    return r


def test_a_user_never_gets_another_users_cached_answer(
    shared_tcp: tuple[DaemonProc, str], stubs: tuple[Upstream, Upstream]
) -> None:
    d, url = shared_tcp
    a, _ = stubs
    auth = tokens(d, "bob", "dan")
    r = tcp_ask(url, auth["bob"], "What did the board decide about the merger?")
    assert r.headers["x-tiqo-cache"] == "miss"
    assert tcp_ask(url, auth["bob"], "What did the board decide about the merger?").headers["x-tiqo-cache"] == "hit"
    # dan, same class, same request: not told that bob asked it, and not given bob's answer.
    r = tcp_ask(url, auth["dan"], "What did the board decide about the merger?")
    assert r.headers["x-tiqo-cache"] == "miss" and r.headers["x-tiqo-backend"] == "alpha"
    # Over the socket too, for an app that names its users.
    r = ask(d, "alpha-m", "What did the board decide about the merger?", temperature=0, headers={"x-tiqo-user": "eve"})
    assert r.headers["x-tiqo-cache"] == "miss"
    assert len(served_by(a)) == 3
    # The socket owner's management still works: stats show the per-user entries, clear removes them all.
    stats = d.client().get("/tiqo/cache").json()
    assert stats["entries"] == 3 and stats["scope"] == "user"
    out = run_cli("cache", "stats", env=d.env)
    assert out.returncode == 0, out.stderr
    assert run_cli("cache", "clear", env=d.env).returncode == 0
    assert d.client().get("/tiqo/cache").json()["entries"] == 0


@pytest.mark.parametrize("shared_tcp", ["all"], indirect=True)
def test_shared_scopes_come_from_configuration_never_from_the_caller(
    shared_tcp: tuple[DaemonProc, str], stubs: tuple[Upstream, Upstream]
) -> None:
    d, url = shared_tcp
    a, _ = stubs
    auth = tokens(d, "ann", "bob", "carol", "dan")
    question = "Summarise the acquisition memo."
    assert tcp_ask(url, auth["ann"], question).headers["x-tiqo-cache"] == "miss"  # ann is confidential (config)
    assert tcp_ask(url, auth["carol"], question).headers["x-tiqo-cache"] == "hit"  # so is carol: shared, as asked
    # bob (internal) names the confidential class himself to read the confidential users' shared entries: no.
    r = tcp_ask(url, auth["bob"], question, **{"x-tiqo-class": "confidential"})
    assert r.headers["x-tiqo-cache"] == "miss"
    assert len(served_by(a)) == 2
    # Within the internal class, sharing works as configured.
    assert tcp_ask(url, auth["bob"], "What is the capital of France?").headers["x-tiqo-cache"] == "miss"
    assert tcp_ask(url, auth["dan"], "What is the capital of France?").headers["x-tiqo-cache"] == "hit"
    assert d.client().get("/tiqo/cache").json()["scope"] == "all"


# ======================================================================================================================
# Finding 8: the bridge from an engine thread to the event loop is bounded: the engine waits when the consumer is
# streaming.MAX_AHEAD pieces behind, and stops when the consumer goes away.
# ======================================================================================================================

WORDS = 5_000  # pieces the fake engine can produce: far more than the bridge may hold


async def _settled(count: Any, total: int) -> int:
    """Wait until ``count()`` stops moving (the producer waits) or reaches ``total`` (it ran to the end)."""
    seen, still = -1, 0
    while still < 5 and count() < total:
        now = count()
        still = still + 1 if now == seen else 0
        seen = now
        await asyncio.sleep(0.02)
    return int(count())


def _engine_pieces() -> tuple[FakeEngine, StopFlag, Any, dict[str, int]]:
    engine = FakeEngine()
    runner = engine.load(spec("m"), {})
    stop = StopFlag()
    produced = {"n": 0}

    def make() -> Iterator[Piece]:
        for piece in runner.complete("w " * WORDS, GenerationParams(), stop):
            produced["n"] += 1
            yield piece

    return engine, stop, make, produced


def test_the_engine_waits_for_a_consumer_that_stopped_reading() -> None:
    engine, stop, make, produced = _engine_pieces()

    async def run() -> list[Piece]:
        with ThreadPoolExecutor(1) as executor:
            pieces: AsyncIterator[Piece] = streaming.iterate_in_thread(executor, make, stop)
            first = await anext(pieces)  # the client reads one piece, then nothing
            ran = await _settled(lambda: produced["n"], WORDS + 1)
            ahead = ran - 1
            assert ahead <= streaming.MAX_AHEAD + 1, f"the engine ran {ahead} pieces ahead of its consumer"
            rest = [p async for p in pieces]  # the client reads again: nothing was lost or reordered
            return [first, *rest]

    got = asyncio.run(run())
    assert len(got) == WORDS + 1 and got[-1].finish_reason == "stop"
    assert "".join(p.text for p in got) == "w " * WORDS
    assert engine.stopped == 0


def test_a_consumer_that_goes_away_stops_a_waiting_engine() -> None:
    engine, stop, make, produced = _engine_pieces()

    async def run() -> None:
        with ThreadPoolExecutor(1) as executor:
            pieces = streaming.iterate_in_thread(executor, make, stop)
            await anext(pieces)
            await _settled(lambda: produced["n"], WORDS + 1)
            # The client goes away while the engine waits for room: the bridge wakes it, and it stops.
            await asyncio.wait_for(pieces.aclose(), 60)  # type: ignore[attr-defined]

    asyncio.run(run())
    assert stop.is_set()
    assert engine.stopped == 1, "the engine ran to the end instead of stopping when its consumer left"
    assert produced["n"] <= streaming.MAX_AHEAD + 2


def test_errors_still_reach_the_consumer_through_the_bounded_bridge() -> None:
    stop = StopFlag()

    def make() -> Iterator[int]:
        yield from range(3 * streaming.MAX_AHEAD)
        raise RuntimeError("weights went away")

    async def run() -> list[int]:
        got: list[int] = []
        with ThreadPoolExecutor(1) as executor, pytest.raises(RuntimeError, match="weights went away"):
            async for item in streaming.iterate_in_thread(executor, make, stop):
                got.append(item)
                await asyncio.sleep(0)
        return got

    assert asyncio.run(run()) == list(range(3 * streaming.MAX_AHEAD))


# ---------------------------------------------------------------- a real daemon, the real Piper voice

SPEECH = (
    "Please bring the blue cheese to the kitchen. The weather today is cold and windy. "
    "My brother plays the piano every evening. We will meet at the train station at noon. "
    "Turn off the lights before you leave the house. The library opens at nine in the morning. "
)
LONG = SPEECH * 200  # about 1,200 sentences: over an hour of audio, some 170 MB as WAV


def _rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 1e6


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _stalled_speech(path: Path, text: str) -> socket.socket:
    """A client that asks for a speech over the socket and then reads nothing (a tiny receive buffer)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(str(path))
    payload = json.dumps({"input": text, "response_format": "wav"}).encode()
    head = (
        "POST /v1/audio/speech HTTP/1.1\r\nHost: tiqo\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    s.sendall(head + payload)
    return s


def _cancelled_row(c: httpx.Client) -> dict[str, Any] | None:
    rows = c.get("/tiqo/logs", params={"n": 1}).json()["data"]
    return rows[0] if rows and rows[0]["outcome"] == "cancelled" else None


@pytest.mark.voice
def test_a_speech_nobody_reads_keeps_the_daemon_bounded_and_serving() -> None:
    d = start_daemon()
    try:
        c = d.client(300)
        assert c.post("/v1/audio/speech", json={"input": SPEECH, "response_format": "wav"}).status_code == 200
        pid = d.proc.pid
        before = _rss_mb(pid)
        client = _stalled_speech(d.socket, LONG)
        try:
            # The voice synthesises until the bridge is full and the socket buffers are, then waits: the daemon goes
            # idle. (Without backpressure it synthesises the whole text into memory; give up waiting after a while.)
            deadline = time.monotonic() + 90
            idle = 0
            cpu = _cpu_s(pid)
            while idle < 3 and time.monotonic() < deadline:
                time.sleep(0.5)
                now = _cpu_s(pid)
                idle = idle + 1 if now - cpu < 0.05 else 0
                cpu = now
            grown = _rss_mb(pid) - before
            # Other clients are still served meanwhile.
            assert c.get("/tiqo/health").status_code == 200
            assert c.get("/v1/models").status_code == 200
            busy = [m for m in c.get("/tiqo/ps").json()["models"] if m["name"] == "en_US-joe-medium"]
            assert busy and busy[0]["in_flight"] == 1
        finally:
            client.close()  # the client goes away
        row = wait_for(lambda: _cancelled_row(c), 60)
        assert row and row["task"] == "tts", "no ledger row for the speech whose client left"
        # At most the bridge's pieces (plus the one in the engine, the one being sent and the socket buffers) were
        # synthesised: a sentence here is about 2.5 s of audio. Without backpressure this grows by several seconds of
        # audio per second until the whole text (over an hour) is done.
        bound_s = (streaming.MAX_AHEAD + 4) * 4.0
        assert row["audio_s"] <= bound_s, f"{row['audio_s']} s of audio synthesised for a client that read nothing"
        assert grown < 150, f"the daemon grew by {grown:.0f} MB for a client that read nothing"
        # The voice slot is free again (the engine stopped), and the next speech is served.
        assert wait_for(lambda: all(m["in_flight"] == 0 for m in c.get("/tiqo/ps").json()["models"]), 60), (
            "the voice is still busy after its client left"
        )
        assert c.post("/v1/audio/speech", json={"input": "Done.", "response_format": "wav"}).status_code == 200
    finally:
        with contextlib.suppress(Exception):
            d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


@pytest.mark.voice
def test_a_client_that_reads_nothing_is_dropped_after_the_send_timeout() -> None:
    """The client keeps its connection open and reads nothing: after daemon.send_timeout the daemon drops it, the
    voice slot is freed and the request is in the ledger as cancelled (the backpressure test above needs the client
    to go away)."""
    d = start_daemon(TIQO_SEND_TIMEOUT="2s")
    try:
        c = d.client(300)
        assert c.post("/v1/audio/speech", json={"input": SPEECH, "response_format": "wav"}).status_code == 200
        client = _stalled_speech(d.socket, LONG)
        try:
            row = wait_for(lambda: _cancelled_row(c), 120)
            assert row and row["task"] == "tts", "the stalled speech was never dropped"
            assert wait_for(lambda: all(m["in_flight"] == 0 for m in c.get("/tiqo/ps").json()["models"]), 60)
            r = c.post("/v1/audio/speech", json={"input": "Done.", "response_format": "wav"})
            assert r.status_code == 200
            assert "read nothing for 2 s (daemon.send_timeout)" in d.log_text()
            client.settimeout(30)  # what was sent before the drop, then the end of the stream (no timeout error)
            while client.recv(1 << 16):
                pass
        finally:
            client.close()
    finally:
        with contextlib.suppress(Exception):
            d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
