"""The gateway's commands end to end: `tiqo providers|keys|route|plugins|cache` and external models in
`tiqo models`, as real CLI subprocesses against one real daemon (no traffic to any provider)."""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, DaemonProc, run_cli, start_daemon

SECRET = "sk-tiqotest-" + secrets.token_hex(16)
SECRET2 = "sk-tiqotest-" + secrets.token_hex(16)
DEAD_URL = "http://127.0.0.1:9/v1"  # never contacted: nothing here sends a request upstream


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    daemon = start_daemon(TIQO_NO_AUTOSTART="1")
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def narrow(result: subprocess.CompletedProcess[str]) -> None:
    too_wide = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not too_wide, "lines wider than 80 columns:\n" + "\n".join(too_wide)


def add_provider(d: DaemonProc, name: str, *extra: str) -> None:
    ok(d.cli("providers", "add", name, "--kind", "openai", "--base-url", DEAD_URL, *extra))


# --------------------------------------------------------------------------- providers
def test_providers_add_list_rm(d: DaemonProc) -> None:
    add = ok(
        d.cli(
            "providers", "add", "acme", "--kind", "openai", "--base-url", DEAD_URL,
            "--key-strategy", "least-used", "--max-class", "internal",
            "--timeout-connect", "2s", "--timeout-first-byte", "10s", "--timeout-idle", "5s",
            "--header", "X-Org: org-1", "--header", "X-Team: blue",
        )
    )  # fmt: skip
    assert "added provider acme" in add.stdout
    assert "tiqo keys add acme" in add.stdout
    assert "tiqo models add MODEL --provider acme --upstream-model M --price-in X --price-out Y" in add.stdout

    rows = {p["name"]: p for p in as_json(d.cli("providers", "list", "--json"))["providers"]}
    acme = rows["acme"]
    assert (acme["kind"], acme["base_url"], acme["keys"]) == ("openai", DEAD_URL, 0)
    assert (acme["key_strategy"], acme["max_class"]) == ("least-used", "internal")
    assert acme["status"].startswith("no keys") and "tiqo keys add acme" in acme["status"]
    assert acme["timeouts"] == {"connect": 2.0, "first_byte": 10.0, "idle": 5.0}
    config = (d.home / "config" / "config.toml").read_text()
    assert "X-Org" in config and "org-1" in config and "X-Team" in config

    table = ok(d.cli("providers", "list", COLUMNS="80"))
    for word in ("NAME", "KIND", "BASE URL", "KEYS", "STATUS", "MODELS", "acme", "no keys"):
        assert word in table.stdout, table.stdout
    narrow(table)

    again = d.cli("providers", "add", "acme", "--kind", "openai", "--base-url", DEAD_URL)
    assert again.returncode == 1 and "already exists" in again.stderr, again.stderr

    ok(d.cli("providers", "rm", "acme"))
    assert "acme" not in {p["name"] for p in as_json(d.cli("providers", "list", "--json"))["providers"]}
    gone = d.cli("providers", "rm", "acme")
    assert gone.returncode == 1 and "no provider named 'acme'" in gone.stderr, gone.stderr
    assert "hint:" in gone.stderr


def test_providers_add_refuses_bad_input(d: DaemonProc) -> None:
    unknown = d.cli("providers", "add", "weird", "--kind", "carrier-pigeon", "--base-url", DEAD_URL)
    assert unknown.returncode == 1, unknown.stderr
    assert "unknown provider kind 'carrier-pigeon'" in unknown.stderr
    assert "tiqo plugins" in unknown.stderr  # the hint names the command that lists kinds

    header = d.cli("providers", "add", "weird", "--base-url", DEAD_URL, "--header", "no colon here")
    assert header.returncode == 2 and "Name: value" in header.stderr, header.stderr
    strategy = d.cli("providers", "add", "weird", "--base-url", DEAD_URL, "--key-strategy", "random")
    assert strategy.returncode == 2, strategy.stderr
    url = d.cli("providers", "add", "weird", "--base-url", "ftp://example.com")
    assert url.returncode == 1 and "http" in url.stderr, url.stderr
    assert "weird" not in {p["name"] for p in as_json(d.cli("providers", "list", "--json"))["providers"]}


