"""The daemon's SQLite state (WAL): key usage and health, the exact response cache, the tables of the ledger
(requests, calls, budget counters, alerts; see ledger.py) and long work (jobs; see jobs_store.py).

One connection, used from the event loop only (writes are small; WAL with synchronous=NORMAL survives kill -9 of the
process; a small commit costs about 60 µs in memory and 120-140 µs on disk here, see bench/ledger.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from tiqo import SCHEMA_VERSION
from tiqo.core.paths import tighten
from tiqo.daemon.state.shared import CacheEntry, hit_counts

SCHEMA = """
CREATE TABLE IF NOT EXISTS key_state (
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (provider, name)
);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    response TEXT NOT NULL,
    sem_group TEXT,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS cache_expires ON cache (expires);
CREATE TABLE IF NOT EXISTS cache_stats (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    tier TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL DEFAULT '',
    data_class TEXT NOT NULL DEFAULT '',
    backend TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    key TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_nusd INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    cache TEXT NOT NULL DEFAULT 'off',
    outcome TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    route TEXT NOT NULL DEFAULT '',
    content TEXT,
    audio_s REAL NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    video_s REAL NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    device TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_user_ts ON requests (user, ts);
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key TEXT,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    reserved_nusd INTEGER NOT NULL,
    charges TEXT NOT NULL,
    status TEXT NOT NULL,
    cost_nusd INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    ended REAL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE INDEX IF NOT EXISTS calls_open ON calls (status) WHERE status IN ('pending', 'reserving');
CREATE TABLE IF NOT EXISTS budget_usage (
    counter TEXT NOT NULL,
    period TEXT NOT NULL,
    spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (counter, period)
);
CREATE TABLE IF NOT EXISTS request_counts (
    user TEXT NOT NULL,
    day TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (user, day)
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    dedupe TEXT NOT NULL UNIQUE,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vector_collections (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    tbl TEXT NOT NULL UNIQUE,
    model TEXT,
    dimension INTEGER,
    shared INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    eta_s REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_user_created ON jobs (user, created_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""


def _describe(db: sqlite3.Connection) -> dict[str, Any]:
    def count(table: str) -> int:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    return {
        "schema_version": int(db.execute("PRAGMA user_version").fetchone()[0]),
        "requests": count("requests"),
        "calls": count("calls"),
        "collections": count("vector_collections"),
        "tables": [row[0] for row in db.execute("SELECT tbl FROM vector_collections ORDER BY tbl")],
    }


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        # Private from the first byte: SQLite gives the -wal and -shm files (prompts, cached answers) the mode of the
        # database file, so that file is made 0600 before SQLite opens it, and files an older tiqo left open closed.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for part in (path, *self.sidecars()):
            tighten(part)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self._migrate()

    def sidecars(self) -> tuple[Path, Path]:
        """The WAL files next to the database."""
        return self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")

    # Columns added after a table first shipped: (table, column, definition). CREATE TABLE has them for new files.
    MIGRATIONS = (
        ("requests", "audio_s", "REAL NOT NULL DEFAULT 0"),
        ("requests", "images", "INTEGER NOT NULL DEFAULT 0"),  # image and video generation
        ("requests", "video_s", "REAL NOT NULL DEFAULT 0"),
        ("requests", "steps", "INTEGER NOT NULL DEFAULT 0"),
        ("requests", "device", "TEXT NOT NULL DEFAULT ''"),
        ("cache", "sem_group", "TEXT"),  # the semantic cache: which entries' questions may be compared
        ("cache", "vector", "BLOB"),  # and the question's embedding, float32
    )

    def _migrate(self) -> None:
        for table, column, definition in self.MIGRATIONS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self.db.execute("CREATE INDEX IF NOT EXISTS cache_sem_group ON cache (sem_group) WHERE sem_group IS NOT NULL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def snapshot(self, dest: Path) -> dict[str, Any]:
        """Copy the database to ``dest`` (a new file, 0600) through SQLite's online backup API: one consistent
        version, taken on a connection of its own (call it from a worker thread) while the daemon goes on writing
        (WAL: the snapshot's read transaction blocks no writer). The copy is a single file (rollback journal mode).
        Returns its schema version, row counts and the LanceDB tables its vector catalog names."""
        os.close(os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        source = sqlite3.connect(self.path)
        target = sqlite3.connect(dest, isolation_level=None)
        try:
            source.backup(target)  # pages=-1: every page in one step, under one read transaction
            target.execute("PRAGMA journal_mode=DELETE")
            return _describe(target)
        finally:
            target.close()
            source.close()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ keys
    def load_key_states(self, provider: str) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT name, state FROM key_state WHERE provider = ?", (provider,)).fetchall()
        return {name: json.loads(state) for name, state in rows}

    def save_key_state(self, provider: str, name: str, state: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO key_state (provider, name, state, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (provider, name) DO UPDATE SET state = excluded.state, updated = excluded.updated",
            (provider, name, json.dumps(state), time.time()),
        )

    def delete_key_state(self, provider: str, name: str | None = None) -> None:
        if name is None:
            self.db.execute("DELETE FROM key_state WHERE provider = ?", (provider,))
        else:
            self.db.execute("DELETE FROM key_state WHERE provider = ? AND name = ?", (provider, name))

    # ------------------------------------------------------------ cache
    def cache_get(self, key: str, now: float, counter: str = "hits") -> dict[str, Any] | None:
        """The live entry ``key``, counted as a hit under ``counter`` (``hits`` exact, ``semantic_hits``)."""
        row = self.db.execute("SELECT response FROM cache WHERE key = ? AND expires > ?", (key, now)).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE cache SET hits = hits + 1 WHERE key = ?", (key,))
        self._bump(counter)
        result: dict[str, Any] = json.loads(row[0])
        return result

    def cache_put(self, entry: CacheEntry) -> None:
        e, response = entry, json.dumps(entry.response, separators=(",", ":"))
        self.db.execute(
            "INSERT OR REPLACE INTO cache (key, scope, model, created, expires, hits, response, sem_group, vector) "
            "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (e.key, e.scope, e.model, e.now, e.now + e.ttl, response, e.sem_group, e.vector),
        )

    def cache_vectors(self, sem_group: str, now: float) -> list[tuple[str, bytes, float]]:
        """(key, question embedding, expires) of the live entries of one semantic group."""
        return self.db.execute(
            "SELECT key, vector, expires FROM cache WHERE sem_group = ? AND expires > ? AND vector IS NOT NULL",
            (sem_group, now),
        ).fetchall()

    def cache_miss(self) -> None:
        self._bump("misses")

    def _bump(self, name: str) -> None:
        self.db.execute(
            "INSERT INTO cache_stats (name, value) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    def cache_stats(self, now: float) -> dict[str, Any]:
        entries, expired, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(expires <= ?), 0), COALESCE(SUM(LENGTH(response)), 0) FROM cache", (now,)
        ).fetchone()
        stats = dict(self.db.execute("SELECT name, value FROM cache_stats").fetchall())
        scopes = dict(self.db.execute("SELECT scope, COUNT(*) FROM cache WHERE expires > ? GROUP BY scope", (now,)))
        return {"entries": entries - expired, "expired": expired, "bytes": size, **hit_counts(stats), "scopes": scopes}

    def cache_clear(self, expired_only: bool = False, now: float | None = None) -> int:
        if expired_only:
            cur = self.db.execute("DELETE FROM cache WHERE expires <= ?", (time.time() if now is None else now,))
        else:
            cur = self.db.execute("DELETE FROM cache")
            self.db.execute("DELETE FROM cache_stats")
        return cur.rowcount
