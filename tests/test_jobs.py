"""Jobs, tiqo's mechanism for long work: ``Jobs`` driven directly (real SQLite, real threads for the steps), then a
real daemon process on its Unix socket, the CLI and the dashboard tab.

No job kind exists in the product yet, so the end-to-end tests start the daemon through ``tests/jobs_daemon.py``:
the real ``python -m tiqo.daemon`` start-up with one extra route, ``POST /test/jobs``, that submits a job whose steps
sleep in a worker thread. The route exists only in that test launcher, never in tiqo itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, DaemonProc, home_env, short_home, wait_for
from tiqo.core.errors import Busy, Cancelled, NotFound, TiqoError
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.runtime.jobs import JobHandle, Jobs
from tiqo.daemon.state.store import Store


def stepper(steps: int, step_s: float, fail_at: int | None = None, error: Exception | None = None) -> Any:
    """A work function like an engine's: each step runs in a worker thread, checks the stop flag, reports progress,
    and the last one writes a result file."""

    async def work(job: JobHandle) -> dict[str, Any]:
        job.note(model="test-model", device="cpu")

        def run() -> dict[str, Any]:
            job.progress(0, steps, "loading")
            for i in range(steps):
                job.check()
                time.sleep(step_s)
                if fail_at is not None and i == fail_at:
                    raise error or RuntimeError("step exploded")
                job.progress(i + 1, steps, "denoising")
            (job.dir / "out.txt").write_text(f"{steps} steps\n")
            return {"files": {"text": "out.txt"}, "steps": steps}

        return await asyncio.to_thread(run)

    return work


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_home()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_jobs(home: Path, bus: EventBus | None = None, **kw: Any) -> tuple[Jobs, Store]:
    store = Store(home / "tiqo.db")
    options: dict[str, Any] = {"keep_s": 3600.0, "max_active": 1, "max_queued": 4, **kw}
    return Jobs(store, bus or EventBus(), home / "jobs", **options), store


def test_a_job_runs_reports_rising_progress_and_keeps_its_result(home: Path) -> None:
    async def main() -> None:
        bus = EventBus()
        jobs, _ = make_jobs(home, bus)
        seen: list[dict[str, Any]] = []

        async def watch() -> None:
            async for event in bus.subscribe(kinds={"job"}):
                seen.append(event.data)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        job = await jobs.submit("test", "alice", {"prompt": "a cat"}, stepper(5, 0.05))
        assert job.status == "in_progress" and job.id.startswith("job_")
        assert (home / "jobs" / job.id).stat().st_mode & 0o777 == 0o700
        done = await jobs.wait(job.id, "alice", 30)
        await asyncio.sleep(0.05)
        watcher.cancel()
        assert done.status == "completed" and done.progress == 100 and done.step == done.total == 5
        assert done.result == {"files": {"text": "out.txt"}, "steps": 5}
        assert done.meta == {"model": "test-model", "device": "cpu"}
        assert done.params == {"prompt": "a cat"} and done.error is None
        assert done.expires_at == pytest.approx(done.finished_at + 3600)
        assert jobs.file(job.id, "alice", "out.txt").read_text() == "5 steps\n"
        progress = [e["progress"] for e in seen if e["status"] == "in_progress"]
        assert progress == sorted(progress) and len(set(progress)) >= 2
        assert seen[-1]["status"] == "completed" and all(e["user"] == "alice" for e in seen)
        assert set(seen[-1]) >= {"id", "user", "kind", "status", "progress", "step", "total", "eta_s", "stage"}
        assert any(e["eta_s"] is not None for e in seen)
        await jobs.close()

    asyncio.run(main())


def test_cancel_stops_within_one_step_and_a_queued_job_at_once(home: Path) -> None:
    async def main() -> None:
        jobs, _ = make_jobs(home)
        running = await jobs.submit("test", "alice", {}, stepper(200, 0.05))
        waiting = await jobs.submit("test", "alice", {}, stepper(3, 0.01))
        assert waiting.status == "queued"
        assert (await jobs.cancel(waiting.id, "alice")).status == "cancelled"
        await asyncio.sleep(0.3)
        before = jobs.get(running.id, "alice").step
        cancelled = await jobs.cancel(running.id, "alice")
        assert cancelled.status == "cancelled" and cancelled.result is None
        assert cancelled.step <= before + 2  # the step under way, then it stopped
        assert jobs.counts == {"active": 0, "queued": 0}
        after = await jobs.submit("test", "alice", {}, stepper(2, 0.01))  # the slot is free again
        assert (await jobs.wait(after.id, "alice", 30)).status == "completed"
        await jobs.close()

    asyncio.run(main())


def test_another_user_sees_nothing_of_a_job(home: Path) -> None:
    async def main() -> None:
        jobs, _ = make_jobs(home)
        job = await jobs.submit("test", "alice", {}, stepper(2, 0.01))
        await jobs.wait(job.id, "alice", 30)
        for call in (
            lambda: jobs.get(job.id, "bob"),
            lambda: jobs.file(job.id, "bob", "out.txt"),
            lambda: jobs.list("bob", after=job.id),
        ):
            with pytest.raises(NotFound):
                call()
        for coro in (jobs.cancel(job.id, "bob"), jobs.remove(job.id, "bob"), jobs.wait(job.id, "bob", 1)):
            with pytest.raises(NotFound):
                await coro
        assert jobs.list("bob") == []
        assert [j.id for j in jobs.list("alice")] == [job.id] == [j.id for j in jobs.list(None)]
        assert jobs.get(job.id, None).user == "alice"  # None: the daemon itself (admin) sees all
        await jobs.close()

    asyncio.run(main())


def test_outcomes_failed_with_the_message_and_internal_errors(home: Path) -> None:
    async def main() -> None:
        jobs, _ = make_jobs(home, max_queued=8)
        plain = await jobs.submit("test", "u", {}, stepper(3, 0.01, fail_at=1))
        tiqo = await jobs.submit("test", "u", {}, stepper(3, 0.01, fail_at=0, error=TiqoError("no GPU", code="x")))

        async def cancels(job: JobHandle) -> dict[str, Any]:
            raise Cancelled("stopped")

        async def not_json(job: JobHandle) -> dict[str, Any]:
            return {"x": object()}

        c = await jobs.submit("test", "u", {}, cancels)
        j = await jobs.submit("test", "u", {}, not_json)
        p, t, c2, j2 = [await jobs.wait(x.id, "u", 30) for x in (plain, tiqo, c, j)]
        assert p.status == "failed" and p.error is not None
        assert p.error["code"] == "internal_error" and "step exploded" in p.error["message"]
        assert (
            t.status == "failed" and t.error is not None and t.error["code"] == "x" and t.error["message"] == "no GPU"
        )
        assert c2.status == "cancelled"
        assert j2.status == "failed" and j2.error is not None and j2.error["code"] == "internal_error"
        await jobs.close()

    asyncio.run(main())


def test_a_full_queue_is_busy_with_a_retry_after(home: Path) -> None:
    async def main() -> None:
        jobs, _ = make_jobs(home, max_active=1, max_queued=2)
        for _ in range(3):
            await jobs.submit("test", "u", {}, stepper(100, 0.02))
        with pytest.raises(Busy) as refused:
            await jobs.submit("test", "u", {}, stepper(1, 0.01))
        assert refused.value.status == 503 and refused.value.retry_after is not None and refused.value.hint
        await jobs.close()

    asyncio.run(main())


def test_a_restart_marks_unfinished_jobs_interrupted_and_close_too(home: Path) -> None:
    async def main() -> tuple[str, str]:
        jobs, store = make_jobs(home)
        a = await jobs.submit("test", "u", {}, stepper(100, 0.02))
        b = await jobs.submit("test", "u", {}, stepper(100, 0.02))
        store.close()  # the daemon "dies": no close(), rows stay in_progress / queued
        return a.id, b.id

    a, b = asyncio.run(main())
    jobs, store = make_jobs(home)
    for job_id in (a, b):
        job = jobs.get(job_id, "u")
        assert job.status == "failed" and job.error is not None and job.error["code"] == "interrupted"
        assert "submit it again" in job.error["message"] and job.finished_at is not None

    async def closing() -> None:
        job = await jobs.submit("test", "u", {}, stepper(1000, 0.02))
        queued = await jobs.submit("test", "u", {}, stepper(1, 0.01))
        await jobs.close()
        for j in (job, queued):
            assert jobs.get(j.id, "u").status == "failed"
            assert jobs.get(j.id, "u").error == {**(jobs.get(j.id, "u").error or {}), "code": "interrupted"}

    asyncio.run(closing())
    store.close()


def test_expiry_and_remove_delete_rows_and_files(home: Path) -> None:
    now = [1000.0]
    jobs, store = make_jobs(home, keep_s=60.0, clock=lambda: now[0])

    async def main() -> tuple[str, str]:
        old = await jobs.submit("test", "u", {}, stepper(1, 0.01))
        await jobs.wait(old.id, "u", 30)
        gone = await jobs.submit("test", "u", {}, stepper(1, 0.01))
        await jobs.wait(gone.id, "u", 30)
        assert (home / "jobs" / gone.id / "out.txt").exists()
        removed = await jobs.remove(gone.id, "u")
        assert removed.id == gone.id and not (home / "jobs" / gone.id).exists()
        with pytest.raises(NotFound):
            jobs.get(gone.id, "u")
        await jobs.close()
        return old.id, gone.id

    old, _ = asyncio.run(main())
    assert (home / "jobs" / old / "out.txt").exists()
    now[0] += 61
    (home / "jobs" / ("job_" + "0" * 32)).mkdir()  # a folder a cut-short removal left behind
    store.close()
    jobs, store = make_jobs(home, keep_s=60.0, clock=lambda: now[0])  # start-up sweeps
    with pytest.raises(NotFound):
        jobs.get(old, "u")
    assert list((home / "jobs").iterdir()) == []
    store.close()


def test_file_names_cannot_escape_the_job_folder(home: Path) -> None:
    async def main() -> None:
        jobs, _ = make_jobs(home)
        job = await jobs.submit("test", "u", {}, stepper(1, 0.01))
        await jobs.wait(job.id, "u", 30)
        (home / "secret").write_text("no")
        os.symlink(home / "secret", home / "jobs" / job.id / "link.txt")
        for name in ("../secret", "..", ".hidden", "a/b", "", "x" * 300, "out.txt\0"):
            with pytest.raises(TiqoError) as bad:
                jobs.file(job.id, "u", name)
            assert bad.value.status == 400 and bad.value.hint
        with pytest.raises(NotFound):
            jobs.file(job.id, "u", "link.txt")  # a symlink is not a result file
        with pytest.raises(NotFound):
            jobs.file(job.id, "u", "missing.mp4")
        await jobs.close()

    asyncio.run(main())


def test_list_pages_newest_first_and_filters_by_kind(home: Path) -> None:
    async def main() -> None:
        jobs, _ = make_jobs(home, max_queued=16)
        ids = []
        for i in range(5):
            job = await jobs.submit("video" if i % 2 else "image", "u", {}, stepper(1, 0.0))
            ids.append(job.id)
            await jobs.wait(job.id, "u", 30)
        first = jobs.list("u", limit=2)
        assert [j.id for j in first] == ids[::-1][:2]
        rest = jobs.list("u", limit=10, after=first[-1].id)
        assert [j.id for j in rest] == ids[::-1][2:]
        assert [j.id for j in jobs.list("u", kind="video")] == [ids[3], ids[1]]
        with pytest.raises(TiqoError):
            jobs.list("u", limit=0)
        await jobs.close()

    asyncio.run(main())


# ---------------------------------------------------------------- a real daemon on its socket
def start_jobs_daemon(home: Path | None = None, **extra_env: str) -> DaemonProc:
    """Like conftest.start_daemon, through tests/jobs_daemon.py (the real daemon plus ``POST /test/jobs``)."""
    home = home or short_home()
    env = home_env(home, PYTHONPATH=str(ROOT), **extra_env)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with (home / "logs" / "daemon.log").open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.jobs_daemon"], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
        )
    d = DaemonProc(home, env, proc)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{d.log_text()}")
        try:
            return d.socket.exists() and d.client(5).get("/tiqo/health").status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_for(up, timeout=60):
        d.stop()
        raise RuntimeError(f"daemon did not start:\n{d.log_text()}")
    return d


@pytest.fixture
def jobs_daemon() -> Iterator[DaemonProc]:
    d = start_jobs_daemon(TIQO_JOBS_MAX_QUEUED="1")
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


ALICE = {"x-tiqo-user": "alice"}
BOB = {"x-tiqo-user": "bob"}


def submit(http: httpx.Client, steps: int, step_s: float, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    r = http.post("/test/jobs", json={"steps": steps, "step_s": step_s, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def replayed_events(d: DaemonProc, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every ``job`` event the daemon's history holds that this caller may see (replayed from Last-Event-ID 0)."""
    seen: list[dict[str, Any]] = []
    http = d.client(timeout=1.5)
    try:
        with http.stream(
            "GET", "/tiqo/events", params={"kinds": "job"}, headers={**headers, "last-event-id": "0"}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
    except httpx.ReadTimeout:
        pass  # the history is replayed; nothing new comes
    return seen


def test_jobs_over_the_socket_progress_ownership_files_and_a_full_queue(jobs_daemon: DaemonProc) -> None:
    d = jobs_daemon
    http = d.client()
    job = submit(http, 30, 0.05, ALICE)
    seen = [job["progress"]]
    wait_for(
        lambda: seen.append(http.get(f"/tiqo/jobs/{job['id']}", headers=ALICE).json()["progress"]) or seen[-1] > 30
    )
    assert seen == sorted(seen) and seen[-1] > seen[0]
    waiting = submit(http, 1, 0.01, ALICE)  # one may wait (jobs.max_queued = 1) ...
    refused = http.post("/test/jobs", json={"steps": 1}, headers=ALICE)  # ... the next is refused
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "server_busy" and refused.json()["error"]["hint"]
    # another user: every route answers 404, the list is empty
    base = f"/tiqo/jobs/{job['id']}"
    for method, path in (
        ("GET", base),
        ("GET", base + "/wait?timeout=0"),
        ("POST", base + "/cancel"),
        ("DELETE", base),
        ("GET", base + "/files/out.txt"),
    ):
        r = http.request(method, path, headers=BOB)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
    assert http.get("/tiqo/jobs", headers=BOB).json() == {"data": [], "has_more": False}
    done = http.get(base + "/wait", params={"timeout": 60}, headers=ALICE).json()
    assert done["status"] == "completed" and done["result"]["files"] == {"text": "out.txt"}
    assert done["meta"] == {"model": "test-steps", "device": "cpu"}
    got = http.get(base + "/files/out.txt", headers=ALICE)
    assert got.status_code == 200 and got.text == "30 steps\n"
    for name in ("..%2Fdaemon.json", ".hidden", "a%00b"):
        r = http.get(f"{base}/files/{name}", headers=ALICE)
        assert r.status_code in (400, 404) and r.json()["error"].get("hint"), (name, r.text)
    assert http.get(base + "/wait", params={"timeout": 61}, headers=ALICE).status_code == 422  # bounded long-poll
    assert http.get("/tiqo/jobs/job_nope", headers=ALICE).status_code == 404
    listed = http.get("/tiqo/jobs", params={"limit": 1}, headers=ALICE).json()
    assert [j["id"] for j in listed["data"]] == [waiting["id"]] and listed["has_more"]
    http.get(f"/tiqo/jobs/{waiting['id']}/wait", params={"timeout": 60}, headers=ALICE)
    # events: alice's stream carries her job's progress; bob's carries none of it
    mine = replayed_events(d, ALICE)
    assert {e["data"]["id"] for e in mine} == {job["id"], waiting["id"]}
    progress = [e["data"]["progress"] for e in mine if e["data"]["id"] == job["id"]]
    assert progress == sorted(progress) and mine[-1]["data"]["status"] == "completed"
    assert replayed_events(d, BOB) == []
    assert http.delete(base, headers=ALICE).json()["id"] == job["id"]
    assert http.get(base, headers=ALICE).status_code == 404


def test_cancel_over_the_socket_stops_within_a_step_and_a_failure_is_reported(jobs_daemon: DaemonProc) -> None:
    http = jobs_daemon.client()
    job = submit(http, 1000, 0.05, ALICE)
    wait_for(lambda: http.get(f"/tiqo/jobs/{job['id']}", headers=ALICE).json()["step"] >= 3)
    before = http.get(f"/tiqo/jobs/{job['id']}", headers=ALICE).json()["step"]
    cancelled = http.post(f"/tiqo/jobs/{job['id']}/cancel", headers=ALICE).json()
    assert cancelled["status"] == "cancelled" and cancelled["step"] <= before + 3
    failing = submit(http, 5, 0.01, ALICE, fail=2)
    failed = http.get(f"/tiqo/jobs/{failing['id']}/wait", params={"timeout": 60}, headers=ALICE).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal_error"
    assert "step 2 exploded" in failed["error"]["message"]


def test_a_daemon_killed_mid_job_shows_it_interrupted_after_a_restart() -> None:
    d = start_jobs_daemon()
    try:
        job = submit(d.client(), 1000, 0.05, ALICE)
        wait_for(lambda: d.client().get(f"/tiqo/jobs/{job['id']}", headers=ALICE).json()["step"] >= 2)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.stop()
        d = start_jobs_daemon(d.home)
        row = d.client().get(f"/tiqo/jobs/{job['id']}", headers=ALICE).json()
        assert row["status"] == "failed" and row["error"]["code"] == "interrupted"
        assert "submit it again" in row["error"]["message"]
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def test_cli_jobs_commands(jobs_daemon: DaemonProc) -> None:
    d = jobs_daemon
    http = d.client()
    quick = submit(http, 3, 0.02, ALICE)
    waited = d.cli("jobs", "wait", quick["id"], "--json", "-u", "alice")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "completed"
    plain = d.cli("jobs", "wait", quick["id"], "-u", "alice")
    assert plain.returncode == 0 and "completed: out.txt" in plain.stdout
    listed = d.cli("jobs", "list", "-u", "alice", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)["data"]] == [quick["id"]]
    table = d.cli("jobs", "list", "-u", "alice")
    assert quick["id"] in table.stdout and "completed" in table.stdout and "100% 3/3" in table.stdout
    shown = d.cli("jobs", "show", quick["id"], "-u", "alice")
    assert "test-steps" in shown.stdout and "out.txt" in shown.stdout
    assert json.loads(d.cli("jobs", "show", quick["id"], "-u", "alice", "--json").stdout)["id"] == quick["id"]
    foreign = d.cli("jobs", "show", quick["id"], "-u", "bob")
    assert foreign.returncode == 1 and "no job" in foreign.stderr and "tiqo jobs list" in foreign.stderr
    failing = submit(http, 5, 0.01, ALICE, fail=1)
    failed = d.cli("jobs", "wait", failing["id"], "-u", "alice")
    assert failed.returncode == 1 and "step 1 exploded" in failed.stderr
    slow = submit(http, 1000, 0.05, ALICE)
    timed_out = d.cli("jobs", "wait", slow["id"], "-u", "alice", "--timeout", "0.3")
    assert timed_out.returncode == 124 and "still in_progress" in timed_out.stderr
    cancelled = d.cli("jobs", "cancel", slow["id"], "-u", "alice", "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
    assert d.cli("jobs", "wait", slow["id"], "-u", "alice").returncode == 1
    removed = d.cli("jobs", "rm", quick["id"], "-u", "alice")
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert d.cli("jobs", "show", quick["id"], "-u", "alice").returncode == 1


def test_the_dashboard_jobs_tab_shows_live_progress(jobs_daemon: DaemonProc) -> None:
    from tests.test_tui import cells, dash_client, screen_text, until
    from tiqo.tui.app import DashApp
    from tiqo.tui.widgets import JobsTable

    d = jobs_daemon
    http = d.client()
    earlier = submit(http, 2, 0.01, {})  # the dashboard shows the jobs of its user (the OS user, like the CLI)
    http.get(f"/tiqo/jobs/{earlier['id']}/wait", params={"timeout": 60})
    submit(http, 1, 0.01, BOB)  # someone else's: never shown

    async def scenario() -> None:
        app = DashApp(dash_client(d))
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: app.connected, "the first snapshot")
            await pilot.press("7")
            table = app.query_one(JobsTable)
            await until(pilot, lambda: table.row_count == 1, "the earlier job from the snapshot")
            assert cells(table)[0][:3] == [earlier["id"], "test", "completed"]
            job = await asyncio.to_thread(submit, http, 40, 0.05, {})
            seen: list[str] = []

            def progress() -> bool:
                rows = {r[0]: r for r in cells(table)}
                if job["id"] in rows:
                    seen.append(rows[job["id"]][3])
                return bool(seen) and seen[-1].startswith("100%")

            await until(pilot, progress, "the new job's progress from its events")
            percents = [int(p.split("%")[0]) for p in seen]
            assert len(set(percents)) >= 3 and percents == sorted(percents)
            assert table.row_count == 2 and "7 Jobs" in screen_text(app)

    asyncio.run(scenario())