# --------------------------------------------------------------------------- keys
def test_keys_lifecycle_never_shows_the_secret(d: DaemonProc) -> None:
    add_provider(d, "sec")
    seen: list[subprocess.CompletedProcess[str]] = []

    def run(*args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        result = run_cli(*args, env={**d.env, **env}, input=input)
        seen.append(result)
        return result

    added = ok(run("keys", "add", "sec", "--name", "main", "--rpd", "100", "--rpm", "5", input=SECRET + "\n"))
    assert f"added key sec/main ({SECRET[:3]}…{SECRET[-4:]})" in added.stdout, added.stdout
    assert "healthy" in added.stdout
    second = json.loads(
        ok(run("keys", "add", "sec", "--tpd", "50000", "--reset", "07:00", "--tz", "America/New_York", "--json",
               input=SECRET2)).stdout
    )  # fmt: skip
    assert second["name"] == "key2" and second["key"] == f"{SECRET2[:3]}…{SECRET2[-4:]}"
    assert (second["reset"], second["tz"], second["limits"]["tpd"]) == ("07:00", "America/New_York", 50000)

    keys_file = d.home / "config" / "keys.toml"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600

    dup = run("keys", "add", "sec", "--name", "again", input=SECRET)
    assert dup.returncode == 1 and "already registered" in dup.stderr, dup.stderr
    empty = run("keys", "add", "sec", input="  \n")
    assert empty.returncode == 2 and "no API key" in empty.stderr, empty.stderr

    rows = {k["name"]: k for k in json.loads(ok(run("keys", "list", "--json")).stdout) if k["provider"] == "sec"}
    assert set(rows) == {"main", "key2"}
    assert rows["main"]["status"] == "healthy" and rows["main"]["limits"]["rpd"] == 100
    table = ok(run("keys", "list", "sec", COLUMNS="80"))
    for word in ("PROVIDER", "NAME", "KEY", "STATUS", "USAGE", "RESET", "main", "key2", "healthy", "0/100"):
        assert word in table.stdout, table.stdout
    assert "07:00" in table.stdout
    narrow(table)
    providers = json.loads(ok(run("providers", "list", "--json")).stdout)["providers"]
    assert next(p for p in providers if p["name"] == "sec")["keys"] == 2

    disabled = ok(run("keys", "disable", "sec", "main"))
    assert "disabled: by user" in disabled.stdout, disabled.stdout
    assert "disabled: by user" in ok(run("keys", "list", "sec", COLUMNS="200")).stdout
    row = next(k for k in json.loads(ok(run("keys", "list", "sec", "--json")).stdout) if k["name"] == "main")
    assert row["status"] == "disabled"
    assert json.loads(ok(run("keys", "enable", "sec", "main", "--json")).stdout)["status"] == "healthy"

    ok(run("keys", "rm", "sec", "key2"))
    assert [k["name"] for k in json.loads(ok(run("keys", "list", "sec", "--json")).stdout)] == ["main"]
    missing = run("keys", "rm", "sec", "nope")
    assert missing.returncode == 1 and "no key named 'nope'" in missing.stderr and "hint:" in missing.stderr
    unknown = run("keys", "list", "nobody")
    assert unknown.returncode == 1 and "no provider named" in unknown.stderr

    for result in seen:
        for secret in (SECRET, SECRET2):
            assert secret not in result.stdout and secret not in result.stderr, result.args
    assert SECRET not in d.log_text() and SECRET2 not in d.log_text()
    assert SECRET in keys_file.read_text()  # stored, just never shown

    ok(d.cli("providers", "rm", "sec"))  # takes its keys with it
    assert SECRET not in keys_file.read_text()


def test_keys_add_prompts_with_hidden_input_on_a_terminal(d: DaemonProc) -> None:
    add_provider(d, "tty")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tiqo", "keys", "add", "tty", "--name", "typed"],
        env=d.env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
        cwd=str(ROOT),
    )
    try:
        child.expect("API key for tty")
        child.sendline(SECRET)
        child.expect(pexpect.EOF)
        seen = (child.before or "") + (child.after if isinstance(child.after, str) else "")
    finally:
        child.close()
    assert child.exitstatus == 0, seen
    assert "added key tty/typed" in seen, seen
    assert SECRET not in seen  # not echoed while typed, not printed after
    ok(d.cli("providers", "rm", "tty"))


