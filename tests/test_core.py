"""Settings, paths, durations and the GGUF reader (pure code; the GGUF tests read the real bundled file)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from tests.conftest import smollm_path
from tiqo.core.durations import format_duration, parse_duration, parse_size
from tiqo.core.errors import ConfigError
from tiqo.core.paths import Paths
from tiqo.core.settings import SETTINGS, Settings, validate, write_config_value
from tiqo.daemon.catalog.gguf import GGUFError, read_gguf


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("90s", 90), ("1h30m", 5400), ("0", 0), ("250ms", 0.25), (" 10 ", 10), (42, 42), ("1.5h", 5400)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1", "-5m", -1])
def test_negative_duration_means_forever(text: str | int) -> None:
    assert math.isinf(parse_duration(text))


@pytest.mark.parametrize("text", ["", "abc", "5x", "m5", "5m x", True])
def test_bad_durations_say_the_syntax(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 300, 330, 5400, math.inf)] == ["5s", "5m", "5m30s", "1h30m", "forever"]


@pytest.mark.parametrize(("text", "size"), [("512MiB", 512 * 2**20), ("8GiB", 8 * 2**30), ("1GB", 10**9), ("100", 100)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_tiqo_home_puts_everything_under_one_folder(tmp_path: Path) -> None:
    paths = Paths.from_env({"TIQO_HOME": str(tmp_path)})
    for folder in (paths.config_dir, paths.state_dir, paths.cache_dir, paths.runtime_dir, paths.log_dir):
        assert folder.is_relative_to(tmp_path)
    assert paths.default_socket == tmp_path / "run" / "tiqo.sock"


def test_settings_precedence_env_over_toml_over_default(tmp_path: Path) -> None:
    paths = Paths.from_env({"TIQO_HOME": str(tmp_path)})
    toml = {"scheduler": {"keep_alive": "10m", "max_queue": 7}}
    s = Settings(paths, toml, env={"TIQO_KEEP_ALIVE": "30s"})
    assert s["scheduler.keep_alive"] == 30 and s.source("scheduler.keep_alive") == "env TIQO_KEEP_ALIVE"
    assert s["scheduler.max_queue"] == 7 and s.source("scheduler.max_queue") == "config.toml"
    assert s["scheduler.max_loaded_models"] == 3 and s.source("scheduler.max_loaded_models") == "default"
    assert s["llm.n_threads"] is None  # "auto"


def test_no_autostart_env(tmp_path: Path) -> None:
    paths = Paths.from_env({"TIQO_HOME": str(tmp_path)})
    assert Settings(paths, {}, env={})["daemon.autostart"] is True
    assert Settings(paths, {}, env={"TIQO_NO_AUTOSTART": "1"})["daemon.autostart"] is False


def test_bad_setting_names_the_fix(tmp_path: Path) -> None:
    paths = Paths.from_env({"TIQO_HOME": str(tmp_path)})
    with pytest.raises(ConfigError) as info:
        Settings(paths, {"scheduler": {"max_queue": "lots"}}, env={})
    assert "scheduler.max_queue" in info.value.message and "tiqo config set" in (info.value.hint or "")
    with pytest.raises(ConfigError):
        validate("no.such", "1")
    with pytest.raises(ConfigError):
        validate("daemon.autostart", "maybe")


def test_every_setting_has_docs_and_a_valid_default(tmp_path: Path) -> None:
    Settings(Paths.from_env({"TIQO_HOME": str(tmp_path)}), {}, env={})
    envs = [s.env for s in SETTINGS]
    assert len(set(envs)) == len(envs)
    assert all(s.doc and s.env.startswith("TIQO_") for s in SETTINGS)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    paths = Paths.from_env({"TIQO_HOME": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(paths, env={})


def test_write_config_value_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('# my notes\n[scheduler]\nkeep_alive = "5m" # why\n')
    write_config_value(path, ["scheduler", "max_queue"], 9)
    write_config_value(path, ["models", "x"], {"path": "/m.gguf"})
    text = path.read_text()
    assert "# my notes" in text and "# why" in text and "max_queue = 9" in text
    write_config_value(path, ["models", "x"], None)
    assert "m.gguf" not in path.read_text()


# ---------------------------------------------------------------- GGUF


def test_reads_the_bundled_gguf() -> None:
    info = read_gguf(smollm_path())
    assert info.architecture == "llama" and info.context_length == 8192
    assert info.chat_template and "im_start" in info.chat_template
    assert info.tensor_count > 100
    assert 80 * 2**20 < info.kv_cache_bytes(4096) < 100 * 2**20  # 30 layers x 3 KV heads x 64 dims, f16


def test_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFError, match="not a GGUF file") as info:
        read_gguf(bad)
    assert info.value.status == 400


@pytest.mark.parametrize("keep", [10, 1000, -4096])
def test_truncated_gguf_is_rejected(tmp_path: Path, keep: int) -> None:
    data = smollm_path().read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(cut)


def test_unsupported_version_and_missing_file(tmp_path: Path) -> None:
    v9 = tmp_path / "v9.gguf"
    v9.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0) + b"\0" * 16)
    with pytest.raises(GGUFError, match="version 9"):
        read_gguf(v9)
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a file"):
        read_gguf(tmp_path)


def test_every_setting_has_its_own_environment_variable() -> None:
    from collections import Counter

    from tiqo.core.setting_table import SETTINGS

    shared = [env for env, n in Counter(s.env for s in SETTINGS).items() if n > 1]
    assert shared == []  # e.g. image.default_size and video.default_size would both read TIQO_DEFAULT_SIZE
