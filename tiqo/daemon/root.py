"""The composition root: the one place that picks concrete classes and wires the daemon together."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

from tiqo import API_VERSION, __version__
from tiqo.core.errors import TiqoError
from tiqo.core.paths import acquire_lock
from tiqo.core.settings import Settings
from tiqo.daemon.accounting.budgets import Budgets
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.accounting.ledger import Ledger, UsageSums
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.http import server as server_setup
from tiqo.daemon.knowledge.vectors import VectorStore
from tiqo.daemon.runtime.jobs import Jobs
from tiqo.daemon.runtime.plugins import PluginReport, collect_engines, collect_providers, load_plugins
from tiqo.daemon.runtime.scheduler import Scheduler
from tiqo.daemon.runtime.streaming import iterate_in_thread
from tiqo.daemon.services.backup import Backup
from tiqo.daemon.services.embeddings import Embeddings
from tiqo.daemon.services.gateway import Gateway
from tiqo.daemon.services.images import Images
from tiqo.daemon.services.videos import Videos
from tiqo.daemon.services.voice import Voice
from tiqo.daemon.state.jobs_store import JobsStore, SqliteJobsStore, daemon_identity
from tiqo.daemon.state.shared import SharedState
from tiqo.daemon.state.store import Store
from tiqo.daemon.telemetry.gauges import LiveState
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.sdk.engine import Engine, ModelSpec, StopFlag
from tiqo.sdk.provider import ProviderKind

log = logging.getLogger("tiqo.daemon")


def memory_budget(settings: Settings) -> int:
    configured = settings["scheduler.memory_budget"]
    if configured is not None:
        return int(configured)
    import psutil

    return int(psutil.virtual_memory().total * 0.75)


T = TypeVar("T")


class Daemon:
    """Everything a request handler needs, built once at start-up."""

    def __init__(
        self,
        settings: Settings,
        *,
        engines: dict[str, Engine] | None = None,
        registry: Registry | None = None,
        socket_path: str | None = None,
        provider_kinds: dict[str, ProviderKind] | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.socket_path = socket_path or str(settings.socket_path)
        self.plugins = PluginReport()
        if engines is None or provider_kinds is None:
            pm, self.plugins = load_plugins()
            if engines is None:
                engines = collect_engines(pm, self.plugins)
            if provider_kinds is None:
                provider_kinds = collect_providers(pm, self.plugins)
        self.engines = engines
        self.registry = registry or Registry(settings, engines)
        self.store = Store(settings.paths.db_file)
        self.events = EventBus()
        counters, shared = None, SharedState()
        sums: UsageSums | None = None
        jobs_store: JobsStore = SqliteJobsStore(self.store)
        warn = lambda piece, message: self.events.publish("state", {"piece": piece, "message": message})  # noqa: E731
        if settings["state.backend"] == "redis":  # redis-py is imported only for this backend
            from tiqo.daemon.state.redis_counters import RedisCounters
            from tiqo.daemon.state.redis_jobs import RedisJobsStore
            from tiqo.daemon.state.redis_shared import RedisState
            from tiqo.daemon.state.redis_usage import RedisUsage

            counters = RedisCounters(settings["state.redis_url"], prefix=settings["state.redis_prefix"])
            shared = RedisState(counters, warn).pieces(self.store)
            sums = RedisUsage(counters)
            jobs_store = RedisJobsStore(
                counters, jobs_store, daemon_identity(settings.paths.state_dir), keep_s=settings["jobs.keep"]
            )
        self.shared = shared
        self.hub = ProviderHub(
            settings,
            self.store,
            provider_kinds,
            key_states=shared.keys if shared.shared else None,
            breakers=shared.breakers if shared.shared else None,
        )
        self.ledger = Ledger(self.store, counters=counters, timezone=settings["budget.timezone"], sums=sums)
        reconciled = self.ledger.reconcile()
        if reconciled:
            log.warning("settled %d external call(s) a previous run left in flight, at their reserved cost", reconciled)
        self.budgets = Budgets(settings, self.ledger, self.events, shared.alerts if shared.shared else None)
        self.hub.watch(self.events.publish, self.budgets.alert)  # breakers opening, keys failing: events + alerts
        self.metrics = (
            Metrics(user_labels=settings["metrics.user_labels"], max_label_values=settings["metrics.max_label_values"])
            if settings["metrics.enabled"]
            else None
        )
        self.gateway = Gateway(
            settings,
            self.registry,
            self.hub,
            self.store,
            self,
            self.ledger,
            self.budgets,
            self.events,
            self.metrics,
            shared,
        )
        self.voice = Voice(self.gateway, self)
        self.embeddings = Embeddings(self.gateway, self)
        self.gateway.cache.embeddings = self.embeddings  # the semantic cache embeds questions with it
        self.vectors = VectorStore(settings.paths.state_dir / "vectors", self.store, self.embeddings, settings)
        self.backup = Backup(settings.paths, self.store, self.vectors.root, flush=self.hub.flush)
        self.scheduler = Scheduler(
            engines,
            memory_budget=memory_budget(settings),
            max_loaded_models=settings["scheduler.max_loaded_models"],
            max_queue=settings["scheduler.max_queue"],
            default_keep_alive=settings["scheduler.keep_alive"],
            options_for=self.registry.options_for,
            prepare=self.registry.prepare,
            on_event=self.events.publish_named,  # model loading / loaded / unloaded, for the dashboard
        )
        self.jobs = Jobs(
            jobs_store,
            self.events,
            settings.paths.state_dir / "jobs",
            keep_s=settings["jobs.keep"],
            max_active=settings["jobs.max_active"],
            max_queued=settings["jobs.max_queued"],
        )
        self.images = Images(self.gateway, self, self.jobs)
        self.videos = Videos(self.gateway, self, self.jobs, self.images.first_frame, self.voice.local_wav)
        if self.metrics is not None:
            live = LiveState(
                self.hub, self.scheduler, self.budgets, self.events, user_labels=settings["metrics.user_labels"]
            )
            self.metrics.register(live)
        self.request_shutdown: Callable[[], None] = lambda: None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "api_version": API_VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "started_at": self.started_at,
            "socket": self.socket_path,
        }

    async def generate(
        self,
        spec: ModelSpec,
        keep_alive: float | None,
        call: Callable[[Any, StopFlag], Iterator[T]],
    ) -> AsyncGenerator[T, None]:
        """Hold a slot of ``spec`` for the whole generation and stream its pieces."""
        stop = StopFlag()
        async with self.scheduler.acquire(spec, keep_alive) as slot:
            async for piece in iterate_in_thread(slot.executor, lambda: call(slot.runner, stop), stop):
                yield piece

    async def close(self) -> None:
        await self.jobs.close()  # first: running jobs hold model slots
        await self.gateway.close()
        await self.budgets.close()
        await self.scheduler.close()
        self.hub.flush()
        self.store.close()


def serve(settings: Settings) -> int:
    """Build the daemon and serve it on its socket (and ``daemon.listen``) until SIGTERM/SIGINT or a shutdown."""
    import uvicorn

    from tiqo.daemon.http.app import create_app

    paths = settings.paths
    refused = server_setup.prepare_home(paths)
    if refused is not None:
        return refused
    lock = acquire_lock(paths.lock_file)
    if lock is None:
        print(f"tiqo: a daemon is already running for {paths.runtime_dir} (see `tiqo daemon status`)", file=sys.stderr)
        return server_setup.EXIT_ALREADY_RUNNING
    socket_path = settings.socket_path
    bound = False
    try:
        sockets = [server_setup.bind_socket(socket_path)]
        bound = True
        daemon = Daemon(settings, socket_path=str(socket_path))
        server = uvicorn.Server(server_setup.uvicorn_config(create_app(daemon), settings))
        sockets += server_setup.tcp_sockets(settings)
        daemon.request_shutdown = lambda: setattr(server, "should_exit", True)
        server_setup.write_status(settings, socket_path)
        log.info("tiqo %s serving on %s (pid %d)", __version__, socket_path, os.getpid())
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then restores the previous handlers and re-raises the
        # signal: with the default handlers that kills the process before the clean-up below runs.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _exit_cleanly)
        with contextlib.suppress(SystemExit):
            server.run(sockets=sockets)
        log.info("stopped")
        return 0
    except TiqoError as exc:
        return server_setup.fail(exc)
    finally:
        server_setup.clean_up(paths, socket_path, bound)
        lock.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    """``python -m tiqo.daemon``."""
    sys.exit(serve(server_setup.load_settings()))
