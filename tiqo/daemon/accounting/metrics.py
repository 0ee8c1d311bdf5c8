"""Prometheus metrics of the requests the daemon answers, in a registry of the daemon's own (never the global one).

Counters and histograms move in one place: ``observe`` is called by the recording path when a request's ledger row
is written (``pipeline/recording.py`` ``Accounting.finish``), so they count exactly what ``tiqo usage`` counts, from
the daemon's start. Gauges of current state (keys, breakers, models, budgets) are read at scrape time by a collector
registered here (``telemetry/gauges.py``), so the request path keeps no bookkeeping for them; the rest of a scrape
(collecting the request metrics, formatting) runs in a worker thread.

Label values are bounded: each label keeps its first ``max_label_values`` distinct values and counts the rest as
``other``; user names are a label only when ``metrics.user_labels`` is on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tiqo.daemon.accounting.records import RequestRow
from tiqo.policy.budget import NANO

OTHER = "other"  # the value of a label past its bound
NONE = "none"  # the value of a label the request never got (a refused request has no backend)
MAX_LABEL_CHARS = 64
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHE_KINDS = {"hit": "exact", "semantic": "semantic"}  # RequestRow.cache -> the kind label of a hit
SERIES = ("task", "backend", "model")  # the labels every request series has


class LabelBound:
    """Bounded label values: the first ``limit`` distinct values of each label are kept, later ones become
    ``other``; empty values become ``none`` and long ones are cut to ``MAX_LABEL_CHARS``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str, set[str]] = {}

    def __call__(self, label: str, value: str) -> str:
        values = self.seen.setdefault(label, set())
        if value in values:
            return value
        value = value[:MAX_LABEL_CHARS] if value else NONE
        if value in values or value == NONE:
            return value
        if len(values) >= self.limit:
            return OTHER
        values.add(value)
        return value


@dataclass(frozen=True)
class _Series:
    """The children one combination of labels moves (looked up once, then reused without prometheus' lock)."""

    requests: Counter
    duration: Histogram
    first_token: Histogram
    tokens_in: Counter
    tokens_out: Counter
    cost: Counter


class Metrics:
    """The daemon's registry and its request metrics."""

    def __init__(self, *, user_labels: bool = False, max_label_values: int = 100) -> None:
        # No `_created` series beside each counter (Prometheus detects resets itself); a process-wide switch.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.user_labels = user_labels
        self.bound = LabelBound(max_label_values)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._live: list[Collector] = []
        users = ("user",) if user_labels else ()
        self.requests = Counter(
            "tiqo_requests",
            "Requests answered or refused, by task, what served them and outcome (ok, error, refused, "
            "interrupted, cancelled)",
            [*SERIES, "outcome", *users],
            registry=self.registry,
        )
        self.duration = Histogram(
            "tiqo_request_duration_seconds",
            "Time from a request's arrival to its end (last byte or refusal)",
            SERIES,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "tiqo_time_to_first_token_seconds",
            "Time from a request's arrival to the first token it was sent (text and chat requests)",
            SERIES,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "tiqo_tokens",
            "Tokens by direction (in: prompt, out: completion)",
            ["direction", *SERIES, *users],
            registry=self.registry,
        )
        self.cost = Counter(
            "tiqo_cost_usd", "Cost of requests in US dollars", [*SERIES, *users], registry=self.registry
        )
        self.cache_hits = Counter(
            "tiqo_cache_hits", "Requests answered from the response cache, by kind", ["kind"], registry=self.registry
        )
        self.cache_misses = Counter(
            "tiqo_cache_misses", "Requests the response cache was asked for and did not have", registry=self.registry
        )
        for kind in CACHE_KINDS.values():
            self.cache_hits.labels(kind)  # at zero from the start, so that rates over them begin at once

    def register(self, collector: Collector) -> None:
        """A collector of live state, read on the event loop at scrape time (it may touch the daemon's objects)."""
        self._live.append(collector)

    def observe(self, row: RequestRow, first_token_s: float | None = None) -> None:
        """Count one request from its ledger row (the one place counters move)."""
        series = self._of(row)
        series.requests.inc()
        series.duration.observe(row.latency_ms / 1000)
        if first_token_s is not None:
            series.first_token.observe(first_token_s)
        if row.tokens_in:
            series.tokens_in.inc(row.tokens_in)
        if row.tokens_out:
            series.tokens_out.inc(row.tokens_out)
        if row.cost_nusd:
            series.cost.inc(row.cost_nusd / NANO)
        kind = CACHE_KINDS.get(row.cache)
        if kind is not None:
            self.cache_hits.labels(kind).inc()
        elif row.cache == "miss":
            self.cache_misses.inc()

    def _of(self, row: RequestRow) -> _Series:
        bound = self.bound
        labels = (bound("task", row.task), bound("backend", row.backend), bound("model", row.model))
        users = (bound("user", row.user),) if self.user_labels else ()
        key = (*labels, row.outcome, *users)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                requests=self.requests.labels(*labels, bound("outcome", row.outcome), *users),
                duration=self.duration.labels(*labels),
                first_token=self.first_token.labels(*labels),
                tokens_in=self.tokens.labels("in", *labels, *users),
                tokens_out=self.tokens.labels("out", *labels, *users),
                cost=self.cost.labels(*labels, *users),
            )
        return series

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition, keeping the event loop free: live state is read on it (a few families), the request
        metrics are collected (prometheus_client locks each value) and everything is formatted in a worker thread."""
        live = [family for collector in self._live for family in collector.collect()]
        return await asyncio.to_thread(self.exposition, accept, live)

    def exposition(self, accept: str | None = None, live: Sequence[Metric] = ()) -> tuple[bytes, str]:
        """The request metrics and ``live`` families in the format the scraper asked for (Prometheus text, or
        OpenMetrics), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(_Families(self.registry, live)), content_type


class _Families:
    """What an encoder collects: the registry's families, then the live ones read beforehand."""

    def __init__(self, registry: CollectorRegistry, live: Sequence[Metric]) -> None:
        self.registry = registry
        self.live = live

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.live
