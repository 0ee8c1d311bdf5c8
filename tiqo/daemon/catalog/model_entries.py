"""What a ``[models.NAME]`` table of config.toml with ``provider`` set means: an external model, as a catalog entry with
its prices, context and capabilities. (A local model's table holds its engine's options: ``engine_options``.)"""

from __future__ import annotations

from typing import Any

from tiqo.policy.routing import CatalogModel


def external_model(name: str, entry: dict[str, Any]) -> CatalogModel:
    """A ``[models.NAME]`` table with ``provider`` as a catalog entry (raises ValueError when malformed)."""
    price_in, price_out = float(entry.get("price_in", 0)), float(entry.get("price_out", 0))
    if price_in < 0 or price_out < 0:
        raise ValueError("prices must not be negative")
    context = entry.get("context")
    if context is not None and int(context) <= 0:
        raise ValueError("context must be positive")
    caps = entry.get("capabilities", ["chat", "tools", "json"])
    if isinstance(caps, str):
        caps = [c.strip() for c in caps.split(",") if c.strip()]
    fallbacks = entry.get("fallbacks", [])
    if isinstance(fallbacks, str):
        fallbacks = [fallbacks]
    return CatalogModel(
        name=name,
        provider=str(entry["provider"]),
        upstream_model=str(entry.get("upstream_model", name)),
        price_in=price_in,
        price_out=price_out,
        context=None if context is None else int(context),
        capabilities=tuple(str(c) for c in caps),
        fallbacks=tuple(str(f) for f in fallbacks),
        description=str(entry.get("description", "")),
        premium=bool(entry.get("premium", False)),
        price_minute=_price(entry, "price_minute"),
        price_mchar=_price(entry, "price_mchar"),
        price_image=_price(entry, "price_image"),
    )


def _price(entry: dict[str, Any], key: str) -> float:
    value = float(entry.get(key, 0))
    if value < 0:
        raise ValueError(f"{key} must not be negative")
    return value
