"""Each job's folder, ``<root>/<job id>/`` (0700): made when the job starts, read by name for its result files,
removed with the job; and the answer when the files are on another daemon's machine."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tiqo.core.errors import BadRequest, Conflict, NotFound
from tiqo.daemon.runtime.job_record import JOB_ID

FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class JobFolders:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)

    def path(self, job_id: str) -> Path:
        return self.root / job_id

    def make(self, job_id: str) -> Path:
        folder = self.path(job_id)
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def remove_orphans(self, known: Callable[[str], bool]) -> None:
        """Remove the folders of jobs ``known`` has never heard of (a removal cut short)."""
        for entry in os.scandir(self.root):
            if JOB_ID.fullmatch(entry.name) and not known(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)

    def file(self, job_id: str, name: str) -> Path:
        """A result file: a plain file directly in the job's folder, named as result files are named."""
        if not FILE_NAME.fullmatch(name) or ".." in name:
            raise BadRequest(
                f"{name[:80]!r} is not a job file name",
                param="name",
                hint="use a name from the job's result.files (letters, digits, '.', '_', '-'), e.g. video.mp4",
            )
        path = self.root / job_id / name
        try:
            info = os.lstat(path)
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise NotFound(f"job {job_id} has no file {name!r}", param="name", hint="see the job's result.files")
        return path

    async def remove(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.path(job_id), ignore_errors=True)


def remove_all(folders: Iterable[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def elsewhere(row: dict[str, Any], what: str) -> Conflict:
    """The 409 for the ``what`` of a job another daemon runs (or ran): they are on its host, not here."""
    host, job_id = row.get("host") or "?", row["id"]
    return Conflict(
        f"the {what} of job {job_id} are on host {host} (daemon {row.get('daemon')}, pid {row.get('pid')}), "
        "not on this daemon",
        code="job_elsewhere",
        hint=f"ask the daemon on {host}, or have the proxy route requests for {job_id} to it",
    )
