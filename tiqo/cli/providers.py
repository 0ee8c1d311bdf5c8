"""``tiqo providers list|add|rm``: external endpoints (OpenAI, Anthropic, Gemini or a plugin's kind)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Optional

import typer
from rich.markup import escape as _escape
from rich.table import Table

from tiqo.cli.output import EXIT_USAGE, client, console, fail, handle_errors, print_json

app = typer.Typer(help="List, add and remove external providers (API endpoints).", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON.")


class KeyStrategy(StrEnum):
    round_robin = "round-robin"
    least_used = "least-used"
    weighted = "weighted"


class MaxClass(StrEnum):
    public = "public"
    internal = "internal"
    confidential = "confidential"


def status_markup(status: str) -> str:
    return "[green]available[/]" if status == "available" else f"[yellow]{_escape(status)}[/]"


@app.command("list")
@handle_errors
def list_providers(json_out: bool = JSON) -> None:
    """List providers: kind, base URL, number of keys, status and the models that use them.

    A provider with replicas shows each endpoint: healthy, outstanding, served, last error.

    Example: tiqo providers list
    """
    with client() as c:
        data = c.providers()
    if json_out:
        print_json(data)
        return
    rows: list[dict[str, Any]] = data.get("providers", [])
    if not rows:
        console.print("no providers configured")
        console.print(
            "[dim]add one with `tiqo providers add NAME --kind KIND --base-url URL` "
            f"(kinds: {', '.join(data.get('kinds', [])) or 'none loaded'})[/]"
        )
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME", overflow="fold")
    table.add_column("KIND")
    table.add_column("BASE URL", overflow="fold")
    table.add_column("KEYS", justify="right")
    table.add_column("STATUS", overflow="fold")
    table.add_column("MODELS", overflow="fold")
    for r in rows:
        table.add_row(
            _escape(r["name"]),
            _escape(r["kind"]),
            _escape(r["base_url"]),
            str(r["keys"]),
            status_markup(str(r["status"])),
            _escape(", ".join(r.get("models") or []) or "-"),
        )
        for e in r.get("endpoints") or ():
            health = "[green]healthy[/]" if e["healthy"] else "[red]out[/]"
            detail = f"{health} · {e['outstanding']} outstanding · {e['served']} served · weight {e['weight']:g}"
            if e.get("last_error"):
                detail += f" · last error: {_escape(str(e['last_error']))}"
            table.add_row("", "", f"  └ {_escape(e['url'])}", "", detail, "")
    console.print(table)


def _headers(provider: str, values: list[str]) -> dict[str, str] | None:
    """Extra headers from ``-H 'Name: value'``; a credential (Authorization, x-api-key, ...) is refused: on the
    command line it would be in the shell history and visible to every user in the process list."""
    from tiqo.core.redact import is_secret_header

    headers: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            shown = (raw.split() or ["''"])[0]  # never echo what may be a key
            fail(f"--header {shown} … is not 'Name: value'", "e.g. --header 'OpenAI-Organization: org-123'", EXIT_USAGE)
        if is_secret_header(name):
            fail(
                f"--header {name!r} would put a credential on the command line (shell history, process list)",
                f"give the key with `tiqo keys add {provider}` (it reads it from stdin or a hidden prompt and stores "
                "it in keys.toml, mode 0600); the provider's kind sends it in its own auth header",
                EXIT_USAGE,
            )
        headers[name] = value.strip()
    return headers or None


def _endpoint(raw: str) -> dict[str, Any]:
    """``URL`` or ``URL,weight=N``."""
    url, _, rest = raw.partition(",")
    entry: dict[str, Any] = {"url": url.strip()}
    if rest:
        name, _, value = rest.partition("=")
        try:
            if name.strip() != "weight":
                raise ValueError
            entry["weight"] = float(value)
        except ValueError:
            fail(
                f"--endpoint {raw!r} is not URL or URL,weight=N",
                "e.g. --endpoint http://10.0.0.6:8000/v1,weight=2",
                EXIT_USAGE,
            )
    return entry


def _key_from(provider: str, source: str) -> str:
    """A key from stdin / a hidden prompt ('-') or an environment variable ('env:VAR'), never the command line."""
    import os

    from tiqo.cli.keys import _read_secret

    if source == "-":
        return _read_secret(provider)
    if source.startswith("env:") and os.environ.get(source[4:], "").strip():
        return os.environ[source[4:]].strip()
    if source.startswith("env:"):
        fail(f"environment variable {source[4:]} is empty or not set", "export it first, or use --key -", EXIT_USAGE)
    fail(
        "--key takes '-' or env:VAR, not the key itself (it would stay in the shell history and the process list)",
        f"pipe it in: `printenv TOKEN | tiqo providers add {provider} … --key -`",
        EXIT_USAGE,
    )
    raise AssertionError  # fail() exits


TIMEOUT_FIRST_BYTE = typer.Option(
    None, "--timeout-first-byte", help="Longest wait for the first byte of the answer, e.g. 20s."
)
TIMEOUT_IDLE = typer.Option(None, "--timeout-idle", help="Longest silence in the middle of an answer, e.g. 15s.")
HEADER = typer.Option(
    [], "--header", "-H", help="Extra HTTP header 'Name: value' (repeatable; not for keys: `tiqo keys add`)."
)
ENDPOINT = typer.Option(
    [],
    "--endpoint",
    "-e",
    help="A replica serving the same models: URL or URL,weight=N (repeatable; requests go to the least busy).",
)
TRUSTED = typer.Option(
    False,
    "--trusted",
    help="Inside your trust boundary (another tiqo on your own network): it may receive restricted data.",
)
KEY = typer.Option(
    None,
    "--key",
    help="Also add its key (a remote tiqo's token): '-' reads it from stdin or a hidden prompt, env:VAR from "
    "an environment variable; never the key itself (shell history).",
)


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Name to use for it, e.g. openai or groq."),
    kind: str = typer.Option(
        "openai", "--kind", "-k", help="Protocol: openai, anthropic, gemini or a plugin's kind (see `tiqo plugins`)."
    ),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="Endpoint, e.g. https://api.groq.com/openai/v1 (default: the kind's own)."
    ),
    key_strategy: Optional[KeyStrategy] = typer.Option(None, "--key-strategy", help="How to spread work over keys."),
    max_class: Optional[MaxClass] = typer.Option(
        None, "--max-class", help="Highest data class it may see (default: confidential)."
    ),
    timeout_connect: Optional[str] = typer.Option(None, "--timeout-connect", help="Connect timeout, e.g. 3s."),
    timeout_first_byte: Optional[str] = TIMEOUT_FIRST_BYTE,
    timeout_idle: Optional[str] = TIMEOUT_IDLE,
    header: list[str] = HEADER,
    no_auth: bool = typer.Option(False, "--no-auth", help="A keyless server (a local vLLM or llama.cpp server)."),
    endpoint: list[str] = ENDPOINT,
    trusted: bool = TRUSTED,
    key: Optional[str] = KEY,
    json_out: bool = JSON,
) -> None:
    """Add an external provider. Its keys go in with `tiqo keys add`, its models with `tiqo models add`.

    Examples:

      tiqo providers add groq --kind openai --base-url https://api.groq.com/openai/v1

      tiqo providers add vllm --no-auth -e http://10.0.0.5:8000/v1 -e http://10.0.0.6:8000/v1,weight=2

      printenv GPU_BOX_TOKEN | tiqo providers add gpu-box --kind tiqo --base-url https://gpu-box:8443/v1 --key -
    """
    headers = _headers(name, header)
    secret = _key_from(name, key) if key is not None else None
    endpoints = [_endpoint(e) for e in endpoint] or None
    with client() as c:
        row = c.add_provider(
            name,
            kind,
            base_url,
            key_strategy=key_strategy.value if key_strategy else None,
            max_class=max_class.value if max_class else None,
            timeout_connect=timeout_connect,
            timeout_first_byte=timeout_first_byte,
            timeout_idle=timeout_idle,
            headers=headers,
            auth="none" if no_auth else None,
            endpoints=endpoints,
            trusted=True if trusted else None,
        )
        if secret is not None:
            c.add_key(name, secret)
            row["keys"] = 1
    if json_out:
        print_json(row)
        return
    _print_added(row)


def _print_added(row: dict[str, Any]) -> None:
    """What was added, and the two commands that make it useful."""
    console.print(f"added provider {_escape(row['name'])} ({_escape(row['kind'])}, {_escape(row['base_url'])})")
    if row.get("trusted"):
        console.print("[yellow]trusted: it may receive restricted data, like a local model[/]")
    console.print(
        f"[dim]next: `tiqo keys add {row['name']}` (reads the key from stdin or a hidden prompt), then\n"
        f"      `tiqo models add MODEL --provider {row['name']} --upstream-model M --price-in X --price-out Y`[/]",
        soft_wrap=True,
    )


@app.command("rm")
@handle_errors
def rm(name: str = typer.Argument(..., help="Provider to remove.")) -> None:
    """Remove a provider and its keys (remove its models first). Example: tiqo providers rm groq"""
    with client() as c:
        c.remove_provider(name)
    console.print(f"removed provider {_escape(name)} and its keys")
