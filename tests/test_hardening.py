"""Hardening (issue 16): no single request may freeze or exhaust the daemon. One section per finding.

Timing checks compare two sizes within one run (a ratio, never an absolute wall-clock limit): the machines that run
the suite are shared and noisy. Daemon checks bound latency generously (seconds) for the same reason."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon
from tiqo.core.errors import ConfigError
from tiqo.core.paths import Paths
from tiqo.core.settings import Settings
from tiqo.daemon.catalog.routing_config import restricted_patterns
from tiqo.policy import classify as classify_module
from tiqo.policy.classify import MAX_SCAN_CHARS, classify
from tiqo.policy.textscan import ENGINE, PatternError, ScanPattern, compile_pattern

# ======================================================================================================================
# Finding 1: classification scans every text in linear time, bounded in length, off the event loop; patterns that
# cannot run in linear time are rejected when the configuration is loaded.
# ======================================================================================================================

# Texts on which a backtracking engine is quadratic: the shipped e-mail pattern retries `[A-Za-z0-9._%+-]+@` from
# every position of "a.a.a…", the code marker `\bSELECT\b.+\bFROM\b` scans to the end of the line from every SELECT;
# prose with both on one long line is as bad.
PATHOLOGICAL: dict[str, Callable[[int], str]] = {
    "dots": lambda n: "a." * (n // 2),
    "select": lambda n: "select " * (n // 7),
    "prose": lambda n: ("The quarterly report, SELECT 3 of 4 a.b c-d " * (n // 44 + 1))[:n],
}
SMALL = 25_000  # characters; 8 times longer is 200k: with Python's re the e-mail pattern alone would take a minute


def settings_with(tmp_path: Path, toml: dict[str, object]) -> Settings:
    return Settings(Paths.from_env({"TIQO_HOME": str(tmp_path)}), toml, env={})


def shipped_patterns(tmp_path: Path) -> list[ScanPattern]:
    return restricted_patterns(settings_with(tmp_path, {}))


def best_of(runs: int, work: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings, in CPU time of this thread: other processes on a shared machine delay the
    work but do not add to it (wall time under load gave ratios of 46 for linear work)."""
    times = []
    for _ in range(runs):
        start = time.thread_time()
        work()
        times.append(time.thread_time() - start)
    return min(times)


def test_every_classifier_pattern_runs_on_re2(tmp_path: Path) -> None:
    assert ENGINE == "re2"
    shipped = shipped_patterns(tmp_path)
    markers = [classify_module._CODE, classify_module._MATH, classify_module._ANALYSIS]
    assert len(shipped) == 10
    for pattern in [*shipped, *markers]:
        assert isinstance(pattern, ScanPattern) and type(pattern._regexp).__module__ == "re2", pattern


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_classification_time_grows_linearly(tmp_path: Path, name: str) -> None:
    patterns = shipped_patterns(tmp_path)
    make = PATHOLOGICAL[name]
    short, long = make(SMALL), make(8 * SMALL)
    t_short = best_of(5, lambda: classify([short], restricted_patterns=patterns))
    t_long = best_of(5, lambda: classify([long], restricted_patterns=patterns))
    # linear: about 8 (less while fixed costs dominate); quadratic would be about 64
    assert t_long / t_short < 30, f"{name}: {t_short:.5f} s for {len(short)} chars, {t_long:.5f} s for {len(long)}"


def test_a_pattern_catastrophic_for_backtracking_is_linear_on_re2() -> None:
    nested = compile_pattern(r"(a+)+$")  # exponential in Python's re on "aaa…b"
    short, long = "a" * SMALL + "b", "a" * (8 * SMALL) + "b"
    data_short, data_long = short.encode(), long.encode()
    t_short = best_of(3, lambda: nested.search(data_short))
    t_long = best_of(3, lambda: nested.search(data_long))
    assert not nested.search(data_long)
    assert t_long / t_short < 30, f"{t_short:.5f} s for {len(short)} chars, {t_long:.5f} s for {len(long)}"


