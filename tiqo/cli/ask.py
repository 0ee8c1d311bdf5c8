"""``tiqo ask`` (one prompt, streamed; pipes welcome) and ``tiqo chat`` (interactive, multi-turn)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from tiqo.cli import complete
from tiqo.cli.json_files import SCHEMA, TOOL, response_format, tool
from tiqo.cli.output import client, err_console, fail, handle_errors, print_json, prompt_text

MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="Model name (see `tiqo models list`); default: llm.default_model.",
    autocompletion=complete.models,
)
SYSTEM = typer.Option(None, "--system", "-s", help="System prompt.")
TEMPERATURE = typer.Option(None, "--temperature", "-t", min=0.0, max=2.0, help="Sampling temperature (0 = greedy).")
MAX_TOKENS = typer.Option(None, "--max-tokens", min=1, help="Most tokens to generate.")
SEED = typer.Option(None, "--seed", help="Random seed, for repeatable answers.")
KEEP_ALIVE = typer.Option(None, "--keep-alive", help="Keep the model loaded this long after the answer (5m, 1h, -1).")


def _payload(
    model: str | None,
    messages: list[dict[str, str]],
    temperature: float | None,
    max_tokens: int | None,
    seed: int | None,
    keep_alive: str | None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": messages}
    for key, value in (
        ("model", model),
        ("temperature", temperature),
        ("max_tokens", max_tokens),
        ("seed", seed),
        ("keep_alive", keep_alive),
    ):
        if value is not None:
            payload[key] = value
    return payload


USER = typer.Option(None, "--user", "-u", help="Who asks (per-user limits, restricted-cache scope).")
TIER = typer.Option(None, "--tier", help="Tier to route for (see [tiers] in config.toml).")
DATA_CLASS = typer.Option(
    None, "--class", help="Data class: public, internal, confidential or restricted (never leaves the machine)."
)
NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the response cache.")


def routing_headers(
    user: str | None, tier: str | None, data_class: str | None, no_cache: bool = False
) -> dict[str, str]:
    headers = {}
    for name, value in (("x-tiqo-user", user), ("x-tiqo-tier", tier), ("x-tiqo-class", data_class)):
        if value:
            headers[name] = value
    if no_cache:
        headers["x-tiqo-cache"] = "off"
    return headers


def _stream_answer(
    c: Any, payload: dict[str, Any], echo: bool, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Stream one answer to stdout (when ``echo``); returns the text, usage and timings."""
    interactive = sys.stderr.isatty() and sys.stdout.isatty()
    started = time.perf_counter()
    first_at: float | None = None
    parts: list[str] = []
    spinner = err_console.status("[dim]thinking…[/]", spinner="dots") if interactive and echo else None
    if spinner is not None:
        spinner.start()
    try:
        with c.chat_stream(payload, headers) as stream:
            for piece in stream.text():
                if first_at is None:
                    first_at = time.perf_counter()
                    if spinner is not None:
                        spinner.stop()
                parts.append(piece)
                if echo:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            got, usage, finish, served = stream.headers, stream.usage, stream.finish_reason, stream.served
    finally:
        if spinner is not None:
            spinner.stop()
    if echo:
        sys.stdout.write("\n")
        sys.stdout.flush()
    ended = time.perf_counter()
    return {
        "text": "".join(parts),
        "model": got.get("x-tiqo-model"),
        "backend": served.get("backend") or got.get("x-tiqo-backend"),
        "cost_usd": float(served.get("cost_usd", got.get("x-tiqo-cost-usd")) or 0),
        "cache": served.get("cache") or got.get("x-tiqo-cache"),
        "route": got.get("x-tiqo-route"),
        "attempts": int(got.get("x-tiqo-attempts") or 1),
        "usage": usage,
        "finish_reason": finish,
        "latency_s": round(ended - started, 4),
        "ttft_s": round((first_at or ended) - started, 4),
        "request_id": got.get("x-tiqo-request-id"),
        "sources": served.get("sources") or [],
    }


