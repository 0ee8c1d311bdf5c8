"""Watching providers' health: a breaker that says when it opens or closes, and the events and alerts of breaker
and key changes (published only when a key's status really changed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tiqo.daemon.state.shared import Breakers
from tiqo.policy.breaker import CircuitBreaker
from tiqo.policy.keys import KeyPool

# (kind, data) of an event for the bus; (dedupe, kind, level, message, data) of an alert
Publish = Callable[[str, dict[str, Any]], Any]
Alert = Callable[[str, str, str, str, dict[str, Any]], Any]
_ALERT_LEVELS = {"disabled": "error", "exhausted": "warning", "circuit-open": "warning"}


@dataclass
class WatchedBreaker(CircuitBreaker):
    """A provider's breaker that says when it opens (or closes again), for alerts and the dashboard."""

    on_change: Callable[[str, CircuitBreaker], None] | None = field(default=None, repr=False, compare=False)
    # Several daemons: the breaker's state is shared (None: this daemon's alone, as a single daemon needs)
    shared: Breakers | None = field(default=None, repr=False, compare=False)
    provider: str = ""

    def failure(self, now: float, error: str = "") -> None:
        before = self.opened_at
        if self.shared is None or not self.shared.failure(self.provider, self, now, error, self.probing):
            super().failure(now, error)
        if self.on_change is not None and self.opened_at is not None and self.opened_at != before:
            self.on_change("open", self)

    def success(self) -> None:
        was_open = self.opened_at is not None
        if self.shared is not None and (self.failures or was_open or self.probing):
            self.shared.success(self.provider)
        super().success()
        if was_open and self.on_change is not None:
            self.on_change("closed", self)

    def release(self) -> None:
        if self.shared is not None and self.probing:
            self.shared.release_probe(self.provider)
        super().release()


class ProviderWatch:
    """Tells the event bus (``publish``) and the alerts (``alert``) about breakers and keys; both None until the
    daemon wires them (``ProviderHub.watch``)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.publish: Publish | None = None
        self.alert: Alert | None = None
        self.key_status: dict[tuple[str, str], str] = {}  # last status told, to publish only changes

    def breaker_changed(self, name: str, state: str, breaker: CircuitBreaker) -> None:
        if self.publish is None:
            return
        until = breaker.open_until()
        data = {"provider": name, "state": state, "failures": breaker.failures, "error": breaker.last_error}
        data["until"] = until if state == "open" else None
        self.publish("breaker", data)
        if state == "open" and self.alert is not None:
            probe = time.strftime("%H:%M:%S", time.localtime(until)) if until else "later"
            self.alert(
                f"breaker:{name}:{breaker.opened_at}",
                "breaker",
                "error",
                f"circuit breaker of provider {name} opened after {breaker.failures} failure(s) "
                f"({breaker.last_error or 'error'}); next probe at {probe}; see `tiqo providers list`",
                data,
            )

    def key_changed(self, provider: str, key_name: str, pool: KeyPool) -> None:
        if key_name not in pool.limits or self.publish is None:
            return
        row = pool.describe(key_name, self.clock())
        status, before = row["status"], self.key_status.get((provider, key_name), "healthy")
        if status == before:
            return
        self.key_status[(provider, key_name)] = status
        data = {"provider": provider, "name": key_name, "status": status, "previous": before}
        data.update(reason=row["reason"], until=row["until"])
        self.publish("key", data)
        level = _ALERT_LEVELS.get(status)
        if level is None or self.alert is None or row["reason"].endswith("by user"):
            return
        until = row["until"]
        when = f" until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}" if until else ""
        why = str(row["reason"]).removeprefix("disabled: ")
        fix = (
            f"after fixing it, `tiqo keys enable {provider} {key_name}`"
            if status == "disabled"
            else "other keys take over meanwhile; see `tiqo keys list`"
        )
        self.alert(
            f"key:{provider}:{key_name}:{status}:{self.clock():.3f}",
            "key",
            level,
            f"key {provider}/{key_name} is {status.replace('-', ' ')}{when} ({why}); {fix}",
            data,
        )