def test_the_whole_text_is_scanned_up_to_the_bound(tmp_path: Path) -> None:
    patterns = shipped_patterns(tmp_path)
    filler = "a." * 200_000
    c = classify([filler + " write to ann@example.com"], restricted_patterns=patterns, max_scan_chars=500_000)
    assert c.data_class == "restricted" and "restricted pattern matched" in c.signals
    c = classify([filler], restricted_patterns=patterns, max_scan_chars=500_000)
    assert c.data_class == "internal"
    # a secret in a later message counts as well as one in the first
    c = classify(["hello", filler, "AKIAABCDEFGHIJKLMNOP"], data_class="public", restricted_patterns=patterns)
    assert c.data_class == "restricted"


def test_a_text_longer_than_the_bound_is_restricted_never_skipped(tmp_path: Path) -> None:
    patterns = shipped_patterns(tmp_path)
    text = "nothing secret here. " * 100
    c = classify([text], data_class="public", restricted_patterns=patterns, max_scan_chars=len(text) - 1)
    assert c.data_class == "restricted"
    assert any(s.startswith("too long to scan for restricted data") for s in c.signals), c.signals
    # the markers still read the first max_scan_chars characters
    c = classify(["def f(x):\n" + text], restricted_patterns=patterns, max_scan_chars=100)
    assert c.task == "code" and c.data_class == "restricted"
    # explicit restricted stays restricted; the default bound is the setting's default
    assert classify([text], data_class="restricted", max_scan_chars=10).data_class == "restricted"
    assert settings_with(tmp_path, {})["classification.max_scan_chars"] == MAX_SCAN_CHARS


def test_lone_surrogates_are_scanned_not_an_error(tmp_path: Path) -> None:
    # json.loads accepts "\ud800"; such a string cannot be encoded as strict UTF-8
    c = classify(
        ["\ud800 password: hunter2 \udfff"], data_class="public", restricted_patterns=shipped_patterns(tmp_path)
    )
    assert c.data_class == "restricted"


def test_compiled_re_patterns_run_on_re2_too() -> None:
    import re

    ssn = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
    c = classify(["my ssn is 123-45-6789"], restricted_patterns=[ssn])
    assert c.data_class == "restricted"
    assert classify(["TOP SECRET"], restricted_patterns=[re.compile("top secret", re.IGNORECASE)]).data_class == (
        "restricted"
    )


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(\w+)\1", r"invalid escape sequence: \1"),  # back-reference: no linear-time engine can run it
        (r"password(?=\s*:)", "invalid perl operator: (?="),  # look-ahead
        (r"end\Z", r"invalid escape sequence: \Z"),  # Python-only spelling of \z
        (r"\p{L}{1000}" * 5, "pattern too large"),  # an automaton too big to build
    ],
)
def test_a_configured_pattern_re2_cannot_run_is_a_config_error(tmp_path: Path, pattern: str, why: str) -> None:
    settings = settings_with(tmp_path, {"classification": {"restricted_patterns": ["sk-[a-z]{20}", pattern]}})
    with pytest.raises(ConfigError) as info:
        restricted_patterns(settings)
    assert repr(pattern) in info.value.message and why in info.value.message
    assert info.value.hint and "RE2" in info.value.hint and str(settings.paths.config_file) in info.value.hint
    with pytest.raises(PatternError):
        compile_pattern(pattern)


def test_configured_patterns_must_be_a_list_of_strings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a list of strings"):
        restricted_patterns(settings_with(tmp_path, {"classification": {"restricted_patterns": "sk-.*"}}))


def test_the_scan_bound_setting_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"classification\.max_scan_chars"):
        settings_with(tmp_path, {"classification": {"max_scan_chars": 0}})


