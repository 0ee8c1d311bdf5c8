"""Retrieval-augmented answers: a chat request with ``"tiqo": {"rag": {"collection": NAME, "top_k": 4}}`` (or
``"tiqo": {"rag": NAME}``) gets the collection's best chunks for its last user message as a numbered system message;
the answer carries the sources it was given (``x_tiqo.sources``). The augmented request then goes through the usual
policy, so a restricted chunk keeps the whole request on the machine."""

from __future__ import annotations

from typing import Any

from tiqo.core.errors import BadRequest
from tiqo.daemon.knowledge.vectors import VectorStore
from tiqo.daemon.pipeline.served import RequestMeta
from tiqo.protocol import openai as oa

DEFAULT_TOP_K = 4
MAX_TOP_K = 20
INSTRUCTION = (
    "Answer the question using the numbered sources below when they are relevant, and cite them like [1]. "
    "If they do not contain the answer, say so.\n\n"
)


def rag_options(body: oa.ChatCompletionRequest) -> dict[str, Any] | None:
    extra = (body.model_extra or {}).get("tiqo")
    if not extra:
        return None
    if not isinstance(extra, dict):
        raise BadRequest("the tiqo field must be an object", param="tiqo", hint='{"tiqo": {"rag": "notes"}}')
    rag = extra.get("rag")
    if rag is None:
        return None
    if isinstance(rag, str):
        rag = {"collection": rag}
    if not isinstance(rag, dict) or not isinstance(rag.get("collection"), str) or not rag["collection"]:
        raise BadRequest(
            "tiqo.rag needs a collection name", param="tiqo.rag", hint='{"tiqo": {"rag": {"collection": "notes"}}}'
        )
    top_k = rag.get("top_k", DEFAULT_TOP_K)
    if not isinstance(top_k, int) or not 0 < top_k <= MAX_TOP_K:
        raise BadRequest(f"tiqo.rag.top_k must be 1-{MAX_TOP_K}", param="tiqo.rag.top_k")
    return {"collection": rag["collection"], "top_k": top_k, "filter": rag.get("filter")}


async def augment(
    vectors: VectorStore, body: oa.ChatCompletionRequest, meta: RequestMeta
) -> tuple[oa.ChatCompletionRequest, list[dict[str, Any]]]:
    """The request with the retrieved context put in front, and the sources (none when it asked for no RAG)."""
    options = rag_options(body)
    if options is None:
        return body, []
    question = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
    if not question.strip():
        raise BadRequest("retrieval needs a user message to search for", param="messages")
    collection = vectors.get(meta.user, options["collection"])  # 404 naming `tiqo vec list`
    found = await vectors.query(
        collection,
        vector=None,
        text=question,
        top_k=options["top_k"],
        where=options["filter"],
        include_metadata=True,
        hybrid=False,
    )
    sources = []
    blocks = []
    for n, match in enumerate(found["matches"], 1):
        meta_ = match.get("metadata") or {}
        source = meta_.get("source") or match.get("id")
        sources.append(
            {"n": n, "id": match.get("id"), "source": source, "chunk": meta_.get("chunk"), "score": match.get("score")}
        )
        blocks.append(f"[{n}] (source: {source})\n{match.get('text', '')}")
    wire = body.wire()
    wire.pop("tiqo", None)
    if blocks:
        context = {"role": "system", "content": INSTRUCTION + "\n\n".join(blocks)}
        wire["messages"] = [context, *wire["messages"]]
    return oa.ChatCompletionRequest.model_validate(wire), sources