def _json_answer(c: Any, payload: dict[str, Any], headers: dict[str, str], json_out: bool) -> None:
    """One JSON answer (not streamed: only a whole answer can be validated), printed on one line."""
    reply = c.chat(payload, headers)
    choice = reply["choices"][0]
    try:
        value = json.loads(choice["message"].get("content") or "")
    except ValueError:
        fail(f"{reply.get('model')} answered with something that is not JSON", "try again, or another model (-m)")
    if json_out:
        print_json({"json": value, "model": reply.get("model"), "usage": reply.get("usage"), "id": reply.get("id")})
    else:
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _tool_calls(c: Any, payload: dict[str, Any], headers: dict[str, str], json_out: bool) -> None:
    """One answer that calls the given functions, printed as one JSON line per call (name, arguments)."""
    from tiqo.protocol.openai import plain_call  # pydantic models: only this path needs them

    reply = c.chat({**payload, "tool_choice": "required"}, headers)
    message = reply["choices"][0]["message"]
    calls = [plain_call(call) for call in message.get("tool_calls") or []]
    if not calls:
        fail(f"{reply.get('model')} answered without calling a function", "try again, or another model (-m)")
    if json_out:
        print_json(
            {"tool_calls": calls, "model": reply.get("model"), "usage": reply.get("usage"), "id": reply.get("id")}
        )
        return
    for call in calls:
        sys.stdout.write(json.dumps(call, ensure_ascii=False) + "\n")
    sys.stdout.flush()


@handle_errors
def ask(
    prompt: Optional[list[str]] = typer.Argument(None, help="The prompt. Text piped on stdin goes before it."),
    model: Optional[str] = MODEL,
    system: Optional[str] = SYSTEM,
    temperature: Optional[float] = TEMPERATURE,
    max_tokens: Optional[int] = MAX_TOKENS,
    seed: Optional[int] = SEED,
    keep_alive: Optional[str] = KEEP_ALIVE,
    user: Optional[str] = USER,
    tier: Optional[str] = TIER,
    data_class: Optional[str] = DATA_CLASS,
    no_cache: bool = NO_CACHE,
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON object (text, model, backend, usage, latency)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Say on stderr what served the answer and its cost."),
    rag: Optional[str] = typer.Option(
        None, "--rag", help="Answer from this vector collection (`tiqo vec list`); its sources print after the answer."
    ),
    top_k: int = typer.Option(4, "--top-k", min=1, max=20, help="With --rag: how many chunks to give the model."),
    schema: Optional[Path] = SCHEMA,
    tools: Optional[list[Path]] = TOOL,
) -> None:
    """Ask one question and stream the answer.

    With --schema, print the answer as one line of JSON that validates against the schema (exit code 1, and the
    reason, when the model could not produce it). With --tool, the answer calls one of the functions: each call prints
    as one JSON line, {"name": ..., "arguments": {...}}.

    Examples:

      tiqo ask "Name three primary colours."

      cat notes.txt | tiqo ask "Summarise this"

      tiqo ask --json -m smollm2-135m "What is the capital of France?" | jq -r .text

      tiqo ask --rag notes "When is the team meeting?"

      tiqo ask --schema person.json "Invent a person" | jq .name

      tiqo ask --tool weather.json "Is it raining in Oslo?"
    """
    text = prompt_text(prompt, 'tiqo ask "..."')
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    with client() as c:
        payload = _payload(model, messages, temperature, max_tokens, seed, keep_alive)
        if rag:
            payload["tiqo"] = {"rag": {"collection": rag, "top_k": top_k}}
        headers = routing_headers(user, tier, data_class, no_cache)
        if schema is not None:
            payload["response_format"] = response_format(schema)
            return _json_answer(c, payload, headers, json_out)
        if tools:
            payload["tools"] = [tool(path) for path in tools]
            return _tool_calls(c, payload, headers, json_out)
        result = _stream_answer(c, payload, not json_out, headers)
    _print_answer_extras(result, bool(rag), json_out, verbose)


def _print_answer_extras(result: dict[str, Any], rag: bool, json_out: bool, verbose: bool) -> None:
    """After a streamed answer: its sources (--rag), or the whole result (--json); what served it (--verbose)."""
    if rag and not json_out:
        _print_sources(result.get("sources") or [])
    if json_out:
        print_json(result)
    if verbose:
        _print_served(result)


def _print_sources(sources: list[dict[str, Any]]) -> None:
    sys.stdout.write("\nSources:\n" if sources else "\n(no sources found in the collection)\n")
    for src in sources:
        where = f"{src['source']}#{src['chunk']}" if src.get("chunk") is not None else str(src["source"])
        sys.stdout.write(f"  [{src['n']}] {where}  (score {float(src.get('score') or 0):.2f})\n")
    sys.stdout.flush()


def _print_served(result: dict[str, Any]) -> None:
    """--verbose: what served the answer, its tokens, timings and cost, on stderr."""
    use = result["usage"] or {}
    err_console.print(
        f"[dim]{result['model']} via {result['backend']} ({result['route']}, attempts {result['attempts']}, "
        f"cache {result['cache']}) · {use.get('prompt_tokens', '?')}+{use.get('completion_tokens', '?')} tokens · "
        f"first token {result['ttft_s']:.2f}s · total {result['latency_s']:.2f}s · ${result['cost_usd']:.6f} · "
        f"{result['request_id']}[/]"
    )


