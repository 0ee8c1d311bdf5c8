"""``tiqo transcribe`` (speech to text from a file or stdin), ``tiqo speak`` (text to speech into a file or a pipe)
and ``tiqo voices``. Audio never touches the terminal: it goes to ``-o FILE`` or down a pipe."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import IO, Any, Optional

import typer

from tiqo.cli import complete
from tiqo.cli.ask import DATA_CLASS, TIER, USER, routing_headers
from tiqo.cli.output import EXIT_USAGE, client, console, err_console, fail, handle_errors, print_json
from tiqo.core.paths import open_user_file
from tiqo.protocol import audio as pa

voices_app = typer.Typer(
    help="Voices for `tiqo speak`: list them, add Piper voices.\n\nExample: tiqo voices list",
    no_args_is_help=True,
)

FORMAT_BY_SUFFIX = {".wav": "wav", ".mp3": "mp3", ".ogg": "ogg", ".oga": "ogg", ".opus": "opus", ".flac": "flac"}
FORMAT_BY_SUFFIX.update({".pcm": "pcm", ".raw": "pcm", ".aac": "aac"})


def _read_input(path: str) -> tuple[bytes, str]:
    if path == "-":
        if sys.stdin.isatty():
            fail("no audio on stdin", "pipe it in (`… | tiqo transcribe -`) or name a file", EXIT_USAGE)
        return sys.stdin.buffer.read(), "stdin"
    file = Path(path).expanduser()
    if not file.is_file():
        fail(f"{path}: no such file", "give an audio file (wav, flac, mp3, ogg, m4a) or - for stdin", EXIT_USAGE)
    return file.read_bytes(), file.name


@handle_errors
def transcribe(
    file: str = typer.Argument("-", help="Audio file, or - to read stdin."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Speech-to-text model; default stt.default_model.", autocompletion=complete.models
    ),
    language: Optional[str] = typer.Option(
        None, "--language", "-l", help="Spoken language (en, fr…); default: detect."
    ),
    translate: bool = typer.Option(False, "--translate", help="Translate the speech to English text."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, json, srt, vtt or verbose-json."),
    words: bool = typer.Option(False, "--words", help="Word timestamps (verbose-json)."),
    rate: Optional[int] = typer.Option(None, "--rate", help="Sample rate of raw PCM input (makes the input raw)."),
    channels: int = typer.Option(1, "--channels", help="Channels of raw PCM input."),
    sample_format: str = typer.Option("s16le", "--sample-format", help="Raw PCM samples: s16le, s32le, f32le or u8."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text that guides spelling and style."),
    no_vad: bool = typer.Option(False, "--no-vad", help="Decode silence too (slower; may invent words)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the transcript here, not to stdout."),
    json_out: bool = typer.Option(False, "--json", help="Same as --format verbose-json."),
    user: Optional[str] = USER,
    tier: Optional[str] = TIER,
    data_class: Optional[str] = DATA_CLASS,
) -> None:
    """Transcribe speech to text. Segments print as they are decoded.

    Example: tiqo transcribe talk.mp3 --format srt > talk.srt
    Example: arecord -f S16_LE -r 16000 -d 5 -t raw | tiqo transcribe --rate 16000 -
    """
    try:
        response_format = pa.transcription_format("verbose_json" if json_out else fmt)
    except ValueError as exc:
        fail(str(exc), "use --format text|json|srt|vtt|verbose-json", EXIT_USAGE)
    audio, name = _read_input(file)
    if rate is not None and not name.endswith((".pcm", ".raw")):
        name = f"{name}.pcm"
    fields: dict[str, Any] = {"model": model, "language": language, "prompt": prompt}
    fields.update(_raw_fields(response_format, words, rate, channels, sample_format, no_vad))
    out: IO[str] = open_user_file(output, "w") if output else sys.stdout  # the user's file: the user's umask
    with client() as c:
        stream = c.transcribe(
            audio,
            name,
            fields,
            translate=translate,
            headers=routing_headers(user, tier, data_class),
            stream=True,
        )
        try:
            _print_transcript(stream, response_format, out, granularities=("segment", "word") if words else None)
        finally:
            stream.close()
            if output:
                out.close()


def _raw_fields(
    response_format: str, words: bool, rate: int | None, channels: int, sample_format: str, no_vad: bool
) -> dict[str, Any]:
    """The form fields that shape the output and describe raw PCM (channels and samples only when it is raw)."""
    return {
        "response_format": response_format,
        "timestamp_granularities": ["segment", "word"] if words else None,
        "sample_rate": rate,
        "channels": channels if rate is not None else None,
        "sample_format": sample_format if rate is not None else None,
        "vad_filter": "false" if no_vad else None,
    }


def _print_transcript(stream: Any, fmt: str, out: IO[str], granularities: tuple[str, ...] | None) -> None:
    """Print segments as they come (text, srt, vtt); the JSON formats print once, with progress meanwhile."""
    progress = None
    task = None
    first = True
    cue = 0
    if fmt in ("json", "verbose_json") and err_console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("transcribing"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TimeRemainingColumn(), console=err_console, transient=True,
        )  # fmt: skip
        progress.start()
    try:
        for event in stream:
            kind = event.get("type")
            if kind == "transcript.info":
                if err_console.is_terminal and out is sys.stdout and not sys.stdout.isatty():
                    seconds = float(event.get("duration") or 0.0)
                    err_console.print(f"[dim]language {event.get('language')}, {seconds:.1f} s of audio[/]")
                if progress is not None:
                    task = progress.add_task("stt", total=max(0.1, float(event.get("duration") or 0.1)))
                if fmt == "vtt":
                    out.write(pa.VTT_HEADER)
            elif kind == "transcript.text.delta":
                segment = event.get("segment") or {"text": event.get("delta", ""), "start": 0.0, "end": 0.0}
                if progress is not None and task is not None:
                    progress.update(task, completed=float(segment.get("end") or 0.0))
                if fmt == "text":
                    text = str(segment["text"])
                    out.write(text.lstrip() if first else text)
                elif fmt == "srt":
                    cue += 1
                    out.write(pa.srt_cue(cue, segment))
                elif fmt == "vtt":
                    out.write(pa.vtt_cue(segment))
                first = False
                out.flush()
            elif kind == "transcript.text.done":
                if fmt == "text" and not first:
                    out.write("\n")
                elif fmt in ("json", "verbose_json"):
                    if progress is not None:
                        progress.stop()
                        progress = None
                    body = pa.transcription_body(
                        fmt,
                        task="transcribe",
                        language=str(event.get("language") or ""),
                        duration=float(event.get("duration") or 0.0),
                        segments=event.get("segments") or [],
                        granularities=granularities or ("segment",),
                    )
                    out.write(_json(body))
                out.flush()
    finally:
        if progress is not None:
            progress.stop()


def _json(body: Any) -> str:
    import json

    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


@handle_errors
def speak(
    text: str = typer.Argument("-", help="Text to say, or - to read stdin."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Audio file to write (default: stdout)."),
    voice: Optional[str] = typer.Option(
        None, "--voice", "-v", help="Voice (`tiqo voices list`); default voice.", autocompletion=complete.voices
    ),
    speed: float = typer.Option(1.0, "--speed", min=0.25, max=4.0, help="Speaking rate (0.25-4, 1 = normal)."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="wav, mp3, ogg, flac, aac or pcm (24 kHz s16le); default: from -o, else wav."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A text-to-speech model (external ones too)."),
    speaker: Optional[str] = typer.Option(None, "--speaker", help="Speaker of a multi-speaker voice."),
    clone: Optional[Path] = typer.Option(
        None, "--clone", help="Imitate the voice in this sample (not offered by local voices: explains why)."
    ),
    user: Optional[str] = USER,
    tier: Optional[str] = TIER,
    data_class: Optional[str] = DATA_CLASS,
) -> None:
    """Say text aloud. Audio streams as it is made: long texts start playing at once.

    Example: tiqo speak "Please bring the blue cheese" | aplay
    Example: tiqo speak - -o book.mp3 < book.txt
    """
    if text == "-":
        if sys.stdin.isatty():
            fail("no text on stdin", 'give the text (tiqo speak "Hello") or pipe it in', EXIT_USAGE)
        text = sys.stdin.read()
    if fmt is None:
        fmt = FORMAT_BY_SUFFIX.get(output.suffix.lower(), "wav") if output else "wav"
    try:
        fmt = pa.speech_format(fmt)
    except ValueError as exc:
        fail(str(exc), "use --format wav|mp3|ogg|flac|aac|pcm", EXIT_USAGE)
    if output is None and sys.stdout.isatty():
        fail("refusing to write audio to the terminal", "pipe it (`| aplay`, `| mpv -`) or use -o out.wav", EXIT_USAGE)
    payload: dict[str, Any] = {"input": text, "response_format": fmt, "speed": speed}
    for key, value in (("model", model), ("voice", voice), ("speaker", speaker)):
        if value is not None:
            payload[key] = value
    if clone is not None:
        payload["reference_audio"] = str(clone)
    with client() as c:
        response = c.speech(payload, headers=routing_headers(user, tier, data_class))
        try:
            written = _write_audio(response, output)
        finally:
            response.close()
    if output and fmt == "wav":
        _fix_wav_sizes(output)
    if err_console.is_terminal and output:
        voice_used = response.headers.get("x-tiqo-voice", "")
        err_console.print(f"[dim]wrote {output} ({written} bytes, {fmt}, voice {voice_used})[/]")


def _write_audio(response: Any, output: Path | None) -> int:
    """Copy the audio as it streams, into the file or down stdout; returns the bytes written."""
    written = 0
    sink: IO[bytes] = open_user_file(output, "wb") if output else sys.stdout.buffer
    try:
        for chunk in response.iter_bytes():
            sink.write(chunk)
            sink.flush()
            written += len(chunk)
    finally:
        if output:
            sink.close()
    return written


def _fix_wav_sizes(path: Path) -> None:
    """A streamed WAV says "length unknown"; once it is a file, write the real sizes so every player is happy."""
    size = path.stat().st_size
    if size < 44:
        return
    with path.open("r+b") as f:
        head = f.read(44)
        if head[:4] != b"RIFF" or head[36:40] != b"data":
            return
        f.seek(4)
        f.write(struct.pack("<I", size - 8))
        f.seek(40)
        f.write(struct.pack("<I", size - 44))


@voices_app.command("list")
@handle_errors
def voices_list(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Voices tiqo can speak with: name, language, quality, sample rate.

    Example: tiqo voices list --json
    """
    with client() as c:
        data = c.voices()
    if json_out:
        print_json(data)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "LANGUAGE", "QUALITY", "RATE", "SPEAKERS", "SOURCE"):
        table.add_column(column)
    for v in data["voices"]:
        name = v["name"] + (" (default)" if v.get("default") else "")
        speakers = str(len(v.get("speakers") or [])) if v.get("speakers") else "1"
        rate = f"{v.get('sample_rate', 0)} Hz" if v.get("sample_rate") else "?"
        table.add_row(name, v.get("language", ""), v.get("quality", ""), rate, speakers, v.get("source", ""))
    console.print(table)
    console.print(f"[dim]OpenAI voice names ({', '.join(data['openai_voices'][:4])}, …) speak with the default.[/]")


@voices_app.command("add")
@handle_errors
def voices_add(
    path: Path = typer.Argument(..., help="A Piper voice: NAME.onnx, with NAME.onnx.json beside it."),
    name: Optional[str] = typer.Option(None, "--name", help="Name to use (default: the file name)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Register a Piper voice from local files.

    Example: tiqo voices add ~/voices/en_GB-alan-medium.onnx
    """
    with client() as c:
        row = c.add_voice(str(path.expanduser().absolute()), name)
    if json_out:
        print_json(row)
        return
    console.print(f"added voice [bold]{row['name']}[/] ({row.get('language', '')}, {row.get('sample_rate', '?')} Hz)")
