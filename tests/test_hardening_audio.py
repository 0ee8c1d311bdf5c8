"""Issue 16, finding 2: a tiny compressed file must not decode into gigabytes. Audio longer than `stt.max_duration`
is refused with a 413 naming the setting — from the header's length before decoding, and while decoding when the
header says nothing or lies — and the daemon's memory stays flat while it refuses.

The silent FLACs are the issue's reproduction (`anullsrc`, 65535-sample frames): 10 hours is ~140 KB, 100 hours ~1.4
MB, far under `stt.max_upload`.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from tests.conftest import DaemonProc, short_home, start_daemon

pytestmark = pytest.mark.voice
T = TypeVar("T")
MB = 1024 * 1024
RSS_GROWTH_LIMIT = 200 * MB  # the "done when"
LOW_LIMIT = 60  # seconds: stt.max_duration of the daemon that exercises the while-decoding check


# ------------------------------------------------------------------ audio made with ffmpeg
def silent_flac(seconds: int, path: Path, *, seekable: bool = True) -> bytes:
    """Silence as FLAC, as in the issue. Written to a pipe (not seekable), the encoder cannot go back to put the
    length into STREAMINFO, so the header says nothing of how long the audio is."""
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=16000:cl=mono:nb_samples=65535",
        "-t",
        str(seconds),
    ]
    cmd += ["-c:a", "flac", "-frame_size", "65535", "-lpc_type", "none", "-f", "flac"]  # the same bytes, sooner
    if seekable:
        subprocess.run([*cmd, "-y", str(path)], check=True)
        return path.read_bytes()
    return subprocess.run([*cmd, "pipe:1"], check=True, capture_output=True).stdout


def flac_declared_samples(data: bytes) -> int:
    """STREAMINFO's total samples (36 bits after the rate, channels and bit depth; 0 = unknown)."""
    assert data[:4] == b"fLaC"
    return int(struct.unpack(">Q", data[18:26])[0]) & (2**36 - 1)


def with_declared_samples(data: bytes, samples: int) -> bytes:
    """The same FLAC with STREAMINFO claiming ``samples`` in all: a header that lies."""
    (packed,) = struct.unpack(">Q", data[18:26])
    packed = (packed & ~(2**36 - 1)) | samples
    return data[:18] + struct.pack(">Q", packed) + data[26:]


@pytest.fixture(scope="module")
def audio_dir() -> Iterator[Path]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is missing: `make system-deps`")
    folder = short_home()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ten_hours(audio_dir: Path) -> bytes:
    return silent_flac(10 * 3600, audio_dir / "ten_hours.flac")


@pytest.fixture(scope="module")
def hundred_hours(audio_dir: Path) -> bytes:
    return silent_flac(100 * 3600, audio_dir / "hundred_hours.flac")


@pytest.fixture(scope="module")
def ten_minutes_unsized(audio_dir: Path) -> bytes:
    data = silent_flac(600, audio_dir / "unused.flac", seekable=False)
    assert flac_declared_samples(data) == 0, "this FLAC was meant to have no length in its header"
    return data


# ------------------------------------------------------------------ a daemon and what it uses
def rss(d: DaemonProc) -> int:
    return int(psutil.Process(d.proc.pid).memory_info().rss)


def with_peak_rss(d: DaemonProc, work: Callable[[], T]) -> tuple[T, int]:
    """``work()`` and the daemon's highest RSS while it ran (sampled every 10 ms)."""
    process = psutil.Process(d.proc.pid)
    peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, process.memory_info().rss)


def transcribe(c: httpx.Client, audio: bytes, name: str, **fields: Any) -> httpx.Response:
    return c.post("/v1/audio/transcriptions", files={"file": (name, audio, "application/octet-stream")}, data=fields)


