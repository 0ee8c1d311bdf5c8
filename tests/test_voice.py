"""Speech-to-text and text-to-speech with the real bundled models (Whisper tiny.en, Piper en_US-joe-medium) through a
real daemon: word error rate on two voices, formats checked by a second decoder (ffmpeg), streaming, bad input."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, short_home, start_daemon
from tiqo.daemon.catalog.bundled import JOE

pytestmark = pytest.mark.voice

SENTENCES = [
    "Please bring the blue cheese to the kitchen.",
    "The weather today is cold and windy.",
    "My brother plays the piano every evening.",
    "We will meet at the train station at noon.",
    "Turn off the lights before you leave the house.",
]
TEN = " ".join(
    [
        *SENTENCES,
        "The library opens at nine in the morning.",
        "A small dog ran across the quiet street.",
        "He wrote a long letter to his grandmother.",
        "The children painted the fence bright yellow.",
        "Our flight to Boston was delayed by an hour.",
    ]
)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: list[str], hypothesis: list[str]) -> tuple[int, int]:
    """(word edits, reference words): Levenshtein distance over words."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, row[0] = row[:], i
        for j, hyp in enumerate(hypothesis, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ref != hyp))
    return row[-1], len(reference)


def speak(c: httpx.Client, text: str, fmt: str = "wav", **extra: Any) -> httpx.Response:
    r = c.post("/v1/audio/speech", json={"input": text, "response_format": fmt, **extra})
    assert r.status_code == 200, r.text
    return r


def transcribe(c: httpx.Client, audio: bytes, name: str = "a.wav", path: str = "transcriptions", **fields: Any) -> Any:
    data = {k: v for k, v in fields.items() if v is not None}
    return c.post(f"/v1/audio/{path}", files={"file": (name, audio, "application/octet-stream")}, data=data)


