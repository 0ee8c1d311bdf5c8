"""The composition root: the one place that picks concrete classes and wires the daemon together."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tiqo import API_VERSION, __version__
from tiqo.core.errors import TiqoError
from tiqo.core.paths import acquire_lock
from tiqo.core.settings import Settings
from tiqo.daemon.accounting.budgets import Budgets
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.accounting.ledger import Counters, Ledger, UsageSums
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.http import server as server_setup
from tiqo.daemon.http.dependencies import Services
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


class LocalGeneration:
    """The pipeline's ``LocalCompute``: the services run local models through it, never through the root."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

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


@dataclass
class StateBackend:
    """Where shared state lives: the SQLite store (the default) or Redis (``state.backend = redis``)."""

    shared: SharedState
    jobs: JobsStore
    counters: Counters | None = None  # None: the ledger's own SQLite counters
    sums: UsageSums | None = None


def _state_backend(settings: Settings, store: Store, events: EventBus) -> StateBackend:
    if settings["state.backend"] != "redis":
        return StateBackend(SharedState(), SqliteJobsStore(store))
    # redis-py is imported only for this backend
    from tiqo.daemon.state.redis_counters import RedisCounters
    from tiqo.daemon.state.redis_jobs import RedisJobsStore
    from tiqo.daemon.state.redis_shared import RedisState
    from tiqo.daemon.state.redis_usage import RedisUsage

    warn = lambda piece, message: events.publish("state", {"piece": piece, "message": message})  # noqa: E731
    counters = RedisCounters(settings["state.redis_url"], prefix=settings["state.redis_prefix"])
    identity = daemon_identity(settings.paths.state_dir)
    jobs = RedisJobsStore(counters, SqliteJobsStore(store), identity, keep_s=settings["jobs.keep"])
    return StateBackend(RedisState(counters, warn).pieces(store), jobs, counters, RedisUsage(counters))


def _plugins(
    engines: dict[str, Engine] | None, provider_kinds: dict[str, ProviderKind] | None
) -> tuple[dict[str, Engine], dict[str, ProviderKind], PluginReport]:
    """The engines and provider kinds the caller gave, else the plugins' (built-in ones included)."""
    if engines is not None and provider_kinds is not None:
        return engines, provider_kinds, PluginReport()
    pm, report = load_plugins()
    if engines is None:
        engines = collect_engines(pm, report)
    if provider_kinds is None:
        provider_kinds = collect_providers(pm, report)
    return engines, provider_kinds, report


def _ledger(settings: Settings, store: Store, state: StateBackend) -> Ledger:
    kept = Ledger(store, counters=state.counters, timezone=settings["budget.timezone"], sums=state.sums)
    reconciled = kept.reconcile()
    if reconciled:
        log.warning("settled %d external call(s) a previous run left in flight, at their reserved cost", reconciled)
    return kept


def _metrics(settings: Settings) -> Metrics | None:
    if not settings["metrics.enabled"]:
        return None
    return Metrics(user_labels=settings["metrics.user_labels"], max_label_values=settings["metrics.max_label_values"])


def _scheduler(settings: Settings, engines: dict[str, Engine], registry: Registry, events: EventBus) -> Scheduler:
    return Scheduler(
        engines,
        memory_budget=memory_budget(settings),
        max_loaded_models=settings["scheduler.max_loaded_models"],
        max_queue=settings["scheduler.max_queue"],
        default_keep_alive=settings["scheduler.keep_alive"],
        options_for=registry.options_for,
        prepare=registry.prepare,
        on_event=events.publish_named,  # model loading / loaded / unloaded, for the dashboard
    )


def _jobs(settings: Settings, store: JobsStore, events: EventBus) -> Jobs:
    return Jobs(
        store,
        events,
        settings.paths.state_dir / "jobs",
        keep_s=settings["jobs.keep"],
        max_active=settings["jobs.max_active"],
        max_queued=settings["jobs.max_queued"],
    )


class Daemon:
    """Everything a request handler needs, built once at start-up, in the order of the layers: state, accounting
    and providers, local compute, then the services the routes call (``services``)."""

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
        self.engines, provider_kinds, self.plugins = _plugins(engines, provider_kinds)
        self.registry = registry or Registry(settings, self.engines)
        self.store = Store(settings.paths.db_file)
        self.events = EventBus()
        state = _state_backend(settings, self.store, self.events)
        self.shared = shared = state.shared
        self.hub = ProviderHub(
            settings,
            self.store,
            provider_kinds,
            key_states=shared.keys if shared.shared else None,
            breakers=shared.breakers if shared.shared else None,
        )
        self.ledger = _ledger(settings, self.store, state)
        self.budgets = Budgets(settings, self.ledger, self.events, shared.alerts if shared.shared else None)
        self.hub.watch(self.events.publish, self.budgets.alert)  # breakers opening, keys failing: events + alerts
        self.metrics = _metrics(settings)
        self.scheduler = _scheduler(settings, self.engines, self.registry, self.events)
        self.local = LocalGeneration(self.scheduler)
        self.jobs = _jobs(settings, state.jobs, self.events)
        self.request_shutdown: Callable[[], None] = lambda: None
        self.services = self._services()
        if self.metrics is not None:
            live = LiveState(
                self.hub, self.scheduler, self.budgets, self.events, user_labels=settings["metrics.user_labels"]
            )
            self.metrics.register(live)

    def _services(self) -> Services:
        """The services, built on the pieces above, and what the routes reach them by."""
        settings, local = self.settings, self.local
        gateway = Gateway(
            settings,
            self.registry,
            self.hub,
            self.store,
            local,
            self.ledger,
            self.budgets,
            self.events,
            metrics=self.metrics,
            shared=self.shared,
        )
        voice, embeddings = Voice(gateway, local), Embeddings(gateway, local)
        gateway.cache.embeddings = embeddings  # the semantic cache embeds questions with it
        vectors = VectorStore(settings.paths.state_dir / "vectors", self.store, embeddings, settings)
        images = Images(gateway, local, self.jobs)
        return Services(
            settings=settings,
            registry=self.registry,
            hub=self.hub,
            store=self.store,
            ledger=self.ledger,
            budgets=self.budgets,
            events=self.events,
            metrics=self.metrics,
            scheduler=self.scheduler,
            local=local,
            jobs=self.jobs,
            gateway=gateway,
            voice=voice,
            embeddings=embeddings,
            vectors=vectors,
            images=images,
            videos=Videos(gateway, local, self.jobs, images.first_frame, voice.local_wav),
            backup=Backup(settings.paths, self.store, vectors.root, flush=self.hub.flush),
            plugins=self.plugins,
            engines=sorted(self.engines),
            started_at=self.started_at,
            health=self.health,
            shutdown=lambda: self.request_shutdown(),  # serve() sets it once the server exists
            close=self.close,
        )

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

    async def close(self) -> None:
        await self.jobs.close()  # first: running jobs hold model slots
        await self.services.gateway.close()
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
        server = uvicorn.Server(server_setup.uvicorn_config(create_app(daemon.services), settings))
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
