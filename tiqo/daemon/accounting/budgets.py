"""Budgets as the daemon applies them: limits from ``[budgets]`` in config.toml, reservations in the ledger,
threshold alerts (log, ``/tiqo/events``, an optional command and webhook) and threshold actions for routing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tiqo.core.errors import ConfigError
from tiqo.core.settings import Settings, write_config_value
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.accounting.ledger import Ledger
from tiqo.daemon.accounting.records import CallRow, CounterKey
from tiqo.daemon.state.shared import AlertGate
from tiqo.policy import budget as bp
from tiqo.policy.routing import CatalogModel

log = logging.getLogger("tiqo.budget")
ALERT_TIMEOUT_S = 10.0


class Budgets:
    def __init__(self, settings: Settings, ledger: Ledger, events: EventBus, alerts: AlertGate | None = None) -> None:
        self.settings = settings
        self.alerts = alerts  # several daemons: the first to raise an alert sends it (None: one daemon)
        self.ledger = ledger
        self.events = events
        self.error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.policy = bp.Policy()
        self.reload()

    def reload(self) -> None:
        """Read ``[budgets]`` and the budget.* settings; a mistake is reported (and no limit applies) rather than
        stopping the daemon."""
        try:
            self.policy = bp.Policy(
                limits=bp.parse_limits(self.settings.toml.get("budgets", {})),
                thresholds=self.settings["budget.thresholds"],
                actions=bp.parse_actions(self.settings["budget.actions"]),
                timezone=self.settings["budget.timezone"],
            )
            self.error = None
        except (ValueError, ConfigError) as exc:
            self.error = f"budget config ignored: {exc}"
            log.error("%s", self.error)
            self.policy = bp.Policy(timezone="UTC")

    @property
    def active(self) -> bool:
        return bool(self.policy.limits)

    def charges(self, user: str, model: CatalogModel, now: float) -> list[bp.Charge]:
        if model.local:
            return []  # local models cost nothing: budgets never stop them
        return self.policy.charges(user, model.provider, model.name, now)

    def pressure(self, user: str, model: CatalogModel, now: float) -> tuple[str, str, bp.Charge | None]:
        charges = self.charges(user, model, now)
        if not charges:
            return "", "", None
        return bp.pressure(self.policy, charges, self.ledger.usage_of([c.key for c in charges]))

    def reserve(self, call: CallRow, model: CatalogModel, amount_usd: float, now: float) -> bp.Refusal | None:
        return self.ledger.reserve(call, self.charges(call.user, model, now), bp.to_nano(amount_usd))

    def settle(self, call_id: str, user: str, model: CatalogModel, **result: Any) -> None:
        """End a call and raise the alerts its spend crossed (once per limit, period and threshold)."""
        moved = self.ledger.settle(call_id, **result)
        if moved:
            self._alerts(user, model, moved, time.time())

    def _alerts(self, user: str, model: CatalogModel, moved: dict[CounterKey, tuple[int, int]], now: float) -> None:
        for charge in self.charges(user, model, now):
            if charge.key not in moved:
                continue
            before, after = moved[charge.key]
            cap = bp.to_nano(charge.limit.usd)
            if not cap:
                continue
            for t in bp.crossed([*self.policy.thresholds, 100], before / cap, after / cap):
                action = "block-external" if t == 100 else self.policy.action_at(t)
                self.alert(
                    f"budget:{charge.counter}:{charge.period_id}:{t}",
                    "budget",
                    "critical" if t >= 100 else "warning",
                    f"the {charge.label} budget of ${charge.limit.usd:g} is {after / cap * 100:.0f}% spent "
                    f"(threshold {t}%: {action})",
                    {
                        "counter": charge.counter,
                        "period": charge.period_id,
                        "threshold": t,
                        "action": action,
                        "spent_usd": after / bp.NANO,
                        "limit_usd": charge.limit.usd,
                        "resets_at": charge.resets_at,
                    },
                )

    def alert(self, dedupe: str, kind: str, level: str, message: str, data: dict[str, Any]) -> None:
        """Record an alert (once per ``dedupe``), log it, publish it and hand it to the configured command/webhook."""
        if self.alerts is not None and not self.alerts.first(dedupe):
            return  # another daemon sharing the state raised it
        alert_id = self.ledger.alert_once(dedupe, kind, level, message, data)
        if alert_id is None:
            return
        payload = {"id": alert_id, "kind": kind, "level": level, "message": message, "data": data, "ts": time.time()}
        log.warning("alert: %s", message)
        self.events.publish("alert", payload)
        command, webhook = self.settings["budget.alert_command"], self.settings["budget.alert_webhook"]
        for sink, target in (("command", command), ("webhook", webhook)):
            if target:
                task = asyncio.get_running_loop().create_task(_deliver(sink, target, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=ALERT_TIMEOUT_S)

    # ------------------------------------------------------------ management
    def show(self, now: float) -> dict[str, Any]:
        return {
            "timezone": self.policy.timezone,
            "thresholds": list(self.policy.thresholds),
            "actions": {str(t): self.policy.action_at(t) for t in self.policy.thresholds},
            "limits": self.limit_rows(now),
            "reserved_usd": self.ledger.reserved_total() / bp.NANO,
            "error": self.error,
            "alerts": self.ledger.alerts(20),
        }

    def limit_rows(self, now: float) -> list[dict[str, Any]]:
        """Each limit's use in its current period: one row per subject charged (``*`` limits: each one seen)."""
        rows = []
        for limit in self.policy.limits:
            pid, resets = bp.period_of(limit.period, now, self.policy.timezone)
            if limit.name == bp.EVERY:
                prefix = f"{limit.scope}:"
                subjects = sorted({c for c, p, _, _ in self.ledger.periods(prefix) if p == pid})
            else:
                subjects = [limit.subject(limit.name, limit.name, limit.name) or "global"]
            if not subjects:
                rows.append(_row(limit, f"{limit.scope}:*", pid, resets, bp.Usage(), self.policy))
            for counter in subjects:
                usage = self.ledger.usage_of([(counter, pid)])[(counter, pid)]
                rows.append(_row(limit, counter, pid, resets, usage, self.policy))
        return rows

    def set_limit(self, scope: str, name: str, period: str, usd: float | None) -> None:
        """Set (or with ``usd=None`` remove) one limit in config.toml and apply it at once."""
        bp.Limit(scope, name or ("" if scope == "global" else "?"), period, usd or 0.0)  # validates
        if scope != "global" and not name:
            raise ConfigError(f"a {scope} budget needs a name (or * for each {scope} separately)")
        parts = ["budgets", "global"] if scope == "global" else ["budgets", scope + "s", name]
        field = "daily" if period == "day" else "monthly"
        write_config_value(self.settings.paths.config_file, [*parts, field], usd)
        node = self.settings.toml.setdefault("budgets", {})
        for part in parts[1:]:
            node = node.setdefault(part, {})
        if usd is None:
            node.pop(field, None)
        else:
            node[field] = usd
        self.reload()


