"""``python -m tests.jobs_daemon``: the real daemon (``tiqo.daemon.root.main``) with one extra route for the tests of
jobs, ``POST /test/jobs``, that submits a job whose steps sleep in a worker thread. It lives here, not in tiqo: no
job kind of the product exists yet, and a test kind must never reach users."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from tiqo.daemon import root
from tiqo.daemon.http import app as app_module
from tiqo.daemon.http.dependencies import Services, request_meta, services_of
from tiqo.daemon.runtime.jobs import JobHandle

router = APIRouter()


@router.post("/test/jobs")
async def submit(request: Request) -> dict[str, Any]:
    body = await request.json()
    steps, step_s = int(body.get("steps", 5)), float(body.get("step_s", 0.05))
    fail = body.get("fail")
    kind = str(body.get("kind", "test"))  # "video": the /v1/videos routes read it (tests of several daemons)

    async def work(job: JobHandle) -> dict[str, Any]:
        job.note(model="test-steps", device="cpu")

        def run() -> dict[str, Any]:
            job.progress(0, steps, "loading")
            for i in range(steps):
                job.check()
                time.sleep(step_s)
                if fail is not None and i == int(fail):
                    raise RuntimeError(f"step {i} exploded")
                job.progress(i + 1, steps, "stepping")
            (job.dir / "out.txt").write_text(f"{steps} steps\n")
            return {"files": {"text": "out.txt"}, "steps": steps}

        return await asyncio.to_thread(run)

    job = await services_of(request).jobs.submit(kind, request_meta(request).user, {"steps": steps}, work)
    result: dict[str, Any] = job.as_dict()
    return result


def main() -> None:
    create_app = app_module.create_app

    def with_test_routes(services: Services) -> FastAPI:
        app = create_app(services)
        app.include_router(router)
        return app

    app_module.create_app = with_test_routes  # serve() imports it when it runs
    root.main()


if __name__ == "__main__":
    main()
