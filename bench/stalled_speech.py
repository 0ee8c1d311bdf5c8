"""The daemon's memory while a client asks for a very long speech and reads nothing (issue 16, finding 8).

Starts a daemon of its own (bundled Piper voice), speaks one paragraph to load the voice, then opens
``/v1/audio/speech`` for a long text over the Unix socket with a tiny receive buffer and never reads. Prints the
daemon's RSS and CPU time every few seconds, then closes the client and prints how much audio was synthesised
(the ledger's audio_s for the cancelled request).

    python bench/stalled_speech.py [--seconds 120] [--repeat 200]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from tests.conftest import start_daemon, wait_for
from tests.test_hardening_cache import SPEECH, _cancelled_row, _stalled_speech


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--every", type=float, default=10)
    args = ap.parse_args()
    d = start_daemon()
    try:
        c = d.client(300)
        c.post("/v1/audio/speech", json={"input": SPEECH, "response_format": "wav"}).raise_for_status()
        proc = psutil.Process(d.proc.pid)
        base = proc.memory_info().rss / 1e6
        text = SPEECH * args.repeat
        print(f"text: {len(text)} chars; daemon RSS after warm-up: {base:.0f} MB")
        client = _stalled_speech(d.socket, text)
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            time.sleep(args.every)
            t = proc.cpu_times()
            print(
                f"t={time.monotonic() - start:5.0f}s  RSS {proc.memory_info().rss / 1e6:6.0f} MB"
                f" (+{proc.memory_info().rss / 1e6 - base:5.0f})  cpu {t.user + t.system:7.1f}s"
            )
        client.close()
        row = wait_for(lambda: _cancelled_row(c), 120)
        rss = proc.memory_info().rss / 1e6
        print(f"client gone: {row and row['audio_s']} s of audio synthesised for it; RSS {rss:.0f} MB")
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


if __name__ == "__main__":
    main()
