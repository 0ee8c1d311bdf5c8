"""The `tiqo` command end to end: real CLI subprocesses, real daemons on real Unix sockets, the bundled model.

Every daemon a test starts (directly or by autostart) is stopped in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect

from tests.conftest import DaemonProc, TiqoHome, home_env, run_cli, short_home, smollm_path, start_daemon, wait_for
from tiqo.client.process import pid_alive

MODEL = "smollm2-135m"
FAST = ("--max-tokens", "8", "-t", "0")
ANSI = "\x1b["


# --------------------------------------------------------------------------- helpers
@dataclass
class Home(TiqoHome):
    pids: set[int] = field(default_factory=set)

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    def daemon_pid(self) -> int | None:
        try:
            pid = json.loads(self.daemon_file.read_text()).get("pid")
        except (FileNotFoundError, ValueError):
            return None
        if isinstance(pid, int):
            self.pids.add(pid)
            return pid
        return None


@contextlib.contextmanager
def private_home(**extra_env: str) -> Iterator[Home]:
    """A fresh TIQO_HOME with no daemon; whatever daemon the test starts there is stopped afterwards."""
    path = short_home()
    home = Home(path, home_env(path, **extra_env))
    try:
        yield home
    finally:
        home.daemon_pid()
        if home.daemon_file.exists() or home.socket.exists():
            env = {k: v for k, v in home.env.items() if k != "TIQO_NO_AUTOSTART"}
            with contextlib.suppress(Exception):
                run_cli("daemon", "stop", env=env, timeout=60)
        for pid in home.pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not wait_for(lambda p=pid: not pid_alive(p), 20):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def stopped_daemon(d: DaemonProc) -> None:
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def ps_row(d: DaemonProc, name: str) -> dict[str, Any] | None:
    rows = d.client(10).get("/tiqo/ps").json()["models"]
    return next((r for r in rows if r["name"] == name), None)


# --------------------------------------------------------------------------- 1. autostart, warm model
def test_ask_autostarts_the_daemon_and_keeps_the_model_warm() -> None:
    with private_home() as h:
        assert not h.daemon_file.exists()
        r = h.cli("ask", "--json", *FAST, "Say hi.")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)  # the whole of stdout is one JSON object
        assert isinstance(out, dict)
        assert isinstance(out["text"], str) and out["text"].strip()
        assert out["model"] == MODEL
        assert out["backend"] == "local:llama.cpp"
        assert out["usage"]["prompt_tokens"] > 0
        assert 0 < out["usage"]["completion_tokens"] <= 8
        assert isinstance(out["latency_s"], float) and isinstance(out["ttft_s"], float)
        assert 0 <= out["ttft_s"] <= out["latency_s"]

        # The daemon was started in the background and serves on the home's socket.
        assert h.daemon_file.exists()
        info = json.loads(h.daemon_file.read_text())
        pid = h.daemon_pid()
        assert pid is not None and pid_alive(pid)
        assert info["socket"] == str(h.socket)
        assert h.socket.exists()

        # A second ask is answered by the same daemon, which does not load the model again.
        r2 = h.cli("ask", *FAST, "Say hi again.")
        assert r2.returncode == 0, r2.stderr
        assert r2.stdout.strip()
        assert h.daemon_pid() == pid and pid_alive(pid)
        status = h.cli("daemon", "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == pid
        loads = re.findall(rf"\bloaded {re.escape(MODEL)}\b", h.log_text())
        assert len(loads) == 1, h.log_text()

        stop = h.cli("daemon", "stop")
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert wait_for(lambda: not pid_alive(pid), 30)
        assert not h.daemon_file.exists() and not h.socket.exists()


# --------------------------------------------------------------------------- 2. pipes
def test_ask_puts_piped_stdin_before_the_prompt(daemon: DaemonProc) -> None:
    args = ("ask", "--json", "--max-tokens", "4", "-t", "0", "What is the secret word?")
    plain = daemon.cli(*args, input="")
    piped = daemon.cli(*args, input="The secret word is banana. " * 5)
    assert plain.returncode == 0, plain.stderr
    assert piped.returncode == 0, piped.stderr
    base = json.loads(plain.stdout)["usage"]["prompt_tokens"]
    more = json.loads(piped.stdout)["usage"]["prompt_tokens"]
    assert more > base + 10, (base, more)


def test_ask_prints_plain_text_without_ansi_to_a_pipe(daemon: DaemonProc) -> None:
    # A colour-capable TERM and no NO_COLOR: only the pipe should keep escape codes out.
    env = {k: v for k, v in daemon.env.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    r = run_cli("ask", "--verbose", *FAST, "Say hi.", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert r.stdout.endswith("\n")
    assert ANSI not in r.stdout and ANSI not in r.stderr
    # --verbose reports on stderr, never mixed into the answer on stdout.
    assert MODEL in r.stderr
    assert "local:llama.cpp" not in r.stdout

    err = run_cli("ask", "-m", "nope", "hi", env=env)
    assert err.returncode == 1
    assert ANSI not in err.stderr and ANSI not in err.stdout


# --------------------------------------------------------------------------- 3. exit codes
def test_unknown_model_exits_1_and_names_the_models(daemon: DaemonProc) -> None:
    r = daemon.cli("ask", "-m", "nope", *FAST, "hi")
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = first_line(r.stderr)
    assert line.startswith("tiqo:"), r.stderr
    assert "nope" in line and MODEL in line
    assert r.stdout == ""


def test_no_prompt_exits_2() -> None:
    with private_home() as h:
        for stdin in ("", "  \n\n"):
            r = h.cli("ask", input=stdin)
            assert r.returncode == 2, (stdin, r.stdout, r.stderr)
            assert first_line(r.stderr).startswith("tiqo:")
        assert not h.daemon_file.exists()


def test_no_autostart_exits_3_and_starts_nothing() -> None:
    with private_home() as h:
        r = h.cli("ask", "hi", TIQO_NO_AUTOSTART="1")
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert first_line(r.stderr).startswith("tiqo:")
        assert "autostart" in r.stderr

        r = h.cli("--no-autostart", "ask", "hi")
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert "autostart" in r.stderr

        cfg = h.cli("config", "set", "daemon.autostart", "false")
        assert cfg.returncode == 0, cfg.stderr
        r = h.cli("ask", "hi")
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert "autostart" in r.stderr

        assert not h.daemon_file.exists()
        assert not h.socket.exists()
        assert "serving on" not in h.log_text()


# --------------------------------------------------------------------------- 4. daemon lifecycle
def test_daemon_start_status_restart_logs_stop() -> None:
    with private_home() as h:
        r = h.cli("daemon", "start")
        assert r.returncode == 0, r.stderr
        assert "started" in r.stdout
        pid = h.daemon_pid()
        assert pid is not None and pid_alive(pid)

        again = h.cli("daemon", "start")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout and h.daemon_pid() == pid

        st = h.cli("daemon", "status", "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["running"] is True
        assert status["pid"] == pid
        assert status["version"]
        assert status["socket"] == str(h.socket)
        assert isinstance(status["ps"]["models"], list)

        human = h.cli("daemon", "status")
        assert human.returncode == 0, human.stderr
        assert "pid" in human.stdout and str(pid) in human.stdout
        assert str(h.socket) in human.stdout

        rs = h.cli("daemon", "restart")
        assert rs.returncode == 0, rs.stderr
        assert "started" in rs.stdout
        new_pid = h.daemon_pid()
        assert new_pid is not None and new_pid != pid
        assert f"pid {new_pid}" in rs.stdout
        assert pid_alive(new_pid)
        assert wait_for(lambda: not pid_alive(pid), 30), "the old daemon still runs after restart"
        st2 = h.cli("daemon", "status", "--json")
        assert st2.returncode == 0 and json.loads(st2.stdout)["pid"] == new_pid

        logs = h.cli("daemon", "logs", "-n", "5")
        assert logs.returncode == 0, logs.stderr
        lines = logs.stdout.splitlines()
        assert 1 <= len(lines) <= 5, logs.stdout

        stop = h.cli("daemon", "stop")
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert wait_for(lambda: not pid_alive(new_pid), 30)
        after = h.cli("daemon", "status")
        assert after.returncode == 3, (after.stdout, after.stderr)
        after_json = h.cli("daemon", "status", "--json")
        assert after_json.returncode == 3
        assert json.loads(after_json.stdout)["running"] is False
        assert not h.socket.exists()
        assert not h.daemon_file.exists()


# --------------------------------------------------------------------------- 5. stale files
def test_stale_status_file_and_socket_are_replaced() -> None:
    with private_home() as h:
        h.run_dir.mkdir(mode=0o700, parents=True)
        os.chmod(h.run_dir, 0o700)
        dead = subprocess.Popen(["true"])
        dead.wait()
        assert not pid_alive(dead.pid)
        h.daemon_file.write_text(json.dumps({"pid": dead.pid, "socket": str(h.socket), "version": "0"}))
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(h.socket))
        stale.close()  # the file stays behind, and nothing answers on it
        assert h.socket.exists()

        st = h.cli("daemon", "status")
        assert st.returncode == 3, (st.stdout, st.stderr)

        r = h.cli("daemon", "start")
        assert r.returncode == 0, (r.stdout, r.stderr)
        pid = h.daemon_pid()
        assert pid is not None and pid != dead.pid and pid_alive(pid)
        ps = h.cli("ps", "--json", TIQO_NO_AUTOSTART="1")
        assert ps.returncode == 0, ps.stderr
        assert json.loads(ps.stdout)["models"] == []
        st = h.cli("daemon", "status", "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["pid"] == pid

        stop = h.cli("daemon", "stop")
        assert stop.returncode == 0 and "stopped" in stop.stdout
        assert wait_for(lambda: not pid_alive(pid), 30)


# --------------------------------------------------------------------------- 6. SIGTERM
def test_sigterm_unloads_models_and_removes_the_socket() -> None:
    d = start_daemon()
    try:
        r = d.cli("models", "load", MODEL)
        assert r.returncode == 0, r.stderr
        assert f"loaded {MODEL}" in r.stdout
        daemon_file = d.home / "run" / "daemon.json"
        assert daemon_file.exists() and d.socket.exists()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(60)
        log = d.log_text()
        problems = []
        if code != 0:
            problems.append(f"exit code {code} (not 0)")
        if f"unloaded {MODEL}" not in log:
            problems.append("the model was not unloaded")
        if d.socket.exists():
            problems.append(f"the socket {d.socket} was left behind")
        if daemon_file.exists():
            problems.append(f"{daemon_file} was left behind")
        assert not problems, "after SIGTERM: " + "; ".join(problems) + "\n--- log tail:\n" + log[-1500:]
    finally:
        stopped_daemon(d)


# --------------------------------------------------------------------------- 7. models
def _model_names(d: DaemonProc) -> dict[str, dict[str, Any]]:
    r = d.cli("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {m["name"]: m for m in json.loads(r.stdout)}


def _ps_names(d: DaemonProc) -> list[str]:
    r = d.cli("ps", "--json")
    assert r.returncode == 0, r.stderr
    return [m["name"] for m in json.loads(r.stdout)["models"]]


def test_models_add_ask_load_unload_rm(fresh_daemon: DaemonProc) -> None:
    d = fresh_daemon
    models = _model_names(d)
    assert models[MODEL]["default"] is True
    assert "gemma3-270m" in models and models["gemma3-270m"]["default"] is False

    gguf = smollm_path()
    add = d.cli("models", "add", "mysmol", str(gguf))
    assert add.returncode == 0, add.stderr
    models = _model_names(d)
    assert "mysmol" in models
    assert models["mysmol"]["path"] == str(gguf.absolute())
    assert models["mysmol"]["default"] is False

    ask = d.cli("ask", "-m", "mysmol", "--max-tokens", "4", "-t", "0", "--json", "hi")
    assert ask.returncode == 0, ask.stderr
    assert json.loads(ask.stdout)["model"] == "mysmol"

    load = d.cli("models", "load", "mysmol", "--keep-alive", "10m", "--json")
    assert load.returncode == 0, load.stderr
    assert json.loads(load.stdout)["keep_alive_s"] == 600
    assert "mysmol" in _ps_names(d)

    unload = d.cli("models", "unload", "mysmol")
    assert unload.returncode == 0, unload.stderr
    assert "unloaded mysmol" in unload.stdout
    assert "mysmol" not in _ps_names(d)

    rm = d.cli("models", "rm", "mysmol")
    assert rm.returncode == 0, rm.stderr
    assert "mysmol" not in _model_names(d)
    assert gguf.exists()  # rm unregisters; the file stays

    bad = d.cli("models", "add", "bad", "/etc/hostname")
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert first_line(bad.stderr).startswith("tiqo:")
    assert "not a GGUF file" in bad.stderr
    assert "bad" not in _model_names(d)

    bundled = d.cli("models", "rm", MODEL)
    assert bundled.returncode == 1, (bundled.stdout, bundled.stderr)
    assert "bundled" in bundled.stderr
    assert MODEL in _model_names(d)


# --------------------------------------------------------------------------- 8. config
def _config_row(h: Home, key: str, **env: str) -> dict[str, Any]:
    r = run_cli("config", "show", "--json", env={**h.env, **env})
    assert r.returncode == 0, r.stderr
    return next(row for row in json.loads(r.stdout) if row["key"] == key)


def test_config_path_set_show_unset() -> None:
    with private_home() as h:
        config_file = h.home / "config" / "config.toml"
        p = h.cli("config", "path")
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(config_file)

        s = h.cli("config", "set", "scheduler.keep_alive", "10m")
        assert s.returncode == 0, s.stderr
        assert tomllib.loads(config_file.read_text())["scheduler"]["keep_alive"] == "10m"

        row = _config_row(h, "scheduler.keep_alive")
        assert row["value"] == "10m" and row["source"] == "config.toml"
        assert row["env"] == "TIQO_KEEP_ALIVE"
        row = _config_row(h, "scheduler.keep_alive", TIQO_KEEP_ALIVE="1m")
        assert row["value"] == "1m" and row["source"] == "env TIQO_KEEP_ALIVE"

        never = h.cli("config", "set", "scheduler.keep_alive", "-1")  # a negative value is a value, not an option
        assert never.returncode == 0, never.stderr
        assert tomllib.loads(config_file.read_text())["scheduler"]["keep_alive"] == "-1"
        assert h.cli("config", "set", "scheduler.keep_alive", "10m").returncode == 0

        bogus = h.cli("config", "set", "scheduler.keep_alive", "bogus")
        assert bogus.returncode == 2, (bogus.stdout, bogus.stderr)
        assert first_line(bogus.stderr).startswith("tiqo:")
        assert tomllib.loads(config_file.read_text())["scheduler"]["keep_alive"] == "10m"

        unknown = h.cli("config", "set", "no.such.key", "1")
        assert unknown.returncode == 2, (unknown.stdout, unknown.stderr)
        assert "no.such.key" in unknown.stderr
        assert "no" not in tomllib.loads(config_file.read_text())

        u = h.cli("config", "unset", "scheduler.keep_alive")
        assert u.returncode == 0, u.stderr
        assert "keep_alive" not in tomllib.loads(config_file.read_text()).get("scheduler", {})
        row = _config_row(h, "scheduler.keep_alive")
        assert row["source"] == "default" and row["value"] == "5m"

        # Config commands work on files only: none of them started a daemon.
        assert not h.daemon_file.exists()


# --------------------------------------------------------------------------- 9. chat
def _spawn_chat(d: DaemonProc, *args: str, **spawn: Any) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tiqo", "chat", "-t", "0", *args],
        env=d.env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
        cwd=str(Path(__file__).parent.parent),
        **spawn,
    )
    child.expect_exact(">>> ")
    return child


def _quit(child: pexpect.spawn) -> None:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus, child.before)


def test_chat_session_commands_and_ctrl_c(fresh_daemon: DaemonProc) -> None:
    d = fresh_daemon
    child = _spawn_chat(d, "--max-tokens", "12")
    try:
        child.sendline("Hello")
        child.expect_exact(">>> ")
        answer = child.before.replace("\r", "").split("Hello\n", 1)[-1]
        assert answer.strip(), child.before

        child.sendline("/model gemma3-270m")
        child.expect_exact("now chatting with gemma3-270m")
        child.expect_exact(">>> ")
        child.sendline("/model nope")
        child.expect_exact("unknown model")
        child.expect_exact(">>> ")
        child.sendline("/model smollm2-135m")
        child.expect_exact("now chatting with smollm2-135m")
        child.expect_exact(">>> ")
        child.sendline("Hi")
        child.expect_exact(">>> ")
        # Only smollm2 answered: switching models loads nothing until a prompt is sent.
        assert [r["name"] for r in d.client(10).get("/tiqo/ps").json()["models"]] == [MODEL]
        row = ps_row(d, MODEL)
        assert row is not None and row["requests_served"] == 2
        _quit(child)
    finally:
        child.close(force=True)

    # Ctrl-C stops a long answer: the CLI says so, and the daemon stops generating. The chat is started with SIGINT
    # ignored, as a background job of a script (or a CI runner) is: an interactive chat answers Ctrl-C all the same.
    child = _spawn_chat(d, "--max-tokens", "3000", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        prompt = "Write a very long story about a dragon."
        child.sendline(prompt)
        child.expect_exact(prompt)
        assert wait_for(lambda: (ps_row(d, MODEL) or {}).get("in_flight") == 1, 60)  # the answer is being written
        child.sendintr()
        child.expect_exact("(stopped)", timeout=30)
        child.expect_exact(">>> ")
        # A 3000-token answer takes far longer than this; in_flight drops only if the generation was stopped.
        assert wait_for(lambda: (ps_row(d, MODEL) or {}).get("in_flight") == 0, 20, 0.2), ps_row(d, MODEL)
        _quit(child)
    finally:
        child.close(force=True)


def test_daemon_killed_mid_answer_is_a_clear_error_and_the_next_ask_recovers() -> None:
    home = short_home()
    env = home_env(home)
    try:
        first = run_cli("ask", "--max-tokens", "2", "-t", "0", "hi", env=env)
        assert first.returncode == 0, first.stderr
        pid = json.loads((home / "run" / "daemon.json").read_text())["pid"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tiqo", "ask", "--max-tokens", "3000", "Write a very long story about a dragon."],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.read(20)  # the answer is streaming
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert err.startswith("tiqo: the daemon went away") and "Traceback" not in err
        again = run_cli("ask", "--json", "--max-tokens", "2", "-t", "0", "hi", env=env)
        assert again.returncode == 0, again.stderr
        assert json.loads((home / "run" / "daemon.json").read_text())["pid"] != pid
    finally:
        run_cli("daemon", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)
