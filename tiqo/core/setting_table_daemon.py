"""The daemon, its scheduler of local models and its jobs: rows of the settings table (``setting_table``)."""

from __future__ import annotations

from tiqo.core.durations import parse_duration, parse_size
from tiqo.core.setting_kinds import (
    Setting,
    auto_size,
    boolean,
    choice,
    integer,
    non_negative_int,
    positive_duration,
    positive_int,
    text,
)

DAEMON: tuple[Setting, ...] = (
    Setting(
        "daemon.socket",
        "",
        text,
        "Unix socket path; empty = <runtime dir>/tiqo.sock. A folder others can write (the temp dir) is refused",
        "path",
    ),
    Setting(
        "daemon.autostart", True, boolean, "Start the daemon on first use (TIQO_NO_AUTOSTART=1 turns it off)", "bool"
    ),
    Setting(
        "daemon.startup_timeout", "60s", parse_duration, "How long the CLI waits for a starting daemon", "duration"
    ),
    Setting("daemon.log_level", "info", choice("debug", "info", "warning", "error"), "Daemon log level", "choice"),
    Setting(
        "daemon.listen",
        "",
        text,
        "Also serve the /v1 routes over TCP at HOST:PORT, with bearer tokens (`tiqo users token`), and /metrics to "
        "scrape tokens (`tiqo users token NAME --scrape`); empty = off",
        "str",
    ),
    Setting(
        "daemon.listen_tier",
        "free",
        text,
        "Tier of TCP callers whose [users.NAME] names none (free: local models only; not routing.tier)",
        "str",
    ),
    Setting(
        "daemon.listen_max_connections",
        128,
        positive_int,
        "Most TCP connections served at once; more get 503 (the Unix socket is not counted)",
        "int",
    ),
    Setting("daemon.max_request_size", "16MiB", parse_size, "Largest request body; bigger ones get 413", "size"),
    Setting(
        "daemon.send_timeout",
        "60s",
        positive_duration,
        "Longest a client may leave an answer unread; then the daemon drops the connection and frees the model",
        "duration",
    ),
    Setting(
        "daemon.max_json_values",
        50_000,
        positive_int,
        "Most values (objects, arrays, items) in a JSON body; more get 413 before the body is parsed",
        "int",
    ),
    Setting(
        "scheduler.keep_alive",
        "5m",
        parse_duration,
        "Idle time before a model unloads (0 = at once, -1 = never)",
        "duration",
    ),
    Setting("scheduler.max_loaded_models", 3, integer, "Most models loaded at once (0 = only memory decides)", "int"),
    Setting("scheduler.max_queue", 64, integer, "Requests that may wait per daemon; more get 503 + Retry-After", "int"),
    Setting("scheduler.memory_budget", "auto", auto_size, "Memory for loaded models; auto = 75% of RAM", "size|auto"),
    Setting(
        "scheduler.num_parallel",
        1,
        integer,
        "Requests one loaded model serves at once (each slot is a model instance)",
        "int",
    ),
    Setting(
        "jobs.keep",
        "7d",
        positive_duration,
        "How long finished jobs (video, images) and their files are kept before they are removed",
        "duration",
        env_var="TIQO_JOBS_KEEP",
    ),
    Setting(
        "jobs.max_active",
        1,
        positive_int,
        "Jobs that run at once; the others wait in order",
        "int",
        env_var="TIQO_JOBS_MAX_ACTIVE",
    ),
    Setting(
        "jobs.max_queued",
        16,
        non_negative_int,
        "Jobs that may wait to start; more get 503 + Retry-After",
        "int",
        env_var="TIQO_JOBS_MAX_QUEUED",
    ),
)
