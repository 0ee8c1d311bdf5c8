"""tiqo's routes for jobs, its long work (``/tiqo/jobs``): list, show, wait for, cancel and remove a job, and fetch
its files. Every route acts for the caller's user (``request_meta``): another user's job is a 404, like a job that
never existed. Jobs are submitted by the routes of what they make (videos, images)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import FileResponse

from tiqo.daemon.http.dependencies import request_meta, services_of
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import errors
from tiqo.daemon.runtime.jobs import MAX_LIMIT, Jobs
from tiqo.protocol.jobs import MAX_WAIT_S, JobList, JobObject

router = api_router(prefix="/tiqo/jobs")


def _jobs(request: Request) -> Jobs:
    return services_of(request).jobs


def _user(request: Request) -> str:
    return request_meta(request).user


@router.get("", response_model=JobList, responses=errors(404))
async def list_jobs(
    request: Request,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    """Your jobs, newest first; ``after`` (the last id of a page) gives the next page."""
    jobs, user = _jobs(request), _user(request)
    page = jobs.list(user, kind=kind, limit=limit, after=after)
    more = len(page) == limit and bool(jobs.list(user, kind=kind, limit=1, after=page[-1].id))
    return {"data": [j.as_dict() for j in page], "has_more": more}


@router.get("/{job_id}", response_model=JobObject, responses=errors(404))
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _jobs(request).get(job_id, _user(request)).as_dict()


@router.get("/{job_id}/wait", response_model=JobObject, responses=errors(404))
async def wait_job(
    job_id: str, request: Request, timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 30.0
) -> dict[str, Any]:
    """The job once it has finished, or as it is after ``timeout`` seconds (long-polling; at most 60)."""
    return (await _jobs(request).wait(job_id, _user(request), timeout)).as_dict()


@router.post("/{job_id}/cancel", response_model=JobObject, responses=errors(404))
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Stop the job at its next step (a waiting one at once); a finished job is left as it is."""
    return (await _jobs(request).cancel(job_id, _user(request))).as_dict()


@router.delete("/{job_id}", response_model=JobObject, responses=errors(404))
async def remove_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel the job if it runs, then delete it and its files; the job as it last was."""
    return (await _jobs(request).remove(job_id, _user(request))).as_dict()


@router.get("/{job_id}/files/{name}", response_class=FileResponse, responses=errors(400, 404))
async def job_file(job_id: str, name: str, request: Request) -> FileResponse:
    """A file the job made (its ``result.files`` name them)."""
    return FileResponse(_jobs(request).file(job_id, _user(request), name))
