"""What the dashboard knows, kept apart from how it is drawn: a snapshot of the daemon's routes, then each event
from ``/tiqo/events`` folded in. Pure (no textual), so the folding is tested without a terminal."""

from __future__ import annotations

import collections
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from tiqo.present import clock, fmt_duration, fmt_size, job_row, key_status, latency, limit_label, usd

MINUTES = 30  # requests/min sparkline: the last half hour
MAX_REQUESTS = 500
MAX_ALERTS = 200
MAX_JOBS = 100  # the dashboard's own jobs, newest first
Severity = Literal["information", "warning", "error"]
LEVELS: dict[str, Severity] = {"critical": "error", "error": "error", "warning": "warning"}  # alert -> toast


def midnight(now: float) -> float:
    """Start of the local calendar day that contains ``now``."""
    day = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def served_by(row: dict[str, Any]) -> str:
    """local, cache or external, the way the ledger counts them (by provider)."""
    provider = str(row.get("provider") or "")
    if provider in ("local", ""):
        return "local"
    return "cache" if provider == "cache" else "external"


@dataclass
class Overview:
    """Today's totals (local calendar day) and the recent rate, for the overview tab."""

    day_start: float = 0.0
    requests: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    errors: int = 0
    local: int = 0
    cache: int = 0
    external: int = 0
    per_minute: collections.Counter[int] = field(default_factory=collections.Counter)  # minute (epoch // 60) -> n
    spend_per_hour: list[float] = field(default_factory=lambda: [0.0] * 24)

    def count(self, row: dict[str, Any]) -> None:
        ts = float(row.get("ts") or time.time())
        self.per_minute[int(ts // 60)] += 1
        if ts < self.day_start:
            return
        self.requests += 1
        cost = float(row.get("cost_usd") or 0.0)
        self.cost_usd += cost
        self.spend_per_hour[min(23, int((ts - self.day_start) // 3600))] += cost
        self.cache_hits += row.get("cache") in ("hit", "semantic")
        self.errors += (row.get("outcome") or "ok") != "ok"
        setattr(self, served_by(row), getattr(self, served_by(row)) + 1)

    def rate(self, now: float) -> list[float]:
        """Requests in each of the last MINUTES minutes, oldest first."""
        this = int(now // 60)
        return [float(self.per_minute.get(m, 0)) for m in range(this - MINUTES + 1, this + 1)]

    def share(self, part: int) -> str:
        return f"{part / self.requests * 100:.0f}%" if self.requests else "-"


@dataclass
class DashState:
    overview: Overview = field(default_factory=Overview)
    requests: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=MAX_REQUESTS))
    alerts: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=MAX_ALERTS))
    budget: dict[str, Any] = field(default_factory=dict)
    keys: list[dict[str, Any]] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)  # endpoints of providers with several
    ps: dict[str, Any] = field(default_factory=dict)
    ps_at: float = 0.0  # time.monotonic() when ps was fetched (keep-alive countdowns run from there)
    catalog: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    last_id: int | None = None
    seen: set[str] = field(default_factory=set)  # request and alert ids already shown (the snapshot overlaps events)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> job (or a job event's data), newest first

    # ------------------------------------------------------------ snapshot and events
    def load_snapshot(self, snap: dict[str, Any], now: float | None = None) -> None:
        """Everything from the routes: health, usage today, recent logs and alerts, budget, keys, ps, catalog."""
        now = time.time() if now is None else now
        self.health = snap.get("health") or {}
        self.overview = Overview(day_start=midnight(now))
        logs: list[dict[str, Any]] = snap.get("logs") or []
        for row in logs:  # newest first: the sparkline from what the ledger still returns
            self.overview.per_minute[int(float(row.get("ts") or 0) // 60)] += 1
            ts = float(row.get("ts") or 0)
            if ts >= self.overview.day_start:
                hour = min(23, int((ts - self.overview.day_start) // 3600))
                self.overview.spend_per_hour[hour] += float(row.get("cost_usd") or 0.0)
        usage = snap.get("usage") or {}
        total = usage.get("total") or {}
        ov = self.overview
        ov.requests, ov.cost_usd = int(total.get("requests") or 0), float(total.get("cost_usd") or 0.0)
        ov.cache_hits, ov.errors = int(total.get("cache_hits") or 0), int(total.get("errors") or 0)
        ov.external = int(total.get("external") or 0)
        for row in usage.get("rows") or []:
            if row.get("group") == "cache":
                ov.cache = int(row["requests"])
            elif row.get("group") in ("local", "", None):
                ov.local += int(row["requests"])
        self.requests.clear()
        self.requests.extend(logs)
        self.alerts.clear()
        self.alerts.extend(snap.get("alerts") or [])
        self.seen = {f"r{r.get('id')}" for r in logs} | {f"a{a.get('id')}" for a in self.alerts}
        self.budget = snap.get("budget") or {}
        self.keys = snap.get("keys") or []
        self.replicas = snap.get("replicas") or []
        self.set_ps(snap.get("ps") or {})
        self.catalog = snap.get("catalog") or []
        self.jobs = {str(j["id"]): j for j in snap.get("jobs") or [] if j.get("id")}

    def set_ps(self, ps: dict[str, Any]) -> None:
        self.ps, self.ps_at = ps, time.monotonic()

    def apply(self, event: dict[str, Any]) -> set[str]:
        """Fold one event in. Returns what changed (``overview``, ``requests``, ``alerts``) and what must be fetched
        again because the event only says that it changed (``budget``, ``keys``, ``ps``)."""
        ident = event.get("id")
        if isinstance(ident, int) and ident > 0:
            self.last_id = ident
        kind, data = event.get("kind"), event.get("data")
        data = data if isinstance(data, dict) else {}
        if kind in ("request", "alert"):
            mark = f"{str(kind)[0]}{data.get('id')}"
            if mark in self.seen:  # already in the snapshot
                return set()
            if len(self.seen) > 4 * (MAX_REQUESTS + MAX_ALERTS):
                self.seen = {f"r{r.get('id')}" for r in self.requests} | {f"a{a.get('id')}" for a in self.alerts}
            self.seen.add(mark)
        if kind == "request":
            ts = float(data.get("ts") or event.get("ts") or time.time())
            if ts >= self.overview.day_start + 86400:  # a new day: today's totals start again
                keep = self.overview.per_minute
                self.overview = Overview(day_start=midnight(ts), per_minute=keep)
            self.overview.count(data)
            self.requests.appendleft(data)
            changed = {"overview", "requests", "ps"}
            if served_by(data) == "external":
                changed |= {"budget", "keys"}
            return changed
        if kind == "alert":
            self.alerts.appendleft(data)
            return {"alerts", "budget"} if data.get("kind") == "budget" else {"alerts", "keys"}
        if kind in ("key", "breaker"):
            return {"keys"}
        if kind == "model":
            return {"ps"}
        if kind == "budget":
            return {"budget"}
        if kind == "job":
            self.apply_job(data)
            return {"jobs"}
        if kind == "dropped":  # missed some: fetch everything again
            return {"snapshot"}
        return set()

    def apply_job(self, data: dict[str, Any]) -> None:
        """A job event: progress of a job (its fields replace the ones shown), a new job, or ``removed``."""
        ident = str(data.get("id") or "")
        if not ident:
            return
        if data.get("status") == "removed":
            self.jobs.pop(ident, None)
            return
        if ident in self.jobs:
            self.jobs[ident] = {**self.jobs[ident], **data}
            return
        self.jobs = {ident: {"created_at": time.time(), **data}, **self.jobs}
        while len(self.jobs) > MAX_JOBS:
            self.jobs.pop(next(reversed(self.jobs)))

    def job_rows(self, now: float | None = None) -> list[tuple[str, list[str]]]:
        return [(ident, job_row(job, now)) for ident, job in self.jobs.items()]

    # ------------------------------------------------------------ rows for the tables
    def request_row(self, r: dict[str, Any], wide: bool = False, now: float | None = None) -> list[str]:
        outcome = str(r.get("outcome") or "ok")
        if outcome != "ok" and r.get("error"):
            outcome += f": {r['error']}"
        cells = [
            clock(r.get("ts"), now),
            str(r.get("model") or "-"),
            str(r.get("backend") or "-"),
            latency(r.get("latency_ms")),
            usd(r.get("cost_usd")),
            str(r.get("cache") or "-"),
            outcome,
        ]
        if wide:
            cells[1:1] = [str(r.get("user") or "-")]
            cells.insert(5, f"{r.get('tokens_in') or 0}→{r.get('tokens_out') or 0}")
        return cells

    def key_row(self, r: dict[str, Any], now: float | None = None) -> list[str]:
        lim = r.get("limits") or {}

        def used(value: Any, cap: Any, unit: str) -> str:
            return f"{value or 0}/{cap if cap is not None else '∞'} {unit}"

        usage = " ".join(
            [
                used(r.get("requests_minute"), lim.get("rpm"), "rpm"),
                used(r.get("tokens_minute"), lim.get("tpm"), "tpm"),
                used(r.get("requests_today"), lim.get("rpd"), "rpd"),
                used(r.get("tokens_today"), lim.get("tpd"), "tpd"),
            ]
        )
        return [
            f"{r['provider']}/{r['name']}",
            str(r.get("key") or "…"),
            key_status(r, now),
            usage,
            str(r.get("last_error") or r.get("reason") or "-"),
        ]

    def model_rows(self, now_mono: float | None = None) -> list[list[str]]:
        elapsed = (time.monotonic() if now_mono is None else now_mono) - self.ps_at
        rows = []
        for m in self.ps.get("models") or []:
            if m.get("in_flight"):
                expires = "busy"
            elif m.get("keep_alive_s") is None:
                expires = "pinned"
            elif m.get("expires_in_s") is None:
                expires = "-"
            else:
                expires = "in " + fmt_duration(max(0.0, float(m["expires_in_s"]) - elapsed))
            rows.append(
                [
                    str(m["name"]),
                    fmt_size(m.get("memory_bytes") or 0),
                    str(m.get("in_flight", 0)),
                    str(m.get("queued", 0)),
                    str(m.get("requests_served", 0)),
                    expires,
                ]
            )
        return rows

    def memory_line(self) -> str:
        ps = self.ps
        if not ps:
            return ""
        return (
            f"memory {fmt_size(ps.get('memory_used_bytes') or 0)} of {fmt_size(ps.get('memory_budget_bytes') or 0)}"
            f" · waiting {ps.get('pending', 0)}/{ps.get('max_queue', '-')}"
        )

    def local_models(self) -> list[str]:
        """Models that can be loaded here (not external ones)."""
        return [str(m["name"]) for m in self.catalog if not m.get("provider")]

    def budget_rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.budget.get("limits") or []:
            rows.append({**r, "label": limit_label(r)})
        return rows

    def alert_row(self, a: dict[str, Any], now: float | None = None) -> list[str]:
        return [clock(a.get("ts"), now), str(a.get("level") or "-"), str(a.get("kind") or "-"), str(a.get("message"))]

    def overview_lines(self, now: float | None = None) -> dict[str, str]:
        ov, now = self.overview, time.time() if now is None else now
        rate = ov.rate(now)
        return {
            "requests": f"{ov.requests} today · {rate[-1]:.0f} this minute · {sum(rate):.0f} in {MINUTES} min",
            "spend": f"{usd(ov.cost_usd)} today",
            "cache": f"cache hits {ov.share(ov.cache_hits)} ({ov.cache_hits}/{ov.requests})",
            "share": f"local {ov.share(ov.local)} · cache {ov.share(ov.cache)} · external {ov.share(ov.external)}",
            "errors": f"errors {ov.errors}" + (f" ({ov.share(ov.errors)})" if ov.errors else ""),
        }


def resets_text(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    now = time.time() if now is None else now
    return f"resets {clock(ts, now)} (in {fmt_duration(max(0.0, ts - now))})"
