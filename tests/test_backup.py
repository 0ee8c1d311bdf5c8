"""`tiqo backup` while a real daemon serves a burst of requests (stub providers), `tiqo restore` into a fresh home,
and the refusals that must change nothing: a truncated archive, one from a newer tiqo, a running daemon."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, TiqoHome, home_env, short_home, start_daemon
from tests.test_gateway import SECRETS, ask, write_home
from tests.test_vectors import CORPUS, QUERIES, ingest, ok, search
from tests.upstreams import Upstream
from tiqo import SCHEMA_VERSION
from tiqo.cli.backup import dated_name, rotate
from tiqo.core.archive import ArchiveError, check_manifest, version_tuple
from tiqo.daemon.knowledge.vector_snapshot import manifest_version

BURST = 200
RAW_BATCH = 10  # raw vectors are upserted 10 at a time: a consistent copy holds a multiple of 10


# ------------------------------------------------------------------ pure pieces
def test_manifest_versions_rotation_and_version_order(tmp_path: Path) -> None:
    assert manifest_version(f"{2**64 - 1 - 7}.manifest") == 7  # Lance's v2 naming: newest first
    assert manifest_version("12.manifest") == 12 and manifest_version("latest_version_hint.json") is None
    assert version_tuple("0.10.2rc1") > version_tuple("0.9.9")
    names = [dated_name(1_700_000_000 + 86400 * i) for i in range(5)]
    for name in [*names, "notes.txt", "tiqo-manual.tar.gz"]:
        (tmp_path / name).write_text("x")
    removed = rotate(tmp_path, 2)
    assert [p.name for p in removed] == names[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[3:], "notes.txt", "tiqo-manual.tar.gz"])
    with pytest.raises(ArchiveError, match="newer tiqo: schema 99"):
        check_manifest(tmp_path, {"format": 1, "schema_version": 99, "tiqo_version": "0.0.1", "files": {}})


def test_schema_version_follows_the_migrations(tmp_path: Path) -> None:
    from tiqo.daemon.state.store import Store

    assert 1 + len(Store.MIGRATIONS) == SCHEMA_VERSION, "a migration was added: bump tiqo.SCHEMA_VERSION"
    store = Store(tmp_path / "tiqo.db")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


# ------------------------------------------------------------------ the burst
@dataclass
class Burst:
    """Requests sent from a pool of threads; when each one was answered, and what a raw-vector writer wrote."""

    d: DaemonProc
    answered: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, request id)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    stop: threading.Event = field(default_factory=threading.Event)
    raw_batches: int = 0

    def one(self, i: int) -> None:
        started = time.monotonic()
        r = ask(self.d, text=f"question number {i}")
        assert r.status_code == 200, r.text
        done = time.monotonic()
        self.answered.append((done, r.headers["x-tiqo-request-id"]))
        self.latencies.append((started, done - started))

    def write_raw(self) -> None:
        c = self.d.client(30)
        while not self.stop.is_set():
            n = self.raw_batches
            vectors = [{"id": f"r{n}-{j}", "values": [float(n), float(j), 1.0, 0.5]} for j in range(RAW_BATCH)]
            ok(c.post("/tiqo/vectors/raw/upsert", json={"vectors": vectors}))
            self.raw_batches += 1


def files_of(home: Path) -> dict[str, tuple[str, int]]:
    """Every file of a home: path -> (sha256, mode)."""
    return {
        str(p.relative_to(home)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode & 0o777)
        for p in sorted(home.rglob("*"))
        if p.is_file() and not p.is_socket()
    }


def modes_are_private(home: Path) -> bool:
    return all((p.stat().st_mode & 0o077) == 0 for p in home.rglob("*") if not p.is_symlink() and "logs" not in p.parts)


@pytest.fixture
def source(stubs: tuple[Upstream, Upstream]) -> Iterator[DaemonProc]:
    home = short_home()
    write_home(home, *stubs, extra={"budgets": {"global": {"daily": 100.0}}})
    stubs[0].set_quota(SECRETS["a1"], 3, retry_after=3600)  # key a1 goes on cooldown: a key state worth keeping
    d = start_daemon(home)
    yield d
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def target() -> Iterator[TiqoHome]:
    home = short_home()
    yield TiqoHome(home, home_env(home))
    shutil.rmtree(home, ignore_errors=True)


def comparable_budget(c: httpx.Client) -> list[tuple[Any, ...]]:
    rows = ok(c.get("/tiqo/budget"))["limits"]
    return [(r["counter"], r["period"], r["spent_usd"], r["reserved_usd"]) for r in rows]


def comparable_keys(c: httpx.Client) -> list[tuple[Any, ...]]:
    keys = ok(c.get("/tiqo/keys"))["keys"]
    fields = ("provider", "name", "status", "requests_total", "tokens_total", "failures_total")
    return sorted((*(k[f] for f in fields), round(k["until"] or 0)) for k in keys)


def test_backup_during_a_burst_restores_into_a_fresh_home(source: DaemonProc, target: TiqoHome, tmp_path: Path) -> None:
    c = source.client(120)
    ok(c.post("/tiqo/vectors", json={"name": "docs"}))
    ingest(c, "docs", CORPUS)
    ok(c.post("/tiqo/vectors", json={"name": "raw", "dimension": 4}))
    expected = {q: [m["id"] for m in search(c, "docs", q, top_k=3)] for q in QUERIES}
    archive = tmp_path / "during.tar.gz"
    burst = Burst(source)
    writer = threading.Thread(target=burst.write_raw)
    writer.start()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(burst.one, i) for i in range(BURST)]
        while len(burst.answered) < BURST // 4:
            time.sleep(0.01)
        began = time.monotonic()
        done = source.cli("backup", str(archive), "--json")
        ended = time.monotonic()
        for f in futures:
            f.result()
    burst.stop.set()
    writer.join()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    before = {rid for t, rid in burst.answered if t < began}
    during = [s for t0, s in burst.latencies if began <= t0 < ended]
    outside = sorted(s for t0, s in burst.latencies if not began <= t0 < ended)
    print(
        f"\nbackup: {result['seconds']:.3f}s in the daemon, {ended - began:.3f}s for the CLI, {result['bytes']} bytes, "
        f"{result['counts']}; {len(before)} answered before it; {len(during)} requests started during it, p50 "
        f"{sorted(during)[len(during) // 2]:.3f}s max {max(during):.3f}s; "
        f"outside it p50 {outside[len(outside) // 2]:.3f}s max {outside[-1]:.3f}s"
    )
    assert (archive.stat().st_mode & 0o777) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and "state/tiqo.db" in names and "config/config.toml" in names
    assert "config/keys.toml" not in names  # only with --include-keys

    source_budget, source_keys = comparable_budget(c), comparable_keys(c)
    assert any(k[2] != "healthy" for k in source_keys), source_keys  # a1's cooldown is part of what must survive
    quiet = tmp_path / "quiet.tar"
    assert source.cli("backup", str(quiet), "--include-keys").returncode == 0
    with tarfile.open(quiet) as tar:
        member = tar.getmember("config/keys.toml")
        assert member.mode == 0o600

    restored = target.cli("restore", str(archive), "--json")
    assert restored.returncode == 0, restored.stderr
    db = sqlite3.connect(target.home / "state" / "tiqo.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ledger = {row[0] for row in db.execute("SELECT id FROM requests")}
    db.close()
    assert before <= ledger, f"{len(before - ledger)} requests answered before the backup are missing"
    assert modes_are_private(target.home)
    (target.home / "config" / "keys.toml").write_bytes((source.home / "config" / "keys.toml").read_bytes())

    d2 = start_daemon(target.home)
    try:
        c2 = d2.client(120)
        assert {q: [m["id"] for m in search(c2, "docs", q, top_k=3)] for q in QUERIES} == expected
        raw = next(r for r in ok(c2.get("/tiqo/vectors"))["collections"] if r["name"] == "raw")
        assert raw["rows"] % RAW_BATCH == 0 and raw["rows"] <= burst.raw_batches * RAW_BATCH, raw
    finally:
        d2.stop()

    shutil.rmtree(target.home / "state.before-restore", ignore_errors=True)  # from the first restore: none, or few
    shutil.rmtree(target.home / "config.before-restore", ignore_errors=True)
    assert target.cli("restore", str(quiet)).returncode == 0
    d3 = start_daemon(target.home)
    try:
        c3 = d3.client(60)
        assert comparable_budget(c3) == source_budget
        assert comparable_keys(c3) == source_keys
        assert len(ok(c3.get("/tiqo/logs", params={"n": 1000}))["data"]) >= BURST
    finally:
        d3.stop()


# ------------------------------------------------------------------ refusals
def _rewrite_manifest(src: Path, dest: Path, **changes: Any) -> None:
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), **changes}).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def test_damaged_newer_or_live_restores_change_nothing(fresh_daemon: DaemonProc, tmp_path: Path) -> None:
    d = fresh_daemon
    c = d.client(60)
    ok(c.post("/tiqo/vectors", json={"name": "v", "dimension": 2}))
    ok(c.post("/tiqo/vectors/v/upsert", json={"vectors": [{"id": "a", "values": [1.0, 0.0]}]}))
    good = tmp_path / "good.tar"
    assert d.cli("backup", str(good)).returncode == 0
    live = d.cli("restore", str(good))
    assert live.returncode == 1 and "tiqo daemon stop" in live.stderr
    assert d.cli("daemon", "stop").returncode == 0

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    newer = tmp_path / "newer.tar"
    _rewrite_manifest(good, newer, tiqo_version="99.0.0", schema_version=SCHEMA_VERSION + 1)
    flipped = tmp_path / "flipped.tar"
    with tarfile.open(good) as tar:
        offset = tar.getmember("state/tiqo.db").offset_data + 4096  # inside the database's second page
    data = bytearray(good.read_bytes())
    data[offset] ^= 0xFF  # one bit flipped in one member: its checksum fails
    flipped.write_bytes(bytes(data))
    before = files_of(d.home)
    for archive, message in (
        (truncated, "not a complete tiqo backup"),
        (newer, "written by a newer tiqo"),
        (flipped, "not a complete tiqo backup"),
        (tmp_path / "missing.tar", "no such archive"),
    ):
        refused = d.cli("restore", str(archive))
        assert refused.returncode == 1 and message in refused.stderr, (archive, refused.stderr)
        assert "nothing was changed" in refused.stderr or archive.name == "missing.tar"
        assert archive != newer or "tiqo 99.0.0 (this tiqo has" in refused.stderr
        assert files_of(d.home) == before, archive
        assert sorted(p.name for p in d.home.iterdir()) == ["config", "logs", "run", "state"]


def test_backup_refuses_relative_and_odd_paths(daemon: DaemonProc, tmp_path: Path) -> None:
    c = daemon.client(30)
    for path, status in (
        ("relative.tar", 400),
        (str(tmp_path / "x.zip"), 400),
        (str(tmp_path / "no" / "such" / "x.tar"), 400),
        (str(daemon.home / "state" / "x.tar"), 400),
    ):
        r = c.post("/tiqo/backup", json={"path": path})
        assert r.status_code == status and r.json()["error"]["hint"], (path, r.text)
    (tmp_path / "there.tar").write_text("")
    assert c.post("/tiqo/backup", json={"path": str(tmp_path / "there.tar")}).status_code == 409
