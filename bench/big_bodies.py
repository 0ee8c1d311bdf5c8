"""Does one big request body stall the daemon for the other clients? (issue 16: a 16 MiB pathological prompt is
answered in under 1 s, and ``/tiqo/health`` from another client stays under 50 ms meanwhile.)

Starts a daemon with two stub providers (tests/upstreams.py) and, for each kind of body just under
``daemon.max_request_size`` (16 MiB), sends it to ``POST /v1/chat/completions`` while a second client asks
``GET /tiqo/health`` in a loop (a fresh probe every ~2 ms on a kept-alive connection). Bodies:

* ``a.``      one user message ``"a." * N`` (the quadratic-regex reproduction of the issue);
* ``items``   the same size spent on ~400k tiny messages (JSON parsing and validation cost per object);
* ``invalid`` the ``a.`` body with its last byte cut (JSON error at the very end: the whole body is scanned).

Prints per body: the big request's status and seconds, health p50 / max (ms) during it, and max / big-request time.
Numbers only, no asserts (tests/test_hardening_bodies.py asserts generous bounds).

Run:  .venv/bin/python bench/big_bodies.py [--rounds N]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import start_daemon  # noqa: E402
from tests.test_gateway import write_home  # noqa: E402
from tests.upstreams import Upstream  # noqa: E402

LIMIT = 16 << 20


def bodies(limit: int = LIMIT) -> dict[str, bytes]:
    """Bodies of just under ``limit`` bytes."""
    head = b'{"model":"ext","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    n = (limit - len(head) - len(tail) - 64) // 2
    big = head + b"a." * n + tail
    item = b'{"role":"user","content":"a"},'
    count = (limit - 64) // len(item)
    items = b'{"model":"ext","messages":[' + item * count + b'{"role":"user","content":"a"}]}'
    return {"a.": big, "items": items, "invalid": big[:-1]}


class Conn(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("tiqo", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def probe(sock: str, stop: threading.Event, out: list[float]) -> None:
    """Ask /tiqo/health until ``stop``; append each answer's latency (seconds)."""
    conn = Conn(sock)
    while not stop.is_set():
        t = time.perf_counter()
        conn.request("GET", "/tiqo/health")
        conn.getresponse().read()
        out.append(time.perf_counter() - t)
        time.sleep(0.002)
    conn.close()


def one(sock: str, body: bytes) -> tuple[int, float, list[float]]:
    """Send ``body`` with health probed meanwhile: status, seconds, health latencies during it."""
    lat: list[float] = []
    stop = threading.Event()
    th = threading.Thread(target=probe, args=(sock, stop, lat))
    th.start()
    time.sleep(0.05)
    before = len(lat)
    conn = Conn(sock)
    t = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    took = time.perf_counter() - t
    stop.set()
    th.join()
    conn.close()
    return resp.status, took, lat[before:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="requests per body kind (the worst health is kept)")
    args = parser.parse_args()
    a, b = Upstream().start(), Upstream().start()
    home = Path(tempfile.mkdtemp(prefix="tqb", dir="/tmp"))
    write_home(home, a, b)
    d = start_daemon(home)
    try:
        sock = str(d.socket)
        idle: list[float] = []
        stop = threading.Event()
        th = threading.Thread(target=probe, args=(sock, stop, idle))
        th.start()
        time.sleep(0.5)
        stop.set()
        th.join()
        print(f"idle health: p50 {statistics.median(idle) * 1e3:.2f} ms, max {max(idle) * 1e3:.2f} ms")
        print(f"{'body':8} {'MiB':>5} {'status':>6} {'big s':>7} {'n':>4} {'p50 ms':>7} {'max ms':>7} {'max/big':>7}")
        for name, body in bodies().items():
            worst: list[float] = []
            for _ in range(args.rounds):
                status, took, lat = one(sock, body)
                lat = lat or [0.0]
                worst.append(max(lat))
                print(
                    f"{name:8} {len(body) / 2**20:5.1f} {status:6} {took:7.3f} {len(lat):4} "
                    f"{statistics.median(lat) * 1e3:7.2f} {max(lat) * 1e3:7.2f} {max(lat) / took:7.2f}"
                )
    finally:
        d.stop()
        a.stop()
        b.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
