"""Backups while the daemon serves (``POST /tiqo/backup``): one archive (tiqo/core/archive.py) of the SQLite state,
the vector store and the settings.

All the copying runs in one worker thread, so requests go on being served: the database through SQLite's online
backup API on a connection of its own (state/store.py ``snapshot``), then the LanceDB tables that snapshot's catalog
names, each at its version of the moment (knowledge/vector_snapshot.py), then config.toml (and keys.toml when asked).
The pieces are gathered in a private folder under the state dir (the same file system as the vector store, so its
immutable files are hard-linked rather than copied), checksummed, written into the archive, and removed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiqo.core.archive import build_manifest, write_archive
from tiqo.core.errors import BadRequest, Conflict
from tiqo.core.paths import Paths, user_path
from tiqo.daemon.knowledge.vector_snapshot import TableCopy, copy_tables, open_copy
from tiqo.daemon.state.store import Store

SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _bad_path(message: str) -> BadRequest:
    return BadRequest(message, param="path", hint="give a new absolute path such as ~/backups/tiqo.tar.gz")


def check_destination(text: str, paths: Paths) -> Path:
    """The archive's path: absolute, a tar name, in an existing folder outside tiqo's own, not there yet."""
    dest = user_path(text)
    if "\0" in text or not dest.is_absolute():
        raise _bad_path(f"{text[:200]!r}: the daemon needs an absolute path (it does not share your working folder)")
    if not dest.name.endswith(SUFFIXES):
        raise _bad_path(f"{dest.name!r}: an archive's name ends in {', '.join(SUFFIXES)} (.gz: compressed)")
    if not dest.parent.is_dir():
        raise _bad_path(f"{dest.parent} is not an existing folder")
    parent = dest.parent.resolve()
    if any(parent.is_relative_to(own.resolve()) for own in (paths.state_dir, paths.config_dir)):
        raise _bad_path(f"{dest} lies inside tiqo's own folders: a restore would replace it")
    if dest.exists() or dest.is_symlink():
        raise Conflict(f"{dest} already exists", param="path", hint="pick a new name, or remove the old archive")
    return dest


class Backup:
    def __init__(self, paths: Paths, store: Store, vectors_root: Path, flush: Callable[[], None]) -> None:
        self.paths = paths
        self.store = store
        self.vectors_root = vectors_root
        self.flush = flush  # state held back in memory (key usage counters, batched): written before the snapshot
        self._running = asyncio.Lock()

    async def run(self, path: str, include_keys: bool) -> dict[str, Any]:
        dest = check_destination(path, self.paths)
        if self._running.locked():
            raise Conflict("a backup is already running", hint="wait for it to finish, then try again")
        async with self._running:
            self.flush()
            return await asyncio.to_thread(self.write, dest, include_keys)

    def write(self, dest: Path, include_keys: bool) -> dict[str, Any]:
        """Gather, check and archive everything (blocking: a worker thread)."""
        started = time.perf_counter()
        self.paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".backup-", dir=self.paths.state_dir))
        try:
            counts = self._gather(staging, include_keys)
            manifest = build_manifest(staging, counts, include_keys, counts.pop("schema_version"))
            size = write_archive(staging, dest, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {
            "path": str(dest),
            "bytes": size,
            "seconds": round(time.perf_counter() - started, 3),
            **{k: manifest[k] for k in ("tiqo_version", "schema_version", "created", "include_keys", "counts")},
            "files": len(manifest["files"]),
        }

    def _gather(self, staging: Path, include_keys: bool) -> dict[str, Any]:
        state, config = staging / "state", staging / "config"
        state.mkdir(mode=0o700)
        config.mkdir(mode=0o700)
        db = self.store.snapshot(state / self.store.path.name)
        tables = copy_tables(self.vectors_root, db.pop("tables"), state / "vectors")
        _check_copies(state / "vectors", tables)
        names = [self.paths.config_file] + ([self.paths.keys_file] if include_keys else [])
        for src in (p for p in names if p.is_file()):
            shutil.copyfile(src, config / src.name)
        return {**db, "vectors": sum(t.rows for t in tables), "tables": {t.name: t.version for t in tables}}


def _check_copies(folder: Path, tables: list[TableCopy]) -> None:
    for table in tables:
        rows = open_copy(folder, table)
        if rows != table.rows:
            raise RuntimeError(f"the copy of {table.name} holds {rows} rows, its version {table.version} {table.rows}")