# --------------------------------------------------------------------------- models
def test_models_add_external_and_list(d: DaemonProc) -> None:
    add_provider(d, "ext")
    added = ok(
        d.cli(
            "models", "add", "ext-gpt", "--provider", "ext", "--upstream-model", "gpt-4o",
            "--price-in", "2.5", "--price-out", "10", "--context", "128000",
            "--capability", "chat", "--capability", "tools", "--fallback", "smollm2-135m",
        )
    )  # fmt: skip
    assert "added ext-gpt → ext/gpt-4o" in added.stdout, added.stdout

    rows = {m["name"]: m for m in as_json(d.cli("models", "list", "--json"))}
    ext = rows["ext-gpt"]
    assert (ext["source"], ext["upstream_model"], ext["price_in"], ext["price_out"]) == (
        "provider:ext",
        "gpt-4o",
        2.5,
        10.0,
    )
    assert ext["context"] == 128000 and ext["capabilities"] == ["chat", "tools"]
    assert ext["fallbacks"] == ["smollm2-135m"]
    assert rows["smollm2-135m"]["default"] is True  # local models are still there

    table = ok(d.cli("models", "list", COLUMNS="80")).stdout
    line = next(line for line in table.splitlines() if line.startswith("ext-gpt"))
    assert "provider:ext" in line and line.split()[2:4] == ["-", "-"], line
    assert "smollm2-135m *" in table
    assert "aliases:" in table and "→" in table

    providers = as_json(d.cli("providers", "list", "--json"))["providers"]
    assert next(p for p in providers if p["name"] == "ext")["models"] == ["ext-gpt"]
    in_use = d.cli("providers", "rm", "ext")
    assert in_use.returncode == 1 and "used by models ext-gpt" in in_use.stderr, in_use.stderr

    both = d.cli("models", "add", "x1", "/tmp/x.gguf", "--provider", "ext")
    assert both.returncode == 2 and "not both" in both.stderr, both.stderr
    neither = d.cli("models", "add", "x1")
    assert neither.returncode == 2 and "either PATH" in neither.stderr, neither.stderr
    stray = d.cli("models", "add", "x1", "/tmp/x.gguf", "--price-in", "1")
    assert stray.returncode == 2 and "--price-in" in stray.stderr, stray.stderr
    no_provider = d.cli("models", "add", "x1", "--provider", "nobody")
    assert no_provider.returncode == 1 and "no provider named 'nobody'" in no_provider.stderr

    ok(d.cli("models", "rm", "ext-gpt"))
    ok(d.cli("providers", "rm", "ext"))
    assert "ext-gpt" not in {m["name"] for m in as_json(d.cli("models", "list", "--json"))}


