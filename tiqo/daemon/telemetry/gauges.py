"""Gauges of the daemon's current state, read from the live objects when Prometheus scrapes (nothing is kept on
the request path for them): keys and their cooldowns, circuit breakers, loaded models, the scheduler's queue,
budgets, and the events slow subscribers lost.

Key names label the key series (the configured name, never the secret). A user is a label of the budget gauge only
with ``metrics.user_labels``; without it, the ``users."*"`` limits show the most used user's ratio (subject ``*``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tiqo.daemon.accounting.budgets import Budgets
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.runtime.scheduler import Scheduler
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.policy.budget import EVERY
from tiqo.policy.keys import KEY_STATUSES

BREAKER_STATES = ("closed", "open", "half_open")


@dataclass(eq=False)  # identity, not value: the Prometheus registry keys its collectors by them
class LiveState:
    """A prometheus_client collector over the daemon's live objects (``Metrics.register``: read on the event loop)."""

    hub: ProviderHub
    scheduler: Scheduler
    budgets: Budgets
    events: EventBus
    _: KW_ONLY
    user_labels: bool = False
    clock: Callable[[], float] = time.time

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: collect() reads state that changes

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        yield from self.keys(now)
        yield self.breakers(now)
        yield from self.models()
        yield self.budget_ratios(now)
        yield CounterMetricFamily(
            "tiqo_events_dropped", "Events slow subscribers of /tiqo/events lost", value=self.events.dropped_total
        )
        yield GaugeMetricFamily(
            "tiqo_event_subscribers", "Clients following /tiqo/events", value=self.events.subscribers
        )

    def keys(self, now: float) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "tiqo_key_state",
            "1 for each key's current state (healthy, cooling, exhausted, disabled, circuit-open), else 0",
            labels=["provider", "key", "state"],
        )
        cooldown = GaugeMetricFamily(
            "tiqo_key_cooldown_seconds",
            "Seconds until a key that is not usable now may be used again (0: usable or unknown)",
            labels=["provider", "key"],
        )
        for provider in self.hub.providers.values():
            for name in provider.pool.limits:
                row = provider.pool.describe(name, now)
                for status in KEY_STATUSES:
                    state.add_metric([provider.name, name, status], float(row["status"] == status))
                until = row["until"] if row["status"] != "healthy" else None
                cooldown.add_metric([provider.name, name], max(0.0, until - now) if until else 0.0)
        yield state
        yield cooldown

    def breakers(self, now: float) -> Metric:
        family = GaugeMetricFamily(
            "tiqo_breaker_state",
            "1 for each provider's circuit breaker state (closed, open, half_open), else 0",
            labels=["provider", "state"],
        )
        for provider in self.hub.providers.values():
            current = provider.breaker.state(now)
            for state in BREAKER_STATES:
                family.add_metric([provider.name, state], float(current == state))
        return family

    def models(self) -> Iterator[Metric]:
        families = {
            "loaded": GaugeMetricFamily("tiqo_model_loaded", "1 for each loaded model", labels=["model", "engine"]),
            "memory_bytes": GaugeMetricFamily(
                "tiqo_model_memory_bytes", "Memory a loaded model holds (the scheduler's estimate)", labels=["model"]
            ),
            "in_flight": GaugeMetricFamily(
                "tiqo_model_in_flight", "Requests a loaded model is serving now", labels=["model"]
            ),
            "queued": GaugeMetricFamily(
                "tiqo_model_queue_depth", "Requests waiting for a slot of a loaded model", labels=["model"]
            ),
        }
        for entry in self.scheduler.ps():
            families["loaded"].add_metric([entry["name"], entry["engine"]], 1)
            for field in ("memory_bytes", "in_flight", "queued"):
                families[field].add_metric([entry["name"]], entry[field])
        yield from families.values()
        yield GaugeMetricFamily(
            "tiqo_queue_depth", "Requests waiting for a model (loading or busy)", value=self.scheduler.pending
        )
        yield GaugeMetricFamily(
            "tiqo_memory_budget_bytes",
            "Memory the scheduler may give loaded models",
            value=self.scheduler.memory_budget,
        )

    def budget_ratios(self, now: float) -> Metric:
        family = GaugeMetricFamily(
            "tiqo_budget_used_ratio",
            "Spent plus reserved over the limit, per budget limit and subject in its current period (1 = spent)",
            labels=["scope", "limit", "subject", "period"],
        )
        ratios: dict[tuple[str, str, str, str], float] = {}
        for row in self.budgets.limit_rows(now):
            key = (row["scope"], row["name"], self._subject(row), row["period"])
            ratios[key] = max(ratios.get(key, 0.0), _ratio(row))
        for labels, ratio in ratios.items():
            family.add_metric(list(labels), ratio)
        return family

    def _subject(self, row: dict[str, Any]) -> str:
        if row["name"] == EVERY and row["scope"] == "user" and not self.user_labels:
            return EVERY  # one series for all users: the most used one's ratio
        return str(row["counter"]).partition(":")[2] or str(row["counter"])


def _ratio(row: dict[str, Any]) -> float:
    used = float(row["spent_usd"]) + float(row["reserved_usd"])
    limit = float(row["limit_usd"])
    return used / limit if limit > 0 else 1.0