def assert_too_long(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 413, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == "audio_too_long" and error["type"] == "invalid_request_error"
    assert "stt.max_duration" in error["message"]
    assert "tiqo config set stt.max_duration" in error["hint"] and "ffmpeg" in error["hint"]
    return error


def warm_up(c: httpx.Client) -> None:
    """Load the decoder's libraries (a 400 for bytes that are not audio) so a baseline RSS includes them."""
    assert transcribe(c, b"not audio at all", "x.wav").status_code == 400


def still_transcribes(c: httpx.Client) -> None:
    speech = c.post("/v1/audio/speech", json={"input": "Still here.", "response_format": "wav"})
    assert speech.status_code == 200, speech.text
    r = transcribe(c, speech.content, "still.wav", language="en")
    assert r.status_code == 200, r.text
    assert "still" in r.json()["text"].lower()


def stt_rows(c: httpx.Client, n: int) -> list[dict[str, Any]]:
    return [row for row in c.get("/tiqo/logs", params={"n": 100}).json()["data"] if row["task"] == "stt"][:n]


def assert_refusals_recorded(rows: list[dict[str, Any]], error: str) -> None:
    """A refused request leaves one whole row: refused, with its error, nothing heard, served or charged."""
    for row in rows:
        assert row["outcome"] == "refused" and row["error"] == error, row
        assert row["audio_s"] == 0 and row["cost_usd"] == 0 and row["tokens_in"] == row["tokens_out"] == 0, row
        assert row["model"] == "" and row["backend"] == "" and row["attempts"] == 0, row
        assert row["latency_ms"] > 0 and row["ts"] > 0, row
    assert len({row["id"] for row in rows}) == len(rows)


@pytest.fixture(scope="module")
def default_daemon() -> Iterator[DaemonProc]:
    """A daemon with the shipped `stt.max_duration`."""
    d = start_daemon()
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


@pytest.fixture(scope="module")
def low_daemon() -> Iterator[DaemonProc]:
    """A daemon allowing one minute of audio, so long files are cheap to make."""
    d = start_daemon(short_home(), TIQO_STT_MAX_DURATION=f"{LOW_LIMIT}s")
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


# ------------------------------------------------------------------ the reproduction
def test_ten_and_hundred_hour_flacs_are_refused_without_memory_growth(
    default_daemon: DaemonProc, ten_hours: bytes, hundred_hours: bytes
) -> None:
    c = default_daemon.client(timeout=300)
    assert len(ten_hours) < 300_000 and len(hundred_hours) < 3_000_000  # tiny uploads, far under stt.max_upload
    assert flac_declared_samples(hundred_hours) == 100 * 3600 * 16000
    warm_up(c)
    before = rss(default_daemon)
    for data, hours in ((ten_hours, 10), (hundred_hours, 100)):
        r, peak = with_peak_rss(default_daemon, partial(transcribe, c, data, "long.flac"))
        error = assert_too_long(r)
        assert f"{hours}h00m long" in error["message"] and "allows 2h00m" in error["message"], error
        assert f"stt.max_duration {hours}h" in error["hint"]
        assert peak - before < RSS_GROWTH_LIMIT, f"RSS grew {(peak - before) / MB:.0f} MB refusing {hours} h"
    assert c.get("/tiqo/health").status_code == 200
    assert_refusals_recorded(stt_rows(c, 2), "audio_too_long")
    still_transcribes(c)
    assert default_daemon.proc.poll() is None


def test_streamed_transcription_is_refused_before_any_event(default_daemon: DaemonProc, ten_hours: bytes) -> None:
    c = default_daemon.client(timeout=300)
    assert_too_long(transcribe(c, ten_hours, "long.flac", stream="true"))
    r = c.post("/v1/audio/translations", files={"file": ("long.flac", ten_hours, "application/octet-stream")}, data={})
    assert_too_long(r)


# ------------------------------------------------------------------ headers that say nothing or lie
def test_flac_without_a_length_is_stopped_while_decoding(low_daemon: DaemonProc, ten_minutes_unsized: bytes) -> None:
    c = low_daemon.client(timeout=300)
    warm_up(c)
    before = rss(low_daemon)
    r, peak = with_peak_rss(low_daemon, lambda: transcribe(c, ten_minutes_unsized, "unsized.flac"))
    error = assert_too_long(r)
    assert "decoding stopped" in error["message"] and "gives no length" in error["message"], error
    assert peak - before < RSS_GROWTH_LIMIT
    assert_refusals_recorded(stt_rows(c, 1), "audio_too_long")


def test_flac_whose_header_lies_is_stopped_while_decoding(low_daemon: DaemonProc, ten_hours: bytes) -> None:
    c = low_daemon.client(timeout=300)
    liar = with_declared_samples(ten_hours, 16000)  # "one second", for ten hours of frames
    warm_up(c)
    before = rss(low_daemon)
    r, peak = with_peak_rss(low_daemon, lambda: transcribe(c, liar, "liar.flac"))
    error = assert_too_long(r)
    assert "decoding stopped" in error["message"] and "says 1s" in error["message"], error
    assert peak - before < RSS_GROWTH_LIMIT


def test_raw_pcm_over_the_limit_is_refused_before_decoding(low_daemon: DaemonProc) -> None:
    c = low_daemon.client(timeout=300)
    pcm = b"\0\0" * 16000 * (LOW_LIMIT + 5)
    error = assert_too_long(transcribe(c, pcm, "talk.pcm", sample_rate="16000"))
    assert "raw s16le, 16000 Hz" in error["message"] and "1m05s long" in error["message"], error
    # the same bytes at 48 kHz last a third as long: under the limit
    r = transcribe(c, pcm, "talk.pcm", sample_rate="48000", language="en")
    assert r.status_code == 200, r.text


def test_audio_at_the_limit_is_transcribed(low_daemon: DaemonProc, audio_dir: Path) -> None:
    c = low_daemon.client(timeout=300)
    r = transcribe(c, silent_flac(LOW_LIMIT, audio_dir / "at_limit.flac"), "at_limit.flac", language="en")
    assert r.status_code == 200, r.text
    assert r.json()["text"] == ""  # silence, skipped by the VAD
    still_transcribes(c)
    rows = stt_rows(c, 2)
    assert [row["outcome"] for row in rows] == ["ok", "ok"]
    assert rows[1]["audio_s"] == pytest.approx(LOW_LIMIT, abs=0.05)


# ------------------------------------------------------------------ the decoder itself
def test_decoding_holds_no_more_than_the_limit(ten_hours: bytes) -> None:
    """Python-level allocations (numpy's included) while a lying 10-hour file is cut at one minute: about one
    minute of float32 (3.8 MB), not the ten hours (2.3 GB) nor a second copy."""
    from tiqo.core.errors import PayloadTooLarge
    from tiqo.daemon.media.audio import decode

    liar = with_declared_samples(ten_hours, 16000)
    import av  # noqa: F401  (imported before counting)

    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as refused:
            decode(liar, max_seconds=LOW_LIMIT)
        held, peak = tracemalloc.get_traced_memory()  # the traceback (in `refused`) still holds decode's frames
    finally:
        tracemalloc.stop()
    minute = LOW_LIMIT * 16000 * 4
    assert peak < 2 * minute, f"decoding held {peak / MB:.1f} MB for a {minute / MB:.1f} MB limit"
    assert held < minute / 4, f"{held / MB:.1f} MB still held by the refusal {refused.value}"


def test_decoded_audio_is_exact_and_unbounded_without_a_limit(audio_dir: Path) -> None:
    import numpy as np

    from tiqo.daemon.media.audio import decode

    data = silent_flac(90, audio_dir / "ninety.flac")
    decoded = decode(data)  # the default: no limit
    assert decoded.audio.dtype == np.float32 and decoded.audio.shape == (90 * 16000,)
    assert decoded.duration == 90.0 and not decoded.audio.any()
    assert decode(data, max_seconds=90).duration == 90.0


def test_the_setting_parses_durations_and_refuses_zero() -> None:
    import math

    from tiqo.core.errors import ConfigError
    from tiqo.core.paths import Paths
    from tiqo.core.settings import Settings

    paths = Paths.from_env({"TIQO_HOME": "/nonexistent"})
    assert Settings(paths, {}, {})["stt.max_duration"] == 7200
    assert Settings(paths, {"stt": {"max_duration": "1h30m"}}, {})["stt.max_duration"] == 5400
    assert Settings(paths, {}, {"TIQO_STT_MAX_DURATION": "-1"})["stt.max_duration"] == math.inf
    with pytest.raises(ConfigError, match=r"stt\.max_duration"):
        Settings(paths, {}, {"TIQO_STT_MAX_DURATION": "0"})


# ------------------------------------------------------------------ Whisper's features in bounded memory
@pytest.mark.parametrize("seconds", [0.0, 0.01, 1.0, 29.99, 120.0 + 1.23, 241.0])
def test_block_log_mel_matches_faster_whisper(seconds: float) -> None:
    import numpy as np
    from faster_whisper.feature_extractor import FeatureExtractor

    from tiqo.daemon.runtime.engines.log_mel import BlockLogMel

    audio = (np.random.default_rng(7).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    theirs, ours = FeatureExtractor(), BlockLogMel(FeatureExtractor())
    expected, got = theirs(audio, chunk_length=20), ours(audio, chunk_length=20)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # the matmul's summation order may differ by 1 ulp
    assert (ours.n_samples, ours.nb_max_frames, ours.time_per_frame) == (320_000, 2000, theirs.time_per_frame)


def test_block_log_mel_memory_follows_the_audio() -> None:
    """faster-whisper's extractor holds ~13 bytes per byte of audio (1.5 GB for 30 minutes); this one about 2 (the
    padded audio and the features), plus one block's STFT whatever the length."""
    import numpy as np
    from faster_whisper.feature_extractor import FeatureExtractor

    from tiqo.daemon.runtime.engines.log_mel import BlockLogMel

    def peak_for(minutes: int) -> tuple[int, int]:
        audio = np.full(minutes * 60 * 16000, 0.01, dtype=np.float32)
        extractor = BlockLogMel(FeatureExtractor())
        tracemalloc.start()
        try:
            extractor(audio)
            return tracemalloc.get_traced_memory()[1], audio.nbytes
        finally:
            tracemalloc.stop()

    (short, short_audio), (long, long_audio) = peak_for(4), peak_for(16)
    per_byte = (long - short) / (long_audio - short_audio)
    assert per_byte < 2.5, f"{per_byte:.1f} bytes held per byte of audio ({short / MB:.0f} → {long / MB:.0f} MB)"


# ------------------------------------------------------------------ many transcriptions at once
def _at_once(c: httpx.Client, audio: bytes, n: int) -> list[httpx.Response]:
    out: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: out.append(transcribe(c, audio, "ten.flac"))) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_decoded_audio_of_waiting_transcriptions_is_bounded(audio_dir: Path) -> None:
    """Each transcription decodes its whole file (10 minutes: 38 MB of float32) before the Whisper slot is free.
    Eight at once held eight of those; with stt.max_decoded = 1 the others wait before decoding, and past
    scheduler.max_queue they are refused with 503 naming the setting."""
    ten_minutes = silent_flac(600, audio_dir / "ten-minutes.flac")
    d = start_daemon(short_home(), TIQO_MAX_DECODED="1")
    try:
        c = d.client(timeout=600)
        warm_up(c)
        assert transcribe(c, ten_minutes, "warm.flac").status_code == 200  # the model and decoder are loaded
        before = rss(d)
        _, one = with_peak_rss(d, lambda: _at_once(c, ten_minutes, 1))
        answers, eight = with_peak_rss(d, lambda: _at_once(c, ten_minutes, 8))
        assert [r.status_code for r in answers] == [200] * 8, [r.text[:200] for r in answers]
        # measured: one alone +217 MB (Whisper's working set and its audio); eight at once +217 MB with the bound,
        # +481 MB without it (seven more decoded files of 38 MB)
        more = (eight - before) - (one - before)
        assert more < 100 * MB, f"eight at once took {more / MB:.0f} MB more than one"
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
    d = start_daemon(short_home(), TIQO_MAX_DECODED="1", TIQO_MAX_QUEUE="1")
    try:
        c = d.client(timeout=600)
        answers = _at_once(c, ten_minutes, 6)
        codes = sorted(r.status_code for r in answers)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] and "stt.max_decoded" in busy.json()["error"]["hint"]
        # no slot is left taken: one at a time still works, streamed and abandoned or not
        with c.stream(
            "POST", "/v1/audio/transcriptions", files={"file": ("a.flac", ten_minutes)}, data={"stream": "true"}
        ) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event, then the client leaves
        assert transcribe(c, ten_minutes, "after.flac").status_code == 200
        still_transcribes(c)
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
