"""tiqo's backup archive: one tar file (gzip-compressed when its name ends in .gz or .tgz), mode 0600, holding

    manifest.json          first: format, tiqo and schema versions, counts, and the size and SHA-256 of every member
    state/tiqo.db          the SQLite database (a snapshot through SQLite's online backup API)
    state/vectors/...      the LanceDB tables, each at one version
    config/config.toml     the settings
    config/keys.toml       provider keys, only when asked for (`tiqo backup --include-keys`)

Written by the daemon (``write_archive``), read by `tiqo restore` (``read_archive``): stdlib only, so that the CLI
can restore without the daemon's libraries. Reading checks every member against the manifest before anything is
used; a damaged, truncated or foreign archive, or one from a newer tiqo, is refused with an ``ArchiveError``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tiqo import SCHEMA_VERSION, __version__
from tiqo.core.errors import BadRequest

FORMAT = 1
MANIFEST = "manifest.json"
ROOTS = ("state", "config")  # the top folders of an archive: the home's state and config folders
CHUNK = 1024 * 1024
MAX_MANIFEST = 64 * 1024 * 1024


class ArchiveError(BadRequest):
    code = "bad_archive"


def is_compressed(path: Path) -> bool:
    return path.name.endswith((".gz", ".tgz"))


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` → ``(0, 10, 2)``; anything after a part's leading digits (``rc1``, ``+local``) is ignored."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", p)) else 0 for p in version.split("."))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _members(staging: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, file) of every file under the staging folder's roots, in a stable order."""
    for root in ROOTS:
        for path in sorted((staging / root).rglob("*")):
            if path.is_file():
                yield path.relative_to(staging).as_posix(), path


def build_manifest(staging: Path, counts: dict[str, Any], include_keys: bool, schema_version: int) -> dict[str, Any]:
    files = {name: {"size": path.stat().st_size, "sha256": file_digest(path)} for name, path in _members(staging)}
    return {
        "format": FORMAT,
        "tiqo_version": __version__,
        "schema_version": schema_version,  # the database's own (PRAGMA user_version)
        "created": time.time(),
        "include_keys": include_keys,
        "counts": counts,
        "files": files,
    }


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    return info


def _open_for_writing(raw: IO[bytes], compressed: bool) -> tarfile.TarFile:
    if compressed:  # level 6: most of the gain of 9 (SQLite pages shrink well, vectors hardly) in far less time
        return tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6)
    return tarfile.open(fileobj=raw, mode="w")


def write_archive(staging: Path, dest: Path, manifest: dict[str, Any]) -> int:
    """Write the archive of ``staging`` to ``dest`` (0600 from its first byte, under a temporary name renamed into
    place once complete and synced). Returns its size in bytes."""
    tmp = dest.with_name(f".{dest.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            os.fchmod(raw.fileno(), 0o600)
            with _open_for_writing(raw, is_compressed(dest)) as tar:
                body = json.dumps(manifest, indent=2, sort_keys=True).encode()
                tar.addfile(_tar_info(MANIFEST, len(body)), io.BytesIO(body))
                for name, path in _members(staging):
                    with path.open("rb") as fh:
                        tar.addfile(_tar_info(name, manifest["files"][name]["size"]), fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest.stat().st_size


# ---------------------------------------------------------------------------------------------------- reading
def _damaged(path: Path, why: str) -> ArchiveError:
    return ArchiveError(
        f"{path} is not a complete tiqo backup: {why}",
        param="path",
        hint="nothing was changed; restore another archive (a truncated copy? check its size against the source)",
    )


def check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """The manifest, if this tiqo can restore it; an ``ArchiveError`` naming the reason otherwise."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise _damaged(path, "its manifest.json is not a tiqo manifest")
    newer = [f"{what} {theirs} (this tiqo has {ours})" for what, theirs, ours in _newer_parts(manifest)]
    if newer:
        raise ArchiveError(
            f"{path} was written by a newer tiqo: " + ", ".join(newer),
            param="path",
            code="newer_archive",
            hint="nothing was changed; upgrade tiqo (pip install -U tiqo), then restore",
        )
    return manifest


def _newer_parts(manifest: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """(what, the archive's, ours) for each version of the archive newer than this tiqo's."""
    fmt, schema, tiqo = manifest.get("format"), manifest.get("schema_version"), manifest.get("tiqo_version")
    if not isinstance(fmt, int) or fmt > FORMAT:  # a missing or odd number reads as too new
        yield "archive format", fmt, FORMAT
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        yield "schema", schema, SCHEMA_VERSION
    if not isinstance(tiqo, str) or version_tuple(tiqo) > version_tuple(__version__):
        yield "tiqo", tiqo, __version__


def _safe_name(path: Path, name: str) -> PurePosixPath:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[0] not in ROOTS:
        raise _damaged(path, f"member {name!r} lies outside the state and config folders")
    return pure


def _copy_checked(src: IO[bytes], dest: Path, expected: dict[str, Any]) -> bool:
    """Copy one member to ``dest`` (0600); True when its size and SHA-256 match the manifest's."""
    digest, size = hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        while block := src.read(CHUNK):
            digest.update(block)
            size += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return size == expected.get("size") and digest.hexdigest() == expected.get("sha256")


def _read_manifest(path: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST:
        raise _damaged(path, "it does not start with manifest.json")
    fh = tar.extractfile(first)
    assert fh is not None
    try:
        manifest = json.loads(fh.read())
    except ValueError:
        raise _damaged(path, "its manifest.json is not JSON") from None
    return check_manifest(path, manifest)


def _extract_members(path: Path, tar: tarfile.TarFile, files: dict[str, Any], into: dict[str, Path]) -> None:
    seen: set[str] = set()
    while (member := tar.next()) is not None:  # on from the manifest (iterating the TarFile would start over)
        if not member.isfile():
            raise _damaged(path, f"member {member.name!r} is not a plain file")
        pure = _safe_name(path, member.name)
        name = pure.as_posix()
        if name not in files or name in seen:
            raise _damaged(path, f"member {name!r} is not in its manifest (or appears twice)")
        seen.add(name)
        src = tar.extractfile(member)
        assert src is not None
        if not _copy_checked(src, into[pure.parts[0]].joinpath(*pure.parts[1:]), files[name]):
            raise _damaged(path, f"{name} does not match its checksum")
    missing = sorted(set(files) - seen)
    if missing:
        raise _damaged(path, f"{len(missing)} member(s) missing, e.g. {missing[0]}")


def read_archive(path: Path, into: dict[str, Path]) -> dict[str, Any]:
    """Check ``path`` and extract it, ``state/…`` into the empty folder ``into["state"]`` and ``config/…`` into
    ``into["config"]``, verifying every member's size and checksum as it is read. Returns the manifest; raises
    ``ArchiveError`` at the first problem (the caller removes what was extracted)."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            manifest = _read_manifest(path, tar)
            _extract_members(path, tar, manifest["files"], into)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:  # not our disk's errors: those raise
        raise _damaged(path, str(exc) or type(exc).__name__) from None
    return manifest
