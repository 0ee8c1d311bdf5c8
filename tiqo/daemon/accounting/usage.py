"""What the ledger answers: usage grouped by day, provider, model, ... (this daemon's rows, or the per-day sums every
daemon on a shared Redis adds to), the request log and the audit trail of off-machine calls. Reads only."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from zoneinfo import ZoneInfo

from tiqo.core.errors import BadRequest
from tiqo.daemon.accounting.counters import UsageSums
from tiqo.policy.budget import NANO

GROUPS = ("day", "provider", "model", "user", "key", "backend", "outcome")
CLUSTER_GROUPS = ("day", "provider", "model", "user")  # what the shared sums can be grouped by
NOT_EXTERNAL = ("local", "cache", "")
CLUSTER_KEEP_DAYS = 400  # the shared sums' expiry (state/redis_usage.py KEEP_DAYS): older days are gone


class UsageReport:
    """Queries over the ledger's tables (``tz_day`` is the SQL function the ledger registers on ``db``)."""

    def __init__(self, db: sqlite3.Connection, zone: ZoneInfo, sums: UsageSums | None) -> None:
        self.db = db
        self.zone = zone
        self.sums = sums

    def usage(self, since: float, by: str, user: str | None = None) -> dict[str, Any]:
        if by not in GROUPS:
            raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPS)}")
        group = {"day": "tz_day(ts)", "key": "COALESCE(provider || '/' || key, provider)"}.get(by, by)
        where, args = "ts >= ?", [cast(Any, since)]
        if user is not None:
            where += " AND user = ?"
            args.append(user)
        select = (
            "COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_nusd), 0), "
            "COALESCE(SUM(cache IN ('hit', 'semantic')), 0), COALESCE(SUM(outcome != 'ok'), 0), "
            "COALESCE(SUM(provider NOT IN ('local', 'cache', '')), 0), COALESCE(AVG(latency_ms), 0)"
        )
        rows = self.db.execute(
            f"SELECT {group}, {select} FROM requests WHERE {where} GROUP BY 1 ORDER BY 1", args
        ).fetchall()
        total = self.db.execute(f"SELECT 'total', {select} FROM requests WHERE {where}", args).fetchone()
        rows_out = [_usage_row(r) for r in rows]
        return {"since": since, "by": by, "rows": rows_out, "total": _usage_row(total), "scope": "local"}

    def cluster_usage(self, since: float, by: str, user: str | None = None, now: float | None = None) -> dict[str, Any]:
        """Like ``usage``, from the sums every daemon on the shared Redis adds to: whole calendar days (``since``
        rounds down to its day's start), grouped by day, provider, model or user."""
        if self.sums is None:
            raise BadRequest("this daemon keeps no cluster-wide sums (state.backend is not redis)", hint="add --local")
        if by not in CLUSTER_GROUPS:
            raise BadRequest(
                f"cluster-wide usage is kept per day, user, provider and model, not per {by}",
                param="by",
                hint=f"use --by {'|'.join(CLUSTER_GROUPS)}, or add --local for this daemon's own rows by {by}",
            )
        now = time.time() if now is None else now
        first = dt.datetime.fromtimestamp(max(since, now - CLUSTER_KEEP_DAYS * 86400), self.zone).date()
        last = dt.datetime.fromtimestamp(now, self.zone).date()
        days = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        start = dt.datetime.combine(first, dt.time(), self.zone).timestamp()
        groups: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for (day, who, task, provider, model), sums in self.sums.read(days, user).items():
            name = {"day": day, "user": who, "task": task, "provider": provider, "model": model}[by]
            sums = {**sums, "external": sums.get("requests", 0) if provider not in NOT_EXTERNAL else 0}
            for target in (groups.setdefault(name, {}), total):
                for metric, value in sums.items():
                    target[metric] = target.get(metric, 0) + value
        rows = [_sums_row(name, groups[name]) for name in sorted(groups)]
        return {"since": start, "by": by, "rows": rows, "total": _sums_row("total", total), "scope": "cluster"}

    def logs(self, n: int = 20, user: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE user = ?", [user]) if user is not None else ("", [])
        cur = self.db.execute(f"SELECT * FROM requests {where} ORDER BY ts DESC LIMIT ?", [*args, n])
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["cost_usd"] = item.pop("cost_nusd") / NANO
            out.append(item)
        return out

    def audit(self, n: int = 20, since: float = 0.0) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT id, request_id, ts, user, provider, model, key, class, reason, status, reserved_nusd, cost_nusd, "
            "tokens_in, tokens_out, error FROM calls WHERE ts >= ? ORDER BY ts DESC LIMIT ?",
            (since, n),
        )
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["reserved_usd"] = item.pop("reserved_nusd") / NANO
            item["cost_usd"] = item.pop("cost_nusd") / NANO
            out.append(item)
        return out


def _usage_row(r: Sequence[Any]) -> dict[str, Any]:
    group, n, t_in, t_out, cost, hits, errors, external, latency = r
    return {
        "group": group,
        "requests": n,
        "tokens_in": t_in,
        "tokens_out": t_out,
        "cost_usd": cost / NANO,
        "cache_hits": hits,
        "errors": errors,
        "external": external,
        "avg_latency_ms": round(latency, 1),
    }


def _sums_row(group: str, s: Mapping[str, int]) -> dict[str, Any]:
    n = s.get("requests", 0)
    return {
        "group": group,
        "requests": n,
        "tokens_in": s.get("tokens_in", 0),
        "tokens_out": s.get("tokens_out", 0),
        "cost_usd": s.get("cost_nusd", 0) / NANO,
        "cache_hits": s.get("cache_hits", 0),
        "errors": s.get("errors", 0),
        "external": s.get("external", 0),
        "avg_latency_ms": round(s.get("latency_ms", 0) / n, 1) if n else 0.0,
        "audio_s": s.get("audio_ms", 0) / 1000,
        "images": s.get("images", 0),
        "video_s": s.get("video_ms", 0) / 1000,
    }