CHAT_HELP = """commands:
  /model NAME   switch model (history is kept)
  /system TEXT  set the system prompt
  /clear        forget the conversation
  /exit         leave (or Ctrl-D); Ctrl-C stops the current answer"""


def _readline_history(path: Any) -> None:
    with contextlib.suppress(Exception):
        import atexit
        import readline

        from tiqo.core.paths import make_private_dirs, tighten

        make_private_dirs(path.parent)
        tighten(path)  # what you typed: 0600 (an older tiqo may have left it readable by others)
        with contextlib.suppress(FileNotFoundError):
            readline.read_history_file(path)
        readline.set_history_length(1000)
        atexit.register(readline.write_history_file, path)


def _answer_ctrl_c() -> None:
    """Ctrl-C stops an answer even when tiqo was started with SIGINT ignored (a background job of a script, a CI
    runner: children inherit that, and Python then never raises KeyboardInterrupt). An interactive chat owns its
    terminal, as readline programs do."""
    import signal

    if sys.stdin.isatty() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@handle_errors
def chat(
    model: Optional[str] = MODEL,
    system: Optional[str] = SYSTEM,
    temperature: Optional[float] = TEMPERATURE,
    max_tokens: Optional[int] = MAX_TOKENS,
    seed: Optional[int] = SEED,
    keep_alive: Optional[str] = KEEP_ALIVE,
) -> None:
    """Chat interactively, with history. /help lists commands; Ctrl-C stops an answer; Ctrl-D exits.

    Example:

      tiqo chat -m smollm2-135m -s "Answer in one sentence."
    """
    _answer_ctrl_c()
    with client() as c:
        session = _open_chat(c, model, system)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                err_console.print()
                return
            except KeyboardInterrupt:
                err_console.print("\n[dim](Ctrl-D or /exit to leave)[/]")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if _chat_command(c, session, line):
                    return
                continue
            session.history.append({"role": "user", "content": line})
            messages = ([{"role": "system", "content": session.system}] if session.system else []) + session.history
            _chat_turn(c, session, _payload(session.model, messages, temperature, max_tokens, seed, keep_alive))


@dataclass
class _Chat:
    """What an interactive chat carries from one line to the next."""

    model: str | None
    system: str | None
    history: list[dict[str, str]] = field(default_factory=list)


def _open_chat(c: Any, model: str | None, system: str | None) -> _Chat:
    models = c.models()
    names = [m["name"] for m in models]
    current = model or next((m["name"] for m in models if m["default"]), None)
    if model is not None and model not in names:
        fail(f"model {model!r} not found; available: {', '.join(names)}", "`tiqo models list` shows models")
    _readline_history(c.settings.paths.state_dir / "chat_history")
    err_console.print(f"[dim]chatting with {current} — /help for commands, Ctrl-D to exit[/]")
    return _Chat(current, system)


def _chat_command(c: Any, session: _Chat, line: str) -> bool:
    """One /command; True when it ends the chat."""
    command, _, arg = line.partition(" ")
    arg = arg.strip()
    if command in ("/exit", "/quit", "/bye"):
        return True
    if command == "/help":
        err_console.print(CHAT_HELP)
    elif command == "/clear":
        session.history.clear()
        err_console.print("[dim]conversation cleared[/]")
    elif command == "/system":
        session.system = arg or None
        err_console.print(f"[dim]system prompt {'set' if session.system else 'cleared'}[/]")
    elif command == "/model":
        names = [m["name"] for m in c.models()]
        if arg not in names:
            err_console.print(f"[red]unknown model {arg!r}[/]; available: {', '.join(names)}")
        else:
            session.model = arg
            err_console.print(f"[dim]now chatting with {session.model}[/]")
    else:
        err_console.print(f"[red]unknown command {command}[/]\n{CHAT_HELP}")
    return False


def _chat_turn(c: Any, session: _Chat, payload: dict[str, Any]) -> None:
    """One streamed answer; Ctrl-C or a refusal takes the question back out of the history."""
    try:
        result = _stream_answer(c, payload, echo=True)
        session.history.append({"role": "assistant", "content": result["text"]})
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        err_console.print("[dim](stopped)[/]")
        session.history.pop()
    except Exception as exc:
        from tiqo.client import ApiError

        if not isinstance(exc, ApiError):
            raise
        session.history.pop()
        err_console.print(f"[red]tiqo:[/] {exc.message}" + (f"\n[dim]hint:[/] {exc.hint}" if exc.hint else ""))