def _row(
    limit: bp.Limit, counter: str, period: str, resets: float, usage: bp.Usage, policy: bp.Policy
) -> dict[str, Any]:
    cap = bp.to_nano(limit.usd)
    used = usage.spent + usage.reserved
    return {
        "scope": limit.scope,
        "name": limit.name,
        "counter": counter,
        "period": limit.period,
        "period_id": period,
        "limit_usd": limit.usd,
        "spent_usd": usage.spent / bp.NANO,
        "reserved_usd": usage.reserved / bp.NANO,
        "left_usd": max(0, cap - used) / bp.NANO,
        "percent": round(used / cap * 100, 2) if cap else 100.0,
        "resets_at": resets,
        "thresholds_passed": [t for t in policy.thresholds if cap and used * 100 >= t * cap],
    }


async def _deliver(sink: str, target: str, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    try:
        if sink == "command":
            proc = await asyncio.create_subprocess_shell(
                target,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, err = await asyncio.wait_for(proc.communicate(data), ALERT_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
            if proc.returncode:
                log.warning("alert command exited %s: %s", proc.returncode, err.decode(errors="replace")[:200])
        else:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=ALERT_TIMEOUT_S)
            headers = {"content-type": "application/json"}
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(target, data=data, headers=headers) as resp,
            ):
                if resp.status >= 300:
                    log.warning("alert webhook answered HTTP %s", resp.status)
    except Exception as exc:  # an alert sink must never hurt serving
        log.warning("alert %s failed: %s: %s", sink, type(exc).__name__, exc)
