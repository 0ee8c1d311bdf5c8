"""Voice through external providers, end to end: a real daemon process on a real Unix socket, and stub providers
(tests/upstreams.py) speaking OpenAI's real audio wire protocol (multipart /audio/transcriptions, streamed
/audio/speech) with 429s, 5xx, hangs, resets, bad keys and cut streams. Local models (whisper-tiny.en, Piper's
en_US-joe-medium) are the fallback; the ledger, the audit trail and budgets account for every external call."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon, wait_for
from tests.upstreams import TRANSCRIPT, Upstream, speech_audio, speech_seconds

SECRETS = {
    "k1": "sk-voice-one-0123456789abcdefSECRET",
    "k2": "sk-voice-two-0123456789abcdefSECRET",
    "b1": "sk-voice-bravo-0123456789abcdSECRET",
}
PHRASE = "The quick brown fox jumps over the lazy dog."
STT, SPEECH = "/v1/audio/transcriptions", "/v1/audio/speech"
LOCAL_STT, LOCAL_TTS = "local:faster-whisper", "local:piper"


@pytest.fixture(scope="module")
def speech() -> Iterator[bytes]:
    """PHRASE spoken by the daemon's own bundled voice, as a plain WAV file (made once per module)."""
    d = start_daemon()
    try:
        r = d.client().post(SPEECH, json={"input": PHRASE, "response_format": "wav"})
        assert r.status_code == 200, r.text
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
    with wave.open(io.BytesIO(r.content)) as streamed:  # streamed WAV: its header claims an unknown length
        rate, frames = streamed.getframerate(), streamed.readframes(streamed.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    yield out.getvalue()


def seconds_of(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as w:
        return float(w.getnframes() / w.getframerate())


def write_home(home: Path, a: Upstream, b: Upstream, extra: dict[str, Any] | None = None) -> None:
    """stubA (OpenAI wire, keys k1 k2) serves groq-whisper and openai-tts; stubB (key b1) serves bravo-whisper."""
    config: dict[str, Any] = {
        "providers": {
            "stubA": {"kind": "openai", "base_url": a.url + "/v1"},
            "stubB": {"kind": "openai", "base_url": b.url + "/v1"},
        },
        "models": {
            "groq-whisper": {
                "provider": "stubA",
                "upstream_model": "whisper-large-v3",
                "capabilities": ["stt"],
                "price_minute": 0.006,
            },
            "bravo-whisper": {
                "provider": "stubB",
                "upstream_model": "whisper-1",
                "capabilities": ["stt"],
                "price_minute": 0.01,
            },
        },
        # small timeouts: a hung provider is given up after a second, not the default 20
        "routing": {"timeout_connect": "1s", "timeout_first_byte": "1s", "timeout_idle": "1s", "breaker_failures": 3},
    }
    for key, value in (extra or {}).items():
        for name, entry in value.items():
            table = config.setdefault(key, {})
            table[name] = {**table[name], **entry} if isinstance(entry, dict) and name in table else entry
    keys = {
        "stubA": {"k1": {"secret": SECRETS["k1"]}, "k2": {"secret": SECRETS["k2"]}},
        "stubB": {"b1": {"secret": SECRETS["b1"]}},
    }
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    (home / "config" / "keys.toml").write_text(tomlkit.dumps(keys))
    (home / "config" / "keys.toml").chmod(0o600)


@pytest.fixture
def homes() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for h in made:
        shutil.rmtree(h, ignore_errors=True)


@pytest.fixture
def voice(stubs: tuple[Upstream, Upstream], homes: list[Path]) -> Iterator[DaemonProc]:
    d = daemon_with(homes, stubs)
    yield d
    d.stop()


def daemon_with(homes: list[Path], stubs: tuple[Upstream, Upstream], extra: dict[str, Any] | None = None) -> DaemonProc:
    home = short_home()
    homes.append(home)
    write_home(home, *stubs, extra)
    return start_daemon(home)


def transcribe(
    d: DaemonProc, audio: bytes, filename: str = "speech.wav", headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    path = "/v1/audio/translations" if fields.pop("translate", False) else STT
    return d.client(60).post(path, files={"file": (filename, audio, "audio/wav")}, data=fields, headers=headers)


def speak(d: DaemonProc, text: str = PHRASE, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return d.client(60).post(SPEECH, json={"input": text, **body}, headers=headers)


def audio_requests(up: Upstream) -> list[dict[str, Any]]:
    return [r for r in up.requests if r["path"].startswith("/v1/audio/")]


def keys_of(d: DaemonProc) -> dict[str, dict[str, Any]]:
    return {f"{k['provider']}/{k['name']}": k for k in d.client().get("/tiqo/keys").json()["keys"]}


def last_log(d: DaemonProc) -> dict[str, Any]:
    rows: list[dict[str, Any]] = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"]
    return rows[0]


def audit(d: DaemonProc) -> list[dict[str, Any]]:
    return d.client().get("/tiqo/audit", params={"n": 100}).json()["data"]  # type: ignore[no-any-return]


def no_pending(d: DaemonProc) -> bool:
    """Every external call settled, nothing left reserved against the budgets."""
    reserved = d.client().get("/tiqo/budget").json()["reserved_usd"]
    return all(c["status"] != "pending" for c in audit(d)) and reserved == pytest.approx(0)


# ------------------------------------------------------------------ speech-to-text through a provider


def test_stt_by_name_goes_to_the_provider_and_is_billed_by_the_minute(
    voice: DaemonProc, stubs: tuple[Upstream, Upstream], speech: bytes
) -> None:
    a, b = stubs
    r = transcribe(voice, speech, model="groq-whisper", vad_filter="false")
    assert r.status_code == 200, r.text
    assert r.json()["text"] == TRANSCRIPT
    assert r.headers["x-tiqo-backend"] == "stubA" and r.headers["x-tiqo-model"] == "groq-whisper"
    (req,) = audio_requests(a)
    assert req["path"] == "/v1/audio/transcriptions" and req["status"] == 200
    assert req["key"] == SECRETS["k1"]
    assert req["form"] == {"model": "whisper-large-v3", "response_format": "json"}  # tiqo's own fields stay home
    assert req["file"]["filename"] == "speech.wav" and req["file"]["size"] == len(speech)
    assert req["file"]["sha256"] == hashlib.sha256(speech).hexdigest()
    # the ledger row: cost = minutes heard x price_minute
    row = last_log(voice)
    assert [row[k] for k in ("task", "provider", "model", "key", "outcome")] == [
        "stt",
        "stubA",
        "groq-whisper",
        "k1",
        "ok",
    ]
    assert row["audio_s"] == pytest.approx(seconds_of(speech), abs=0.01)
    assert row["cost_usd"] == pytest.approx(row["audio_s"] / 60 * 0.006, rel=1e-3)
    assert float(r.headers["x-tiqo-cost-usd"]) == pytest.approx(row["cost_usd"], rel=1e-3)
    # the audit row is the call the provider saw (its X-Client-Request-Id), tied to the request
    (call,) = audit(voice)
    assert call["id"] == req["client_request_id"] and call["id"].startswith("call_")
    assert call["request_id"] == r.headers["x-tiqo-request-id"] == row["id"]
    assert (call["provider"], call["model"], call["key"], call["status"]) == ("stubA", "groq-whisper", "k1", "ok")
    assert call["cost_usd"] == pytest.approx(row["cost_usd"], rel=1e-3)
    assert no_pending(voice) and b.requests == []


def test_stt_formats_words_and_translations_through_the_provider(
    voice: DaemonProc, stubs: tuple[Upstream, Upstream], speech: bytes
) -> None:
    a, _ = stubs
    words: dict[str, Any] = {"timestamp_granularities[]": ["word"]}
    r = transcribe(voice, speech, model="groq-whisper", response_format="verbose_json", **words)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == TRANSCRIPT and body["task"] == "transcribe" and body["language"] == "english"
    assert [w["word"] for w in body["words"]] == [w.strip(".") for w in TRANSCRIPT.split()]
    assert body["words"][-1]["end"] == pytest.approx(seconds_of(speech), abs=0.05)
    req = audio_requests(a)[-1]
    # the word timings were asked for the way OpenAI reads a form array
    assert req["form"]["timestamp_granularities[]"] == ["word"] and req["form"]["response_format"] == "verbose_json"
    r = transcribe(voice, speech, model="groq-whisper", response_format="srt")
    assert r.status_code == 200 and r.text.startswith("1\n00:00:00,000 --> ")
    r = transcribe(voice, speech, model="groq-whisper", translate=True, response_format="text")
    assert r.status_code == 200 and r.text == TRANSCRIPT + "\n"
    assert audio_requests(a)[-1]["path"] == "/v1/audio/translations"
    # an upload named without an extension (`tiqo transcribe -` sends "stdin") is named after its container
    r = transcribe(voice, speech, filename="stdin", model="groq-whisper")
    assert r.status_code == 200, r.text
    assert audio_requests(a)[-1]["file"]["filename"] == "stdin.wav"
    r = transcribe(voice, speech, model="groq-whisper", stream="true")  # what `tiqo transcribe` asks for
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["text"] == TRANSCRIPT
    assert r.headers["x-tiqo-backend"] == "stubA" and "stream" not in audio_requests(a)[-1]["form"]


@pytest.mark.parametrize("fault", ["500", "hang", "reset"])
def test_stt_falls_back_from_a_failing_provider_to_the_local_model(
    stubs: tuple[Upstream, Upstream], homes: list[Path], speech: bytes, fault: str
) -> None:
    a, _ = stubs
    d = daemon_with(homes, stubs, {"routes": {"stt": {"default": ["groq-whisper"]}}})
    try:
        a.fail_next(1, fault)
        r = transcribe(d, speech)  # no model named: [routes.stt], then the local default
        assert r.status_code == 200, r.text
        assert r.headers["x-tiqo-backend"] == LOCAL_STT and r.headers["x-tiqo-model"] == "whisper-tiny.en"
        assert r.headers["x-tiqo-attempts"] == "2"
        assert "quick brown fox" in r.json()["text"].lower()
        assert len(audio_requests(a)) == 1
        row = last_log(d)
        assert row["backend"] == LOCAL_STT and row["cost_usd"] == 0 and row["attempts"] == 2
        (call,) = audit(d)  # the failed call is in the audit trail, settled at nothing
        assert call["status"] == "failed" and call["cost_usd"] == 0 and call["id"] == a.requests[0]["client_request_id"]
        assert no_pending(d)
    finally:
        d.stop()


def test_stt_named_model_falls_back_to_its_fallbacks(
    stubs: tuple[Upstream, Upstream], homes: list[Path], speech: bytes
) -> None:
    a, b = stubs
    d = daemon_with(homes, stubs, {"models": {"groq-whisper": {"fallbacks": ["bravo-whisper"]}}})
    try:
        a.fail_next(1, "503")
        r = transcribe(d, speech, model="groq-whisper")
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "stubB", r.text
        assert audio_requests(b)[0]["form"]["model"] == "whisper-1" and audio_requests(b)[0]["key"] == SECRETS["b1"]
        assert last_log(d)["cost_usd"] == pytest.approx(last_log(d)["audio_s"] / 60 * 0.01, rel=1e-3)
        b.set_mode("500")  # a named external model without fallbacks that fails is an error, never silently local
        r = transcribe(d, speech, model="bravo-whisper")
        assert r.status_code == 502 and r.json()["error"]["code"] == "all_candidates_failed", r.text
        assert len(audio_requests(b)) == 2 and last_log(d)["outcome"] == "error"
    finally:
        d.stop()


def test_stt_429_cools_the_key_down_and_the_next_key_serves(
    voice: DaemonProc, stubs: tuple[Upstream, Upstream], speech: bytes
) -> None:
    a, _ = stubs
    a.fail_next(1, "429", retry_after=30)
    r = transcribe(voice, speech, model="groq-whisper")
    assert r.status_code == 200 and r.headers["x-tiqo-attempts"] == "2", r.text
    assert [q["key"] for q in audio_requests(a)] == [SECRETS["k1"], SECRETS["k2"]]
    key = keys_of(voice)["stubA/k1"]
    assert key["status"] == "cooling" and key["until"] > time.time() + 20  # Retry-After: 30
    assert transcribe(voice, speech, model="groq-whisper").status_code == 200
    assert audio_requests(a)[-1]["key"] == SECRETS["k2"]  # k1 is still cooling down
    calls = audit(voice)
    assert sorted(c["status"] for c in calls) == ["failed", "ok", "ok"]
    assert {c["id"] for c in calls} == {q["client_request_id"] for q in audio_requests(a)}


def test_stt_bad_key_is_disabled_and_the_next_key_serves(
    voice: DaemonProc, stubs: tuple[Upstream, Upstream], speech: bytes
) -> None:
    a, _ = stubs
    a.valid_keys = {SECRETS["k2"]}
    r = transcribe(voice, speech, model="groq-whisper")
    assert r.status_code == 200 and r.json()["text"] == TRANSCRIPT, r.text
    assert [q["status"] for q in audio_requests(a)] == [401, 200]
    key = keys_of(voice)["stubA/k1"]
    assert key["status"] == "disabled" and "rejected" in key["reason"]
    assert all(s not in r.text + str(keys_of(voice)) for s in SECRETS.values())
    a.valid_keys = set()  # every key rejected: an error that names no secret
    r = transcribe(voice, speech, model="groq-whisper")
    assert r.status_code >= 400 and all(s not in r.text for s in SECRETS.values())


def test_a_client_hanging_up_mid_call_frees_the_reservation(
    stubs: tuple[Upstream, Upstream], homes: list[Path], speech: bytes
) -> None:
    a, _ = stubs
    extra = {"providers": {"stubA": {"timeout_first_byte": "60s"}}, "budgets": {"global": {"daily": 1.0}}}
    d = daemon_with(homes, stubs, extra)
    try:
        a.set_mode("hang")
        with pytest.raises(httpx.ReadTimeout):
            d.client(1.0).post(STT, files={"file": ("s.wav", speech)}, data={"model": "groq-whisper"})
        assert wait_for(lambda: audit(d) and no_pending(d), timeout=15), audit(d)
        assert audit(d)[0]["status"] == "failed"
        a.set_mode(None)
        assert transcribe(d, speech, model="groq-whisper").status_code == 200
    finally:
        d.stop()


# ------------------------------------------------------------------ text-to-speech through a provider


@pytest.mark.parametrize(("fmt", "ctype"), [("mp3", "audio/mpeg"), ("wav", "audio/wav")])
def test_tts_by_name_streams_the_providers_audio_intact(
    voice: DaemonProc, stubs: tuple[Upstream, Upstream], fmt: str, ctype: str
) -> None:
    a, _ = stubs
    r = voice.client().post(
        "/tiqo/models",
        json={
            "name": "openai-tts",
            "provider": "stubA",
            "upstream_model": "tts-1",
            "capabilities": ["tts"],
            "price_mchar": 15,
        },
    )
    assert r.status_code == 201, r.text
    text = "Hello from a provider, in several chunks."
    r = speak(voice, text, model="openai-tts", voice="nova", response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ctype and r.headers["x-tiqo-backend"] == "stubA"
    assert r.content == speech_audio(fmt, speech_seconds(text))
    (req,) = audio_requests(a)
    assert req["json"] == {"model": "tts-1", "input": text, "voice": "nova", "response_format": fmt, "speed": 1.0}
    assert req["audio"]["sha256"] == hashlib.sha256(r.content).hexdigest()
    row = last_log(voice)
    assert (row["task"], row["model"], row["outcome"], row["tokens_in"]) == ("tts", "openai-tts", "ok", len(text))
    assert row["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)
    (call,) = audit(voice)
    assert call["id"] == req["client_request_id"] and call["status"] == "ok"
    assert call["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)
    # ogg is Opus in Ogg, which OpenAI calls "opus"
    r = speak(voice, text, model="openai-tts", response_format="ogg")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg"
    assert r.content == speech_audio("opus", speech_seconds(text)) and r.content[:4] == b"OggS"
    assert audio_requests(a)[-1]["json"]["response_format"] == "opus"
    assert audio_requests(a)[-1]["json"]["voice"] == "alloy"  # a voice OpenAI has when none is named


TTS_CONFIG = {
    "models": {
        "openai-tts": {"provider": "stubA", "upstream_model": "tts-1", "capabilities": ["tts"], "price_mchar": 15}
    },
    "routes": {"tts": {"default": ["openai-tts"]}},
}


@pytest.mark.parametrize("fault", ["500", "reset", "cut-before-audio", "empty"])
def test_tts_falls_back_to_the_local_voice_before_the_first_byte(
    stubs: tuple[Upstream, Upstream], homes: list[Path], fault: str
) -> None:
    a, _ = stubs
    d = daemon_with(homes, stubs, TTS_CONFIG)
    try:
        r = speak(d, response_format="wav")  # no model named: [routes.tts] first
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "stubA", r.text
        if fault == "cut-before-audio":
            a.fail_next(1, "midstream", after=0)  # 200 and headers, then the connection drops
        elif fault == "empty":
            a.speech = b""  # 200 with no audio at all
        else:
            a.fail_next(1, fault)
        r = speak(d, response_format="wav")
        assert r.status_code == 200, r.text
        assert r.headers["x-tiqo-backend"] == LOCAL_TTS and r.headers["x-tiqo-voice"] == "en_US-joe-medium"
        assert r.headers["content-type"] == "audio/wav" and r.content[:4] == b"RIFF" and len(r.content) > 10_000
        assert r.content != speech_audio("wav", speech_seconds(PHRASE))
        row = last_log(d)
        assert row["backend"] == LOCAL_TTS and row["cost_usd"] == 0 and row["attempts"] == 2
        assert [c["status"] for c in audit(d)] == ["failed", "ok"]
        assert no_pending(d)
    finally:
        d.stop()


def test_tts_cut_after_the_first_bytes_is_an_error_not_a_short_file(
    stubs: tuple[Upstream, Upstream], homes: list[Path]
) -> None:
    a, _ = stubs
    d = daemon_with(homes, stubs, TTS_CONFIG)
    try:
        a.fail_next(1, "midstream", after=1)
        got = b""
        with pytest.raises(httpx.HTTPError), d.client().stream("POST", SPEECH, json={"input": PHRASE}) as r:
            assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "stubA"
            for chunk in r.iter_raw():
                got += chunk
        assert 0 < len(got) < len(speech_audio("mp3", speech_seconds(PHRASE)))
        assert wait_for(lambda: last_log(d)["outcome"] == "interrupted", timeout=10)
        assert audit(d)[0]["status"] == "interrupted"
        assert keys_of(d)["stubA/k1"]["failures_total"] == 1  # the cut counts against the key's health
        assert no_pending(d)
    finally:
        d.stop()


# ------------------------------------------------------------------ budgets and restricted data


def test_a_budget_that_cannot_fit_the_worst_case_blocks_the_provider_not_the_local_model(
    stubs: tuple[Upstream, Upstream], homes: list[Path], speech: bytes
) -> None:
    a, _ = stubs
    d = daemon_with(homes, stubs, {**TTS_CONFIG, "routes": {"stt": {"default": ["groq-whisper"]}}})
    try:
        c = d.client()
        worst = seconds_of(speech) / 60 * 0.006
        r = c.put("/tiqo/budget", json={"scope": "global", "period": "day", "usd": round(worst / 2, 9)})
        assert r.status_code == 200, r.text
        r = transcribe(d, speech, model="groq-whisper")
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
        assert int(r.headers["retry-after"]) >= 1
        r = transcribe(d, speech)  # no model named: the route's external model is skipped, the local one serves
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == LOCAL_STT, r.text
        r = speak(d, "x" * 2000, model="openai-tts")  # $0.03 worst case
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        r = speak(d, "x " * 1000, response_format="wav")
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == LOCAL_TTS
        assert audio_requests(a) == []
        assert all(c["status"] != "pending" for c in audit(d))
    finally:
        d.stop()


def test_restricted_audio_and_text_never_reach_a_provider(
    stubs: tuple[Upstream, Upstream], homes: list[Path], speech: bytes
) -> None:
    a, b = stubs
    d = daemon_with(homes, stubs, {**TTS_CONFIG, "routes": {"stt": {"default": ["groq-whisper"]}}})
    try:
        restricted = {"x-tiqo-class": "restricted"}
        r = transcribe(d, speech, model="groq-whisper", headers=restricted)
        assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data", r.text
        r = transcribe(d, speech, headers=restricted)  # routing may pick: it picks the local model
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == LOCAL_STT
        a.fail_next(3, "500")  # a failing provider never makes restricted data fall outwards either
        r = speak(d, "Write to bob@example.com about it.", model="openai-tts")
        assert r.status_code == 403 and r.json()["error"]["code"] == "restricted_data"
        r = speak(d, "Write to bob@example.com about it.", response_format="wav")
        assert r.status_code == 200 and r.headers["x-tiqo-backend"] == LOCAL_TTS
        r = speak(d, "Write to bob@example.com about it.", headers={"x-tiqo-class": "public"}, model="openai-tts")
        assert r.status_code == 403  # saying public does not help
        assert a.requests == [] and b.requests == [] and audit(d) == []
        assert {row["data_class"] for row in d.client().get("/tiqo/logs", params={"n": 10}).json()["data"]} == {
            "restricted"
        }
    finally:
        d.stop()


# ------------------------------------------------------------------ the official OpenAI SDK over the socket


def sdk(d: DaemonProc) -> Any:
    import openai

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=120)
    return openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http, max_retries=0)


def test_openai_sdk_transcribes_with_the_local_model(voice: DaemonProc, speech: bytes) -> None:
    client = sdk(voice)
    result = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", speech, "audio/wav"))
    assert "quick brown fox" in result.text.lower()
    verbose = client.audio.transcriptions.create(
        model="groq-whisper",
        file=("speech.wav", speech),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert verbose.text == TRANSCRIPT and verbose.words and verbose.segments
    assert verbose.words[0].word == "The" and verbose.duration == pytest.approx(seconds_of(speech), abs=0.05)


def test_openai_sdk_speaks_with_the_local_voice(voice: DaemonProc, stubs: tuple[Upstream, Upstream]) -> None:
    client = sdk(voice)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello from the software development kit.", response_format="wav"
    ) as response:
        assert response.headers["x-tiqo-backend"] == LOCAL_TTS
        data = response.read()
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getframerate() == 22050
        assert len(w.readframes(w.getnframes())) > 22050  # more than half a second of speech
    mp3 = client.audio.speech.create(model="tts-1", voice="alloy", input="Short.").content
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF
    assert stubs[0].requests == []
