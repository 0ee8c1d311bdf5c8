"""Shell completion of names the daemon knows, the way bash, zsh and fish ask for it (the scripts in completions/
set these variables and run `tiqo`): from a running daemon; nothing, and no daemon started, when none runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import tomlkit

from tests.conftest import DaemonProc, home_env, short_home, start_daemon

SECRET = "sk-complete-" + "0" * 16


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    home = short_home()
    (home / "config").mkdir(parents=True)
    config = {
        "providers": {"acme": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"acme-large": {"provider": "acme", "upstream_model": "large"}},
    }
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"acme": {"primary": {"secret": SECRET}, "backup": {"secret": SECRET + "1"}}}))
    keys.chmod(0o600)
    daemon = start_daemon(home, TIQO_NO_AUTOSTART="1")
    yield daemon
    daemon.stop()
    shutil.rmtree(home, ignore_errors=True)


def complete(env: dict[str, str], shell: str, line: str) -> list[str]:
    """What `tiqo` offers for the last word of ``line`` (an empty last word when it ends with a space)."""
    words = line.split(" ")
    extra = {"_TIQO_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        extra.update(COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
    else:
        extra["_TYPER_COMPLETE_ARGS"] = line
        if shell == "fish":
            extra["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    out = subprocess.run(
        [sys.executable, "-m", "tiqo"], env={**env, **extra}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_model_names_come_from_the_daemon(d: DaemonProc) -> None:
    assert complete(d.env, "bash", "tiqo models load sm") == ["smollm2-135m"]
    offered = complete(d.env, "bash", "tiqo ask -m ")
    assert {"smollm2-135m", "acme-large", "cheap"} <= set(offered)  # local, external, an alias
    assert "acme-large" not in complete(d.env, "bash", "tiqo models unload ")  # external models never load
    assert complete(d.env, "bash", "tiqo models rm acme") == ["acme-large"]
    fish = complete(d.env, "fish", "tiqo models load smo")
    assert len(fish) == 1 and fish[0].startswith("smollm2-135m\t")  # with its description
    zsh = "\n".join(complete(d.env, "zsh", "tiqo chat --model acme"))
    assert '"acme-large":"acme (external)"' in zsh, zsh


def test_provider_and_key_names_come_from_the_daemon(d: DaemonProc) -> None:
    assert complete(d.env, "bash", "tiqo keys list ") == ["acme"]
    assert sorted(complete(d.env, "bash", "tiqo keys rm acme ")) == ["backup", "primary"]
    assert complete(d.env, "bash", "tiqo keys disable acme pr") == ["primary"]
    assert complete(d.env, "bash", "tiqo keys rm nosuch ") == []
    everything = "\n".join(complete(d.env, "fish", "tiqo keys enable acme "))
    assert SECRET not in everything and "primary" in everything


def test_without_a_daemon_nothing_is_offered_and_none_is_started() -> None:
    home = short_home()
    try:
        env = home_env(home)  # autostart on, as a user's shell has it: completing must still never start one
        assert complete(env, "bash", "tiqo models load ") == []
        assert complete(env, "zsh", "tiqo ask -m ") == ["_files"]  # zsh's own fallback: no names
        assert complete(env, "bash", "tiqo mod") == ["models"]  # the command tree still completes
        assert not (home / "run" / "daemon.json").exists() and not (home / "run" / "tiqo.sock").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_voice_names_come_from_the_daemon(d: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiqo.cli import complete as names

    monkeypatch.setenv("TIQO_HOME", str(d.home))
    offered = dict(names.voices(""))
    assert "en_US-joe-medium" in offered, offered
    assert names.voices("zz-no-such") == []
    monkeypatch.setenv("TIQO_HOME", str(d.home / "nowhere"))  # no daemon there: nothing, at once
    assert names.voices("") == [] and names.models("") == []