def ffprobe(data: bytes, suffix: str) -> dict[str, Any]:
    """What a second, independent decoder (the ffmpeg CLI) sees in the bytes."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", "-i", "pipe:0"],
        input=data,
        capture_output=True,
        check=True,
    )
    info = json.loads(out.stdout)
    stream = info["streams"][0]
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    return {"codec": stream["codec_name"], "rate": int(stream["sample_rate"]), "seconds": len(decoded) / 32000}


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(fix_sizes(data))) as w:
        return w.getnframes() / w.getframerate()


def fix_sizes(data: bytes) -> bytes:
    """A streamed WAV says its length is unknown (0xFFFFFFFF): put the real sizes in, as `tiqo speak -o` does."""
    out = bytearray(data)
    out[4:8] = struct.pack("<I", len(data) - 8)
    out[40:44] = struct.pack("<I", len(data) - 44)
    return bytes(out)


@pytest.fixture(scope="module")
def vd() -> Iterator[DaemonProc]:
    d = start_daemon()
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


@pytest.fixture(scope="module")
def c(vd: DaemonProc) -> httpx.Client:
    return vd.client(timeout=300)


# ------------------------------------------------------------------ accuracy
def test_piper_speech_is_transcribed_back_with_low_word_error_rate(c: httpx.Client) -> None:
    edits = total = 0
    for sentence in SENTENCES:
        audio = speak(c, sentence).content
        r = transcribe(c, audio, language="en")
        assert r.status_code == 200, r.text
        e, n = wer(words(sentence), words(r.json()["text"]))
        edits, total = edits + e, total + n
    assert edits / total < 0.15, f"WER {edits}/{total}"


def test_espeak_voice_is_transcribed_with_low_word_error_rate(c: httpx.Client, tmp_path: Path) -> None:
    edits = total = 0
    for i, sentence in enumerate(SENTENCES):
        path = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-s", "160", "-w", str(path), sentence], check=True)
        r = transcribe(c, path.read_bytes(), "espeak.wav")
        assert r.status_code == 200, r.text
        e, n = wer(words(sentence), words(r.json()["text"]))
        edits, total = edits + e, total + n
    assert edits / total < 0.15, f"WER {edits}/{total}"


# ------------------------------------------------------------------ speech formats and streaming
@pytest.mark.parametrize(
    ("fmt", "codec", "rate", "ctype"),
    [
        ("mp3", "mp3", 22050, "audio/mpeg"),
        ("ogg", "opus", 48000, "audio/ogg"),
        ("opus", "opus", 48000, "audio/ogg"),
        ("flac", "flac", 22050, "audio/flac"),
        ("aac", "aac", 22050, "audio/aac"),
        ("wav", "pcm_s16le", 22050, "audio/wav"),
    ],
)
def test_speech_formats_decode_with_ffmpeg(c: httpx.Client, fmt: str, codec: str, rate: int, ctype: str) -> None:
    r = speak(c, "Hello there. How are you today?", fmt)
    assert r.headers["content-type"] == ctype
    assert r.headers["x-tiqo-backend"] == "local:piper"
    seen = ffprobe(r.content if fmt != "wav" else fix_sizes(r.content), fmt)
    assert seen["codec"] == codec and seen["rate"] == rate
    assert 1.0 < seen["seconds"] < 6.0


def test_pcm_is_24khz_like_openai(tmp_path: Path) -> None:
    # Piper adds random noise to phoneme lengths (two syntheses of five sentences differed by 3.4% in one CI run, and
    # PCM read at the wrong rate would be 8.8% off), so this daemon's voice has both noises off: the same text gives
    # the same samples, and PCM must be exactly the WAV's samples resampled from 22.05 to 24 kHz.
    home = short_home()
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(f"[models.{JOE}]\nnoise_scale = 0\nnoise_w_scale = 0\n")
    d = start_daemon(home)
    try:
        with d.client(timeout=300) as c:
            wav, again = speak(c, SENTENCES[0], "wav").content, speak(c, SENTENCES[0], "wav").content
            pcm = speak(c, SENTENCES[0], "pcm").content
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
    assert wav == again  # no noise: repeatable
    assert len(pcm) % 2 == 0
    with wave.open(io.BytesIO(fix_sizes(wav))) as w:
        assert w.getframerate() == 22050
        frames = w.getnframes()
    assert len(pcm) // 2 == pytest.approx(frames * 24000 / 22050, abs=64)  # the resampler's edge, not 8.8%


def test_mp3_round_trip(c: httpx.Client) -> None:
    audio = speak(c, SENTENCES[0], "mp3").content
    r = transcribe(c, audio, "speech.mp3", response_format="text")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    e, n = wer(words(SENTENCES[0]), words(r.text))
    assert e / n < 0.15


def test_speech_streams_before_the_text_is_done(vd: DaemonProc, c: httpx.Client) -> None:
    """The first bytes arrive while the voice is still busy with later sentences (the slot is still in use)."""
    chunks = 0
    with c.stream("POST", "/v1/audio/speech", json={"input": TEN * 2, "response_format": "wav"}) as r:
        assert r.status_code == 200
        stream = r.iter_bytes()
        first = next(stream)
        assert first[:4] == b"RIFF"
        busy = [m for m in c.get("/tiqo/ps").json()["models"] if m["name"] == "en_US-joe-medium"]
        assert busy and busy[0]["in_flight"] == 1, busy
        for _ in stream:
            chunks += 1
    assert chunks >= 5  # one piece per sentence (at least)


def test_speed_changes_the_length(c: httpx.Client) -> None:
    normal = wav_seconds(speak(c, SENTENCES[1]).content)
    fast = wav_seconds(speak(c, SENTENCES[1], speed=2.0).content)
    assert fast < normal * 0.7


def test_openai_voice_names_use_the_default_voice(c: httpx.Client) -> None:
    r = speak(c, "Hi.", voice="alloy", model="tts-1")
    assert r.headers["x-tiqo-voice"] == "en_US-joe-medium"


# ------------------------------------------------------------------ transcription shapes
@pytest.fixture(scope="module")
def long_speech(c: httpx.Client) -> bytes:
    return speak(c, TEN).content


def test_streamed_transcription_sends_segments_as_they_are_decoded(c: httpx.Client, long_speech: bytes) -> None:
    with c.stream(
        "POST", "/v1/audio/transcriptions", files={"file": ("a.wav", long_speech)}, data={"stream": "true"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "transcript.info" and kinds[-1] == "transcript.text.done"
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    assert len(deltas) >= 2
    starts = [d["segment"]["start"] for d in deltas]
    assert starts == sorted(starts)
    done = events[-1]
    assert done["text"] == "".join(d["delta"] for d in deltas).strip()
    e, n = wer(words(TEN), words(done["text"]))
    assert e / n < 0.15


def test_verbose_json_with_word_timestamps(c: httpx.Client, long_speech: bytes) -> None:
    r = transcribe(c, long_speech, response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]})
    body = r.json()
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == pytest.approx(wav_seconds(long_speech), abs=0.1)
    assert body["segments"] and all(s["end"] > s["start"] for s in body["segments"])
    assert len(body["words"]) >= len(words(TEN)) * 0.8
    assert all(w["end"] >= w["start"] for w in body["words"])


def test_srt_and_vtt(c: httpx.Client, long_speech: bytes) -> None:
    srt = transcribe(c, long_speech, response_format="srt").text
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt)
    vtt = transcribe(c, long_speech, response_format="vtt").text
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"\d\d:\d\d:\d\d\.\d{3} --> ", vtt)


def test_translation_route_gives_english(c: httpx.Client) -> None:
    r = transcribe(c, speak(c, SENTENCES[2]).content, path="translations", response_format="verbose_json")
    assert r.status_code == 200 and r.json()["task"] == "translate"
    e, n = wer(words(SENTENCES[2]), words(r.json()["text"]))
    assert e / n < 0.15


def test_raw_pcm_with_rate(c: httpx.Client) -> None:
    wav = speak(c, SENTENCES[3]).content
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "2", "-ar", "44100", "pipe:1"],
        input=fix_sizes(wav),
        capture_output=True,
        check=True,
    ).stdout
    r = transcribe(c, raw, "mic.pcm", sample_rate=44100, channels=2)
    assert r.status_code == 200, r.text
    e, n = wer(words(SENTENCES[3]), words(r.json()["text"]))
    assert e / n < 0.15


def test_silence_is_empty_text_not_an_error(c: httpx.Client) -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\0\0" * 16000 * 20)
    r = transcribe(c, buf.getvalue(), response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "" and r.json()["duration"] == pytest.approx(20.0)


def test_a_long_file_works(c: httpx.Client, long_speech: bytes) -> None:
    """About two minutes: speech, pauses and speech again, in one upload."""
    pause = b"\0\0" * 22050 * 3
    pcm = fix_sizes(long_speech)[44:]
    body = (pcm + pause) * 4
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes(body)
    r = transcribe(c, buf.getvalue(), response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] > 100
    assert words(r.json()["text"]).count("library") >= 3


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("data", "name", "fields", "needle"),
    [
        (b"", "a.wav", {}, "empty"),
        (b"this is plain text, not audio at all" * 20, "a.mp3", {}, "not audio"),
        (bytes(range(256)) * 40, "noise.bin", {}, "not audio"),
        (b"\0\1" * 101, "a.pcm", {}, "no sample rate"),
        (b"\0\1\2", "a.raw", {"sample_rate": "16000"}, "whole number"),
        (b"\0\1" * 100, "a.raw", {"sample_rate": "16000", "sample_format": "s24be"}, "unsupported raw sample format"),
        (b"\0\1" * 100, "a.raw", {"sample_rate": "16000", "channels": "64"}, "channels"),
    ],
)
def test_bad_audio_is_a_clear_400(c: httpx.Client, data: bytes, name: str, fields: dict[str, str], needle: str) -> None:
    r = transcribe(c, data, name, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["hint"]


def test_truncated_files_are_refused(c: httpx.Client) -> None:
    audio = speak(c, TEN, "flac").content
    r = transcribe(c, audio[: len(audio) // 3], "cut.flac")
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"]
    wav = fix_sizes(speak(c, TEN).content)
    r = transcribe(c, wav[: len(wav) // 2], "cut.wav")
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"], r.text
    r = transcribe(c, wav[:30], "cut.wav")
    assert r.status_code == 400


def test_other_bad_requests(c: httpx.Client) -> None:
    r = c.post("/v1/audio/transcriptions", json={"file": "x"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    r = c.post("/v1/audio/transcriptions", files={"other": ("a", b"x")})
    assert r.status_code == 400 and "file" in r.json()["error"]["message"]
    assert transcribe(c, b"x", response_format="docx").status_code == 400
    assert transcribe(c, b"x", model="no-such-model").status_code in (400, 404)
    r = speak_raw(c, {"input": "...!?"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "nothing_to_say"
    r = speak_raw(c, {"input": "Hi", "voice": "no-such-voice"})
    assert r.status_code == 404 and "tiqo models" in r.json()["error"]["hint"]
    r = speak_raw(c, {"input": "Hi", "response_format": "midi"})
    assert r.status_code == 400
    for body in ({"input": "Hi", "voice": {"id": "voice_123"}}, {"input": "Hi", "reference_audio": "me.wav"}):
        r = speak_raw(c, body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "voice_cloning_unsupported"
        assert "tiqo voices" in r.json()["error"]["hint"]
    r = speak_raw(c, {"input": "Hi", "model": "smollm2-135m"})
    assert r.status_code == 400 and "tts" in r.json()["error"]["message"]
    assert c.get("/tiqo/health").status_code == 200
    assert speak(c, "Still here.").headers["x-tiqo-backend"] == "local:piper"


def speak_raw(c: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return c.post("/v1/audio/speech", json=body)


def test_size_limits_are_413() -> None:
    d = start_daemon(short_home(), TIQO_STT_MAX_UPLOAD="64KiB", TIQO_TTS_MAX_CHARS="50")
    try:
        c = d.client()
        r = transcribe(c, b"\0" * 200_000, "big.wav")
        assert r.status_code == 413 and "stt.max_upload" in r.json()["error"]["hint"]
        r = speak_raw(c, {"input": "word " * 20})
        assert r.status_code == 413 and "tts.max_chars" in r.json()["error"]["hint"]
        assert speak(c, "Short.").status_code == 200
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


# ------------------------------------------------------------------ the ledger and policy
def test_voice_requests_are_in_the_ledger(c: httpx.Client) -> None:
    text = "Count these characters."
    audio = speak(c, text).content
    transcribe(c, audio)
    rows = c.get("/tiqo/logs", params={"n": 2}).json()["data"]
    stt, tts = rows[0], rows[1]
    assert stt["task"] == "stt" and stt["model"] == "whisper-tiny.en" and stt["outcome"] == "ok"
    assert stt["audio_s"] == pytest.approx(wav_seconds(audio), abs=0.05)
    assert tts["task"] == "tts" and tts["tokens_in"] == len(text) and tts["backend"] == "local:piper"
    assert tts["audio_s"] == pytest.approx(wav_seconds(audio), abs=0.05)


def test_voice_honours_rate_limits_and_classification() -> None:
    home = short_home()
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text('[users.bob]\nrpm = 1\n[users.eve]\ndata_class = "restricted"\n')
    d = start_daemon(home)
    try:
        c = d.client()
        assert speak_raw(c, {"input": "One."}).status_code == 200  # the OS user: no limits
        bob = {"x-tiqo-user": "bob"}
        assert c.post("/v1/audio/speech", json={"input": "One."}, headers=bob).status_code == 200
        r = c.post("/v1/audio/speech", json={"input": "Two."}, headers=bob)
        assert r.status_code == 429 and float(r.headers["retry-after"]) > 0
        r = c.post("/v1/audio/speech", json={"input": "Mail me at ann@example.com."})
        assert r.status_code == 200
        r = c.post("/v1/audio/speech", json={"input": "Hello."}, headers={"x-tiqo-user": "eve"})
        assert r.status_code == 200
        rows = c.get("/tiqo/logs", params={"n": 3}).json()["data"]
        assert [row["data_class"] for row in rows[:2]] == ["restricted", "restricted"]
        assert rows[2]["outcome"] == "refused" and rows[2]["error"] == "rate_limited"
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
