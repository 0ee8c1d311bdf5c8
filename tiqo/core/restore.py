"""`tiqo restore`: a backup archive in place of a stopped daemon's state and config, all or nothing.

1. Refuse while a daemon runs (the daemon's lock is held for the whole restore, so none can start meanwhile), or
   while an earlier restore's ``.before-restore`` folders are still there.
2. Extract the archive into new folders beside the targets (``<state dir>/../.state.restore-*``, same file system),
   checking every member against the manifest's checksums, then the database (``PRAGMA integrity_check``, its
   schema version). Any problem: the new folders are removed and nothing else was touched.
3. Swap with renames: each item the archive holds (``tiqo.db``, ``vectors/``, ``config.toml``, ``keys.toml``) moves
   from the target folder into ``<folder>.before-restore/`` (the database with its -wal and -shm files, which would
   otherwise be replayed into the restored one), then the restored item moves in. A failure undoes every rename
   done so far. What the archive does not hold stays as it is (keys.toml of a backup taken without
   --include-keys, assembled model weights under models/).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiqo.core.archive import ROOTS, ArchiveError, read_archive
from tiqo.core.errors import BadRequest, Conflict
from tiqo.core.paths import Paths, acquire_lock, ensure_private_dir, make_private_dirs

BEFORE = ".before-restore"
DB_NAME = "tiqo.db"
# Items a restore always replaces, whether the archive holds them or not: an archive with no collections leaves no
# old vector tables behind.
REPLACED = {"state": (DB_NAME, "vectors"), "config": ("config.toml",)}
STOP_HINT = "stop it with `tiqo daemon stop`, then restore"


@dataclass
class Swap:
    """Renames done so far, undone in reverse order when a later one fails."""

    done: list[tuple[Path, Path]] = field(default_factory=list)

    def move(self, src: Path, dest: Path) -> None:
        os.rename(src, dest)
        self.done.append((src, dest))

    def undo(self) -> None:
        for src, dest in reversed(self.done):
            os.rename(dest, src)
        self.done.clear()


def targets(paths: Paths) -> dict[str, Path]:
    return {"state": paths.state_dir, "config": paths.config_dir}


def before_folder(target: Path) -> Path:
    return target.with_name(target.name + BEFORE)


@contextlib.contextmanager
def daemon_lock(paths: Paths) -> Iterator[None]:
    """The daemon's own lock, held while restoring: a daemon that runs (or starts meanwhile) is refused."""
    ensure_private_dir(paths.runtime_dir)
    lock = acquire_lock(paths.lock_file)
    if lock is None:
        raise Conflict(f"a tiqo daemon is running for {paths.runtime_dir}", code="daemon_running", hint=STOP_HINT)
    try:
        yield
    finally:
        lock.close()


def _check_preconditions(archive: Path, folders: dict[str, Path]) -> None:
    if not archive.is_file():
        raise BadRequest(f"{archive}: no such archive", param="path", hint="give the path of a `tiqo backup` archive")
    for target in folders.values():
        left = before_folder(target)
        if left.exists():
            raise Conflict(
                f"{left} is still there from an earlier restore",
                code="restore_leftover",
                hint=f"keep what you need from it, then remove it (rm -r {left}) and restore again",
            )


def _check_database(db: Path, manifest: dict[str, Any]) -> None:
    if not db.exists():
        raise ArchiveError(f"the archive holds no {DB_NAME}", param="path", hint="nothing was changed")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        schema = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        result, schema = str(exc), None
    finally:
        conn.close()
    if result != "ok" or schema != manifest.get("schema_version"):  # the manifest's was checked against ours
        raise ArchiveError(
            f"the archive's database fails its checks (integrity: {result}, schema {schema})",
            param="path",
            hint="nothing was changed; restore another archive",
        )


def _stage(archive: Path, folders: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Extract and check the archive into new folders beside the targets; (manifest, root -> staging folder)."""
    staging: dict[str, Path] = {}
    try:
        for root, target in folders.items():
            make_private_dirs(target.parent)
            staging[root] = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
        manifest = read_archive(archive, staging)
        _check_database(staging["state"] / DB_NAME, manifest)
    except BaseException:
        _remove(staging)
        raise
    return manifest, staging


def _remove(staging: dict[str, Path]) -> None:
    for folder in staging.values():
        shutil.rmtree(folder, ignore_errors=True)


def _displaced(name: str) -> list[str]:
    """The files that leave with an item: a database takes its WAL files along."""
    return [name, f"{name}-wal", f"{name}-shm"] if name == DB_NAME else [name]


def _swap_in(staging: dict[str, Path], folders: dict[str, Path]) -> list[str]:
    """Move the old items aside and the restored ones in; all or nothing. Returns the restored paths."""
    swap, restored = Swap(), []
    try:
        for root, new in staging.items():
            target, before = folders[root], before_folder(folders[root])
            make_private_dirs(target)
            for item in sorted({p.name for p in new.iterdir()} | set(REPLACED[root])):
                for name in _displaced(item):
                    if (target / name).exists() or (target / name).is_symlink():
                        make_private_dirs(before)
                        swap.move(target / name, before / name)
                if (new / item).exists():
                    swap.move(new / item, target / item)
                    restored.append(str(target / item))
    except BaseException:
        swap.undo()
        raise
    return restored


def restore(archive: Path, paths: Paths) -> dict[str, Any]:
    """Restore ``archive`` into the home of ``paths`` (the daemon stopped); a summary of what was done."""
    folders = {root: targets(paths)[root] for root in ROOTS}
    _check_preconditions(archive, folders)
    with daemon_lock(paths):
        manifest, staging = _stage(archive, folders)
        try:
            restored = _swap_in(staging, folders)
        finally:
            _remove(staging)
    kept = [str(before_folder(t)) for t in folders.values() if before_folder(t).exists()]
    return {
        "archive": str(archive),
        "tiqo_version": manifest["tiqo_version"],
        "schema_version": manifest["schema_version"],
        "created": manifest["created"],
        "counts": manifest.get("counts", {}),
        "keys_restored": any(name == "config/keys.toml" for name in manifest["files"]),
        "restored": restored,
        "before_restore": kept,
    }