# --------------------------------------------------------------------------- route explain
def test_route_explain(d: DaemonProc) -> None:
    prompt = "Write a python function that reverses a list"
    shown = ok(d.cli("route", "explain", prompt, COLUMNS="80"))
    assert "task code" in shown.stdout, shown.stdout
    for word in ("complexity", "class", "user", "tier", "signals", "route", "MODEL", "PRICE", "KEPT", "REASON"):
        assert word in shown.stdout, shown.stdout
    assert "→ chosen: " in shown.stdout
    narrow(shown)
    result = as_json(d.cli("route", "explain", "--json", prompt))
    assert result["classification"]["task"] == "code"
    assert result["chosen"] and result["candidates"]

    forced = as_json(
        d.cli("route", "explain", "--json", "--task", "reasoning", "--user", "ann", "--tier", "default", "hi")
    )
    assert forced["classification"]["task"] == "reasoning" and forced["classification"]["user"] == "ann"
    piped = as_json(d.cli("route", "explain", "--json", "--max-tokens", "7", "summarise", input="x" * 4000))
    assert piped["est_prompt_tokens"] > 900 and piped["max_tokens"] == 7

    add_provider(d, "rprov", "--no-auth")  # a keyless server: available without keys
    ok(d.cli("models", "add", "rmodel", "--provider", "rprov", "--price-in", "1", "--price-out", "2"))
    try:
        kept = as_json(d.cli("route", "explain", "--json", "-m", "rmodel", "--class", "public", "hello"))
        assert kept["chosen"] == "rmodel" and kept["candidates"][0]["provider"] == "rprov"
        assert kept["candidates"][0]["est_cost_usd"] > 0

        dropped = d.cli("route", "explain", "-m", "rmodel", "--class", "restricted", "hello", COLUMNS="80")
        assert dropped.returncode == 1, dropped.stderr
        assert "no candidate" in dropped.stdout and "restricted" in dropped.stdout
        narrow(dropped)
        raw = d.cli("route", "explain", "--json", "-m", "rmodel", "--class", "restricted", "hello")
        assert raw.returncode == 1
        data = json.loads(raw.stdout)
        assert data["chosen"] is None
        assert not data["candidates"][0]["kept"] and "restricted" in data["candidates"][0]["reason"]
    finally:
        ok(d.cli("models", "rm", "rmodel"))
        ok(d.cli("providers", "rm", "rprov"))

    nothing = d.cli("route", "explain")
    assert nothing.returncode == 2 and "no prompt" in nothing.stderr
    bad_class = d.cli("route", "explain", "--class", "secret", "hi")
    assert bad_class.returncode == 2


# --------------------------------------------------------------------------- plugins and cache
def test_plugins(d: DaemonProc) -> None:
    shown = ok(d.cli("plugins", COLUMNS="80")).stdout
    for word in ("builtin", "engine:llama.cpp", "provider:openai", "provider:anthropic", "provider:gemini"):
        assert word in shown, shown
    assert "provider kinds: anthropic, gemini, openai" in shown
    report = as_json(d.cli("plugins", "--json"))
    assert {"openai", "anthropic", "gemini"} <= set(report["provider_kinds"])
    assert "llama.cpp" in report["engines"] and report["failed"] == []


def test_cache_stats_and_clear(d: DaemonProc) -> None:
    shown = ok(d.cli("cache", "stats")).stdout
    for word in ("entries", "size", "hits", "misses", "hit rate", "mode", "ttl", "scopes"):
        assert word in shown, shown
    stats = as_json(d.cli("cache", "stats", "--json"))
    assert {"entries", "bytes", "hits", "misses", "hit_rate", "mode", "ttl_s", "scopes"} <= set(stats)
    assert "removed 0 expired cache entries" in ok(d.cli("cache", "clear", "--expired")).stdout
    assert as_json(d.cli("cache", "clear", "--json")) == {"removed": 0}


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [
        ["providers", "list"], ["providers", "add"], ["providers", "rm"],
        ["keys", "list"], ["keys", "add"], ["keys", "rm"], ["keys", "enable"], ["keys", "disable"],
        ["route", "explain"], ["plugins"], ["cache", "stats"], ["cache", "clear"], ["models", "add"],
    ],
    ids=" ".join,
)  # fmt: skip
def test_help_has_an_example(command: list[str]) -> None:
    from tiqo.cli.app import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "tiqo " + command[0] in result.output
