"""Embeddings: ``/v1/embeddings`` through the same policy as text (the local model first, external OpenAI-compatible
``/embeddings`` as configured fallbacks, with keys, breakers, budgets and a ledger row), and ``local()`` for the
daemon's own users (the vector store)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tiqo.core.errors import BadRequest, TiqoError
from tiqo.daemon.pipeline.dispatch import Dispatch
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.external import json_answer, scrub
from tiqo.daemon.upstream.providers import Provider
from tiqo.policy import budget as bp
from tiqo.policy.routing import CatalogModel
from tiqo.sdk.embedding import Embedded, EmbeddingRunner
from tiqo.sdk.engine import ModelSpec, StopFlag

log = logging.getLogger("tiqo.embeddings")
# Names OpenAI clients send. When no model of that name is registered they mean "the local default".
OPENAI_EMBED_MODELS = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")


class Embeddings(Dispatch):
    def spec(self, model: str | None = None) -> ModelSpec:
        """The local embedding model ``model`` (default: embed.default_model); 400/404 when it is not one."""
        spec: ModelSpec = self.registry.resolve(model, "embed")
        return spec

    async def local(self, texts: Sequence[str], model: str | None = None) -> tuple[ModelSpec, Embedded]:
        """Embed ``texts`` with a local model, in its runner slot (loaded on demand, kept warm like any model).
        Vectors are float32, unit length: cosine similarity is their dot product."""
        spec = self.spec(model)
        items = list(texts)

        def call(runner: EmbeddingRunner, stop: StopFlag) -> Iterator[Embedded]:
            yield runner.embed(items, stop)

        results = [r async for r in self.compute.generate(spec, None, call)]
        return spec, results[0]

    async def create(
        self, inputs: list[str], model: str | None, meta: RequestMeta, dimensions: int | None = None
    ) -> tuple[Served, list[list[float]]]:
        """Route and serve one ``/v1/embeddings`` request; its ledger row is written before this returns."""
        row, started = self._row(meta, "embed")
        est = sum(len(t) for t in inputs) // 4 + len(inputs)
        try:
            c, _ = await self._admit(row, meta, "embed", inputs, est)
            requested = self._openai_name(model, OPENAI_EMBED_MODELS)
            blocked: dict[str, bp.Charge] = {}
            decision = self._decide(c, "embed", requested, ("embed",), blocked, est_tokens=est)
            served = Served(route=decision.source)

            async def local(m: CatalogModel) -> list[list[float]]:
                spec, done = await self.local(inputs, m.name)
                dim = int(done.vectors.shape[1])
                if dimensions is not None and dimensions != dim:
                    raise BadRequest(
                        f"{spec.name} makes {dim}-dimensional vectors and cannot shorten them "
                        f"(dimensions={dimensions})",
                        param="dimensions",
                        hint=f"leave dimensions out, or set it to {dim}",
                    )
                served.backend, served.prompt_tokens = f"local:{spec.engine}", done.tokens
                vectors: list[list[float]] = done.vectors.tolist()
                return vectors

            async def external(m: CatalogModel, secret: str | None, provider: Any, call_id: str) -> list[list[float]]:
                answer = await self._call(m, inputs, dimensions, secret, provider, call_id)
                served.prompt_tokens = _tokens(answer)
                served.cost_usd = m.cost(served.prompt_tokens, 0)
                return [d["embedding"] for d in sorted(answer["data"], key=lambda d: d.get("index", 0))]

            def worst(m: CatalogModel) -> float:
                return m.cost(sum(len(t.encode()) + 1 for t in inputs), 0)  # no tokenizer counts more than bytes

            def actual(m: CatalogModel, _: object) -> float:
                return m.cost(served.prompt_tokens, 0)  # the answer's usage, read by ``external``

            first = functools.partial(self._first, local=local, call=external, worst=worst, actual=actual)
            vectors = await first(decision, served, blocked, row.id)
        except TiqoError as exc:
            self._refused(row, exc, started)
            raise
        row.outcome = "ok"
        self.accounting.finish(row, served, started)
        return served, vectors

    async def _call(
        self,
        model: CatalogModel,
        inputs: list[str],
        dimensions: int | None,
        secret: str | None,
        provider: Provider,
        call_id: str,
    ) -> dict[str, Any]:
        kind = provider.kind
        if kind is None or not hasattr(kind, "embeddings_request"):
            raise AttemptFailed("unsupported", f"provider kind {provider.config.kind} has no embeddings API")
        body: dict[str, Any] = {"input": inputs}
        if dimensions is not None:
            body["dimensions"] = dimensions
        request = kind.embeddings_request(provider.config, model.upstream_model or model.name, body, secret)
        request.headers["X-Client-Request-Id"] = call_id
        answer = await json_answer(self.gateway.upstream, request, provider, secret, "embeddings")
        try:
            data = answer["data"]
            if len(data) != len(inputs) or not all(isinstance(d.get("embedding"), list) for d in data):
                raise ValueError(f"{len(data)} vectors for {len(inputs)} inputs")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AttemptFailed("protocol", scrub(f"unusable embeddings answer: {exc}", secret)) from None
        return dict(answer)


def _tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage") or {}
    return int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
