"""Who asks (RequestMeta) and what served (Served): shared by the gateway, its accounting and the routes."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiqo.daemon.cache.response_cache import CacheHit

from tiqo.daemon.upstream.client import ReadAhead


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "local"


# The socket is private to the daemon's OS user (mode 0600), so whoever connects is that user unless an app that
# serves many users says otherwise (x-tiqo-user, or the OpenAI ``user`` field).
OS_USER = _os_user()


@dataclass
class RequestMeta:
    """Who asks and how: from x-tiqo-* headers (or the OpenAI ``user`` field), else the settings."""

    user: str = OS_USER
    tier: str | None = None
    data_class: str | None = None
    cache: str = "use"  # use | refresh | off
    task: str | None = None
    request_id: str = ""


@dataclass
class Served:
    backend: str = ""
    provider: str = ""
    model: str = ""
    cache: str = "off"  # hit (exact) | semantic | miss | off
    similarity: float | None = None  # a semantic hit's cosine similarity to the cached question
    cost_usd: float = 0.0
    est_cost_usd: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    route: str = ""
    key: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None  # seconds from the request's arrival to its first token (metrics)
    sources: list[dict[str, Any]] = field(default_factory=list)  # retrieval-augmented answers: what was given
    ahead: ReadAhead = field(default_factory=ReadAhead)  # the committed attempt's: is its next piece in hand

    def cached(self, hit: CacheHit) -> None:
        """Served from the response cache: by the model whose answer it holds, with that answer's token counts."""
        self.backend, self.provider, self.model, self.cache = "cache", "cache", hit.model, hit.kind
        self.prompt_tokens, self.completion_tokens = hit.prompt_tokens, hit.completion_tokens
        if hit.similarity is not None:
            self.similarity = hit.similarity

    def headers(self, final: bool) -> dict[str, str]:
        cost = self.cost_usd if final else self.est_cost_usd
        return {
            "x-tiqo-backend": self.backend,
            "x-tiqo-model": self.model,
            "x-tiqo-cost-usd": f"{cost:.8f}".rstrip("0").rstrip(".") or "0",
            "x-tiqo-cache": self.cache,
            "x-tiqo-attempts": str(len(self.attempts) + 1),
            "x-tiqo-route": self.route,
        } | ({} if self.similarity is None else {"x-tiqo-cache-similarity": f"{self.similarity:.4f}"})
