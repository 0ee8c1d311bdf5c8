"""The provider stub's OpenAI audio API (tests/upstreams.py): multipart /audio/transcriptions and /translations,
streamed /audio/speech, and the same faults as chat. Checked with the official ``openai`` SDK and raw httpx."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from typing import Any

import av
import httpx
import openai
import pytest

from tests.conftest import wait_for
from tests.upstreams import SPEECH_TYPES, TRANSCRIPT, Upstream, audio_seconds, speech_audio, speech_seconds

AUTH = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def up(server: Upstream) -> Iterator[Upstream]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(up: Upstream) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=up.url + "/v1", api_key="k", max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.fixture(scope="module")
def wav() -> bytes:
    return speech_audio("wav", 1.5)


def test_transcriptions_in_each_format_and_the_request_is_recorded(
    up: Upstream, client: openai.OpenAI, wav: bytes
) -> None:
    res = client.audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", wav), extra_headers={"X-Client-Request-Id": "call_1"}
    )
    assert res.text == TRANSCRIPT
    rec = up.requests[-1]
    assert rec["path"] == "/v1/audio/transcriptions" and rec["status"] == 200 and rec["key"] == "k"
    assert rec["form"] == {"model": "whisper-1"} and rec["client_request_id"] == "call_1"
    assert rec["file"]["filename"] == "talk.wav" and rec["file"]["size"] == len(wav)
    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", wav),
        language="fr",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert verbose.language == "french" and verbose.duration == pytest.approx(1.5)
    assert [w.word for w in verbose.words or []] == [w.strip(".") for w in TRANSCRIPT.split()]
    assert "".join(s.text for s in verbose.segments or []).strip() == TRANSCRIPT
    assert up.requests[-1]["form"]["timestamp_granularities[]"] == ["word", "segment"]
    files, form = {"file": ("t.mp3", b"\xff\xfb" * 100)}, {"model": "whisper-1", "response_format": "text"}
    r = httpx.post(up.url + "/v1/audio/translations", files=files, data=form, headers=AUTH)
    assert r.text == TRANSCRIPT + "\n" and r.headers["content-type"].startswith("text/plain")
    assert up.requests[-1]["path"] == "/v1/audio/translations"
    assert up.requests[-1]["duration"] > 0  # not decodable: estimated from the size
    up.reply = "Bonjour."
    srt = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav), response_format="srt")
    assert str(srt) == "1\n00:00:00,000 --> 00:00:01,500\nBonjour.\n\n"


@pytest.mark.parametrize(
    ("files", "data", "message"),
    [
        ({}, {"model": "whisper-1"}, "Missing required parameter: 'file'"),
        ({"file": ("a.wav", b"RIFF")}, {}, "you must provide a model parameter"),
        ({"file": ("audio", b"RIFF")}, {"model": "m"}, "Invalid file format"),
        ({"file": ("a.wav", b"RIFF")}, {"model": "m", "response_format": "xml"}, "response_format"),
        ({"file": ("a.wav", b"RIFF")}, {"model": "m", "timestamp_granularities[]": "word"}, "verbose_json"),
    ],
)
def test_transcription_requests_are_validated(
    up: Upstream, files: dict[str, tuple[str, bytes]], data: dict[str, str], message: str
) -> None:
    body = files or {"x": ("x.txt", b"-")}  # always multipart
    r = httpx.post(up.url + "/v1/audio/transcriptions", files=body, data=data, headers=AUTH)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    r = httpx.post(up.url + "/v1/audio/transcriptions", json={"model": "m"}, headers=AUTH)
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]


def test_audio_faults_and_key_checks(up: Upstream, client: openai.OpenAI, wav: bytes) -> None:
    up.fail_next(1, "429", retry_after=7)
    with pytest.raises(openai.RateLimitError) as exc:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
    assert exc.value.response.headers["retry-after"] == "7"
    up.fail_next(1, "503")
    with pytest.raises(openai.InternalServerError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    up.valid_keys = {"good"}
    with pytest.raises(openai.AuthenticationError):
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
    up.valid_keys = None
    up.set_quota("k", 0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert exc.value.code == "insufficient_quota"
    up.set_quota("k", 100)
    up.fail_next(1, "reset")
    with pytest.raises(openai.APIConnectionError):
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
    up.fail_next(1, "hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(up.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, headers=AUTH, timeout=0.5)
    assert [r["fault"] for r in up.requests] == ["429", "503", None, None, "reset", "hang"]
    assert wait_for(lambda: [r["status"] for r in up.requests] == [429, 503, 401, 429, 0, 0], timeout=10)


@pytest.mark.parametrize("fmt", sorted(SPEECH_TYPES))
def test_speech_is_real_audio_of_the_asked_format(up: Upstream, client: openai.OpenAI, fmt: Any) -> None:
    text = "Hello there, this is the stub speaking."
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format=fmt, speed=2.0
    ) as response:
        assert response.headers["content-type"] == SPEECH_TYPES[fmt]
        assert response.headers["transfer-encoding"] == "chunked"
        data = response.read()
    assert data == speech_audio(fmt, speech_seconds(text, 2.0))
    seconds = speech_seconds(text, 2.0)
    if fmt == "pcm":
        assert len(data) == int(seconds * 24_000) * 2
    else:
        assert audio_seconds(data) == pytest.approx(seconds, abs=0.08)
        if fmt != "wav":
            with av.open(io.BytesIO(data)) as c:
                assert c.streams.audio[0].codec_context.name in ("mp3", "mp3float", "opus", "libopus", "aac", "flac")
    rec = up.requests[-1]
    assert rec["json"]["speed"] == 2.0 and rec["audio"]["size"] == len(data) and rec["status"] == 200


def test_speech_validation_and_cut_streams(up: Upstream, client: openai.OpenAI) -> None:
    for body, message in [
        ({"model": "tts-1", "input": "hi"}, "'voice'"),
        ({"model": "tts-1", "voice": "alloy"}, "'input'"),
        ({"input": "hi", "voice": "alloy"}, "model"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 9}, "speed"),
    ]:
        r = httpx.post(up.url + "/v1/audio/speech", json=body, headers=AUTH)
        assert r.status_code == 400 and message in r.json()["error"]["message"], body
    full = speech_audio("wav", speech_seconds("a long sentence to say"))
    up.fail_next(1, "midstream", after=1)
    got = b""
    body = {"model": "tts-1", "input": "a long sentence to say", "voice": "alloy", "response_format": "wav"}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", up.url + "/v1/audio/speech", json=body, headers=AUTH) as r,
    ):
        for chunk in r.iter_raw():
            got += chunk
    assert 0 < len(got) < len(full) and full.startswith(got)
    up.speech = b"fixed"
    assert client.audio.speech.create(model="tts-1", voice="alloy", input="x").content == b"fixed"
    with wave.open(io.BytesIO(full)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
