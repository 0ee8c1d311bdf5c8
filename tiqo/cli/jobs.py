"""``tiqo jobs``: the daemon's long work (video, images): list, show, wait for, cancel and remove jobs."""

from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.markup import escape

from tiqo.cli.output import EXIT_ERROR, client, console, err_console, fail, handle_errors, print_json
from tiqo.present import JOB_COLUMNS, job_row

app = typer.Typer(
    help="Long work the daemon does in the background (video, images): progress, results, cancel.\n\n"
    "Example: tiqo jobs list && tiqo jobs wait job_…",
    no_args_is_help=True,
)
USER = typer.Option(None, "--user", "-u", help="Act as this user (jobs belong to the user who submitted them).")
JSON = typer.Option(False, "--json", help="Print JSON.")
JOB_ID = typer.Argument(..., help="Job id (job_…).")
FINISHED = {"completed", "failed", "cancelled"}
POLL_S = 0.5  # each long-poll returns at once when the job ends, else after this long with its progress
NARROW = 110  # columns below which the list leaves out the stage and the time
EXIT_TIMEOUT = 124  # like timeout(1): the job was still running when --timeout ran out


def _table(jobs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    # The whole id (to copy into `tiqo jobs wait ID`), status and progress never wrap; a narrow terminal loses the
    # stage and the time instead.
    shown = [c for c in JOB_COLUMNS if console.width >= NARROW or c not in ("STAGE", "CREATED")]
    table = Table(box=None, pad_edge=False)
    for column in shown:
        table.add_column(column, no_wrap=column in ("ID", "STATUS", "PROGRESS"))
    for job in jobs:
        cells = dict(zip(JOB_COLUMNS, job_row(job), strict=True))
        table.add_row(*(escape(cells[c]) for c in shown))
    console.print(table)


def _show(job: dict[str, Any]) -> None:
    cells = dict(zip(JOB_COLUMNS, job_row(job), strict=True))
    lines = [f"{k.lower():<10} {v}" for k, v in cells.items()]
    for key in ("started_at", "finished_at", "expires_at"):
        if job.get(key):
            from tiqo.present import clock

            lines.append(f"{key.removesuffix('_at'):<10} {clock(job[key])}")
    for key in ("params", "meta", "result"):
        if job.get(key):
            import json

            lines.append(f"{key:<10} {json.dumps(job[key], ensure_ascii=False)}")
    error = job.get("error")
    if error:
        lines.append(f"{'error':<10} {error.get('code')}: {error.get('message')}")
        if error.get("hint"):
            lines.append(f"{'hint':<10} {error['hint']}")
    console.print("\n".join(escape(line) for line in lines), soft_wrap=True)


@app.command("list")
@handle_errors
def list_(
    kind: Optional[str] = typer.Option(None, "--kind", "-k", help="Only jobs of this kind (video, image, ...)."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=100, help="How many, newest first."),
    after: Optional[str] = typer.Option(None, "--after", help="The page after this job id."),
    json_out: bool = JSON,
    user: Optional[str] = USER,
) -> None:
    """Your jobs, newest first.

    Example: tiqo jobs list --kind video --json
    """
    with client() as c:
        page = c.jobs(kind=kind, limit=limit, after=after, user=user)
    if json_out:
        print_json(page)
        return
    if not page["data"]:
        console.print("[dim]no jobs (video and image generation make them)[/]")
        return
    _table(page["data"])
    if page.get("has_more"):
        console.print(f"[dim]more: tiqo jobs list --after {escape(page['data'][-1]['id'])}[/]")


@app.command("show")
@handle_errors
def show(job_id: str = JOB_ID, json_out: bool = JSON, user: Optional[str] = USER) -> None:
    """One job: status, progress, parameters, metadata, result files or error.

    Example: tiqo jobs show job_0123… --json
    """
    with client() as c:
        job = c.job(job_id, user=user)
    print_json(job) if json_out else _show(job)


@app.command("wait")
@handle_errors
def wait(
    job_id: str = JOB_ID,
    timeout: Optional[float] = typer.Option(None, "--timeout", "-t", min=0, help="Give up after this many seconds."),
    json_out: bool = JSON,
    user: Optional[str] = USER,
) -> None:
    """Wait for a job to finish, with a progress bar on stderr; exits non-zero when it failed or was cancelled.

    Example: tiqo jobs wait job_0123… && tiqo jobs show job_0123…
    """
    with client() as c:
        job = follow(c, job_id, user=user, timeout=timeout)
    if json_out:
        print_json(job)
    elif job["status"] == "completed":
        files = (job.get("result") or {}).get("files") or {}
        names = ", ".join(str(v) for v in (files.values() if isinstance(files, dict) else files))
        console.print(f"{escape(job_id)} completed" + (f": {escape(names)}" if names else ""))
    fail_unless_completed(job, timeout)


def follow(c: Any, job_id: str, *, user: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Long-poll the job until it finishes (or ``timeout``), with a progress bar on stderr when it is a terminal."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    deadline = None if timeout is None else time.monotonic() + timeout
    job: dict[str, Any] = c.job(job_id, user=user)
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(job["kind"], total=100)
        while job["status"] not in FINISHED:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            stage = f" · {job['stage']}" if job.get("stage") else ""
            bar.update(task, completed=job["progress"], description=escape(f"{job['kind']} {job['status']}{stage}"))
            job = c.job_wait(job_id, timeout=POLL_S if left is None else min(POLL_S, left), user=user)
    return job


def fail_unless_completed(job: dict[str, Any], timeout: float | None = None) -> None:
    """Exit 1 (with the job's error and hint) when it failed or was cancelled, 124 when it is still running."""
    job_id = job["id"]
    if job["status"] == "failed":
        error = job.get("error") or {}
        fail(f"job {job_id} failed: {error.get('message', 'no reason given')}", error.get("hint"), EXIT_ERROR)
    if job["status"] == "cancelled":
        fail(f"job {job_id} was cancelled", "submit it again to start over", EXIT_ERROR)
    if job["status"] not in FINISHED:
        fail(
            f"job {job_id} is still {job['status']} ({job['progress']}%) after {timeout or 0:g}s",
            f"wait longer with `tiqo jobs wait {job_id}`",
            EXIT_TIMEOUT,
        )


@app.command("cancel")
@handle_errors
def cancel(job_id: str = JOB_ID, json_out: bool = JSON, user: Optional[str] = USER) -> None:
    """Stop a job at its next step (a waiting one at once); its files stay until `tiqo jobs rm`.

    Example: tiqo jobs cancel job_0123…
    """
    with client() as c:
        job = c.job_cancel(job_id, user=user)
    if json_out:
        print_json(job)
    elif job["status"] == "cancelled":
        console.print(f"cancelled {escape(job_id)}")
    elif job["status"] in FINISHED:
        console.print(f"{escape(job_id)} had already finished ({escape(job['status'])})")
    else:
        console.print(f"{escape(job_id)} stops at its next step")


@app.command("rm")
@handle_errors
def rm(job_id: str = JOB_ID, json_out: bool = JSON, user: Optional[str] = USER) -> None:
    """Remove a job and its files (cancelling it first if it runs).

    Example: tiqo jobs rm job_0123…
    """
    with client() as c:
        job = c.job_remove(job_id, user=user)
    if json_out:
        print_json(job)
    else:
        console.print(f"removed {escape(job_id)}")