def test_the_daemon_refuses_to_start_with_a_pattern_re2_cannot_run() -> None:
    home = short_home()
    try:
        config = {"classification": {"restricted_patterns": [r"(?<=key=)\w+"]}}
        (home / "config").mkdir(parents=True)
        (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
        with pytest.raises(RuntimeError) as info:
            start_daemon(home)
        text = str(info.value)
        assert "restricted_patterns" in text and "(?<=key=)" in text and "hint:" in text, text
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def guarded() -> Iterator[DaemonProc]:
    """A daemon whose default local model is not registered: a restricted request fails fast (403) instead of
    loading a model, so what is measured is the request's admission (body, classification, routing)."""
    d = start_daemon(TIQO_DEFAULT_MODEL="no-local-model")
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def while_in_flight(d: DaemonProc, path: str, body: bytes) -> tuple[httpx.Response, float, int]:
    """POST ``body`` to ``path``; meanwhile another client asks /tiqo/health in a loop. Returns the response, the
    slowest health answer (seconds) and how many answered."""
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        answer["r"] = d.client(120).post(path, content=body, headers={"content-type": "application/json"})

    worker = threading.Thread(target=post)
    health = d.client(30)
    worker.start()
    slowest, answered = 0.0, 0
    while worker.is_alive():
        start = time.perf_counter()
        assert health.get("/tiqo/health").status_code == 200
        slowest = max(slowest, time.perf_counter() - start)
        answered += 1
        time.sleep(0.005)
    worker.join()
    return answer["r"], slowest, answered


def chat_body(text: str) -> bytes:
    return json.dumps({"model": "auto", "max_tokens": 1, "messages": [{"role": "user", "content": text}]}).encode()


def test_a_16mib_pathological_prompt_does_not_stall_other_clients(guarded: DaemonProc) -> None:
    overhead = len(chat_body(""))
    body = chat_body("a." * ((16 * 1024 * 1024 - overhead) // 2))
    assert 16 * 1024 * 1024 - 2 <= len(body) <= 16 * 1024 * 1024  # as big as daemon.max_request_size allows
    r, slowest, answered = while_in_flight(guarded, "/v1/chat/completions", body)
    # longer than classification.max_scan_chars: restricted without a scan, and no local model here can serve it
    assert r.status_code == 403, r.text[:500]
    assert r.json()["error"]["code"] == "restricted_data"
    assert slowest < 5.0 and answered >= 1, (slowest, answered)


def test_a_pathological_prompt_under_the_bound_is_scanned_whole_off_the_loop(guarded: DaemonProc) -> None:
    filler = "a." * ((MAX_SCAN_CHARS - 100) // 2)
    for tail, expected in (("", "internal"), (" mail ann@example.com", "restricted")):
        body = json.dumps({"prompt": filler + tail}).encode()
        r, slowest, answered = while_in_flight(guarded, "/tiqo/route/explain", body)
        assert r.status_code == 200, r.text[:500]
        classification = r.json()["classification"]
        assert classification["data_class"] == expected, classification
        assert not any(s.startswith("too long") for s in classification["signals"])
        assert slowest < 5.0 and answered >= 1, (slowest, answered)


@pytest.mark.model
def test_a_prompt_far_over_the_window_is_refused_before_it_is_tokenized(daemon: DaemonProc) -> None:
    """llama.cpp takes about 25 s to tokenize 16 MiB (holding the model): a prompt with more bytes than the window
    holds of the vocabulary's longest pieces is refused without tokenizing it ("at least N tokens"); one just over
    the window is tokenized and refused with its exact count."""
    c = daemon.client(120)
    for path, body in (
        ("/v1/chat/completions", {"model": "smollm2-135m", "messages": [{"role": "user", "content": "a." * 2**20}]}),
        ("/v1/completions", {"model": "gemma3-270m", "prompt": "a." * 2**20}),
    ):
        r = c.post(path, json={**body, "max_tokens": 1})
        assert r.status_code == 400, r.text[:300]
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "is at least " in err["message"], err
        assert "llm.n_ctx" in err["hint"]
    r = c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "hello " * 5000, "max_tokens": 1})
    err = r.json()["error"]
    assert r.status_code == 400 and "is at least" not in err["message"] and "context window of" in err["message"]
    assert c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1}).status_code == 200
