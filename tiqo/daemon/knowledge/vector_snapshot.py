"""A copy of LanceDB tables at one version each, for backups, taken while the daemon goes on writing.

A Lance table is a folder of immutable files: data, deletion and index files, and one manifest per version under
``_versions/`` that names the files of that version. Copying the folder after noting the table's version V gives
every file V needs (they were all written before V's manifest); the manifests of versions written during the copy
are left out, so the copy opens at V. A tag on V (LanceDB's own mechanism) keeps ``cleanup_old_versions`` from
deleting V's files meanwhile. Files are hard-linked where the copy is on the same file system (they never change),
copied otherwise. Runs in a worker thread, on a LanceDB connection of its own (``checkout`` changes a table object in
place: the daemon's tables are never touched).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

U64_MAX = 2**64 - 1
VERSION_HINT = "latest_version_hint.json"
LEGACY_LATEST = "_latest.manifest"


@dataclass(frozen=True)
class TableCopy:
    name: str
    version: int
    rows: int


def manifest_version(name: str) -> int | None:
    """The version a ``_versions/`` file name holds: ``{u64::MAX - v}.manifest`` (Lance's v2 naming, newest first)
    or ``{v}.manifest`` (v1); None for other files."""
    stem, dot, ext = name.partition(".")
    if not dot or ext != "manifest" or not stem.isdigit():
        return None
    n = int(stem)
    return U64_MAX - n if n > 2**63 else n


def _wanted(rel: Path, version: int, tag: str) -> bool:
    """Whether a file of the table folder belongs in the copy of ``version``."""
    if rel.parts[0] == "_versions":
        found = manifest_version(rel.name)
        return found is not None and found <= version  # the hint and later manifests stay behind
    if rel.name.startswith(".") or (rel.parts[0] == "_refs" and rel.name == f"{tag}.json"):
        return False  # a writer's temporary file (renamed into place when complete), or our own tag
    return rel.name != LEGACY_LATEST  # rewritten from V's own manifest (v1 naming)


def _place(src: Path, dest: Path) -> None:
    """Link (or copy) one file; one that vanished meanwhile belonged to a later version or was a writer's temporary
    file (V's own files are kept by the tag), and is skipped."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.link(src, dest)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o600)


def _copy_folder(folder: Path, dest: Path, version: int, tag: str, v2_paths: bool) -> None:
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = src.relative_to(folder)
        if _wanted(rel, version, tag):
            _place(src, dest / rel)
    if not v2_paths:  # v1 naming: readers start from _latest.manifest, which must be V's
        shutil.copyfile(folder / "_versions" / f"{version}.manifest", dest / LEGACY_LATEST)


def _copy_table(db: Any, root: Path, name: str, dest: Path) -> TableCopy | None:
    try:
        table = db.open_table(name)
    except (ValueError, FileNotFoundError):  # a collection with no rows yet, or removed since the catalog was read
        return None
    version = int(table.version)
    tag = f"tiqo-backup-{uuid.uuid4().hex[:12]}"
    table.tags.create(tag, version)
    try:
        _copy_folder(root / f"{name}.lance", dest / f"{name}.lance", version, tag, table.uses_v2_manifest_paths())
        table.checkout(version)
        return TableCopy(name, version, int(table.count_rows()))
    finally:
        with contextlib.suppress(Exception):  # a tag left behind only keeps old files a little longer
            table.tags.delete(tag)


def copy_tables(root: Path, names: list[str], dest: Path) -> list[TableCopy]:
    """Copy the tables ``names`` of the LanceDB folder ``root`` into ``dest`` (a new folder), each at its version of
    the moment; tables that do not exist are skipped."""
    dest.mkdir(mode=0o700)
    if not names or not root.is_dir():
        return []
    import lancedb

    db = lancedb.connect(str(root))
    copies = (_copy_table(db, root, name, dest) for name in names)
    return [c for c in copies if c is not None]


def open_copy(dest: Path, copy: TableCopy) -> int:
    """Rows of a copied table as LanceDB reads them from the copy: a check that it opens at its version and that
    every data file is there (the filter makes LanceDB read a column of each, not the manifest's count)."""
    import lancedb

    table = lancedb.connect(str(dest)).open_table(copy.name)
    if int(table.version) != copy.version:
        raise RuntimeError(f"the copy of {copy.name} opens at version {table.version}, not {copy.version}")
    return int(table.count_rows("id IS NOT NULL"))
