"""What config.toml and keys.toml hold for a provider, checked before anything is written: names, a new provider's
entry, a new key's entry and limits; and what a person may see of a key (``redact``). No state: the hub writes."""

from __future__ import annotations

import logging
import re
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import BadRequest, Conflict
from tiqo.daemon.upstream.replicas import parse_endpoints
from tiqo.policy.classify import DATA_CLASSES
from tiqo.policy.keys import STRATEGIES, KeyLimits
from tiqo.sdk.provider import ProviderKind

log = logging.getLogger("tiqo.providers")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LIMIT_FIELDS = ("rpm", "tpm", "rpd", "tpd")


def check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or name == "local":
        raise BadRequest(
            f"{what} name {name!r} is not allowed",
            param="name",
            hint="use letters, digits, '.', '_' or '-' (up to 64 characters; 'local' is reserved)",
        )


def redact(secret: str) -> str:
    """What a person may see of a key: enough to tell keys apart, never enough to use one."""
    if len(secret) >= 16:
        return f"{secret[:3]}…{secret[-4:]}"
    return "…" + secret[-2:] if len(secret) >= 8 else "…"


def provider_entry(
    kind: str, base_url: str | None, options: dict[str, Any], kinds: dict[str, ProviderKind]
) -> dict[str, Any]:
    """The ``[providers.NAME]`` table of a new provider; a 400 naming the option that is wrong."""
    if kind not in kinds:
        known = ", ".join(sorted(kinds)) or "none loaded"
        raise BadRequest(
            f"unknown provider kind {kind!r} (loaded kinds: {known})",
            param="kind",
            hint="`tiqo plugins` shows which provider plugins loaded",
        )
    endpoints = options.get("endpoints")
    if endpoints is not None:  # an empty list is an error too, not "no endpoints"
        try:
            parsed = parse_endpoints({"endpoints": endpoints, "base_url": base_url}) or []
        except (TypeError, ValueError) as exc:
            raise BadRequest(
                str(exc), param="endpoints", hint="e.g. --endpoint http://10.0.0.5:8000/v1 --endpoint URL,weight=2"
            ) from None
        base_url = base_url or parsed[0].url
    if not base_url:
        base_url = kinds[kind].default_base_url
    if not re.match(r"^https?://", base_url):
        raise BadRequest(f"base URL {base_url!r} must start with http:// or https://", param="base_url")
    if options.get("trusted") and options.get("max_class") not in (None, "restricted"):
        raise BadRequest(
            "a trusted provider may see every data class; --max-class does not go with --trusted",
            param="max_class",
            hint="drop --max-class, or drop --trusted to keep restricted data off it",
        )
    strategy = options.get("key_strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise BadRequest(f"unknown key strategy {strategy!r}; use {', '.join(STRATEGIES)}", param="key_strategy")
    if not options.get("trusted") and options.get("max_class", "confidential") not in DATA_CLASSES[:-1]:
        raise BadRequest("max_class must be public, internal or confidential", param="max_class")
    for t in ("timeout_connect", "timeout_first_byte", "timeout_idle"):
        if t in options:
            try:
                parse_duration(options[t])
            except ValueError as exc:
                raise BadRequest(str(exc), param=t) from None
    return {"kind": kind, "base_url": base_url.rstrip("/"), **{k: v for k, v in options.items() if v is not None}}


def key_entry(
    provider: str, key_name: str | None, secret: str, limits: dict[str, Any], existing: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """The name (``keyN`` when not given) and ``[PROVIDER.NAME]`` table of a new key among ``existing`` ones."""
    secret = secret.strip()
    if not secret or any(c.isspace() for c in secret):
        raise BadRequest("the key is empty or contains whitespace", param="secret")
    if secret in existing.values():
        raise Conflict(f"this key is already registered for {provider}")
    if key_name is None:
        n = len(existing) + 1
        while f"key{n}" in existing:
            n += 1
        key_name = f"key{n}"
    check_name(key_name, "key")
    if key_name in existing:
        raise Conflict(f"{provider} already has a key named {key_name!r}", hint="pick another --name")
    entry = {"secret": secret, **{k: v for k, v in limits.items() if v is not None}}
    try:
        key_limits(entry)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"bad key limits: {exc}") from None
    return key_name, entry


_AUTH_HEADERS = {"authorization", "x-api-key", "x-goog-api-key", "api-key"}


def keyless(options: Any) -> bool:
    """A provider that needs no pooled key: ``auth = "none"``, or a fixed auth header in ``headers``."""
    if str(options.get("auth", "")).lower() == "none":
        return True
    headers = options.get("headers") or {}
    return any(str(h).lower() in _AUTH_HEADERS for h in headers)


def key_limits(entry: dict[str, Any]) -> KeyLimits:
    values: dict[str, Any] = {}
    for f in _LIMIT_FIELDS:
        if entry.get(f) is not None:
            v = int(entry[f])
            if v <= 0:
                raise ValueError(f"{f} must be positive")
            values[f] = v
    return KeyLimits(
        **values,
        reset=str(entry.get("reset", "00:00")),
        tz=str(entry.get("tz", "UTC")),
        weight=float(entry.get("weight", 1.0)),
    )


def key_tables(provider: str, keys: dict[str, Any]) -> tuple[dict[str, KeyLimits], dict[str, str]]:
    """The limits and secrets of a provider's usable keys in keys.toml; a malformed one is skipped with a warning."""
    limits, secrets = {}, {}
    for key_name, table in keys.items():
        if not isinstance(table, dict) or not table.get("secret"):
            continue
        try:
            limits[key_name] = key_limits(table)
        except (TypeError, ValueError) as exc:
            log.warning("key %s of %s ignored: %s", key_name, provider, exc)
            continue
        secrets[key_name] = str(table["secret"])
    return limits, secrets


def check_private(path: Any) -> None:
    """keys.toml holds secrets: readable by its owner only."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); fixing to 0600", path, mode)
        path.chmod(0o600)
