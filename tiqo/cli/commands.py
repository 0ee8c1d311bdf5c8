"""Every ``tiqo`` command by name, in the order help lists them, with the module that defines it and its summary.

Plain data (no typer, no rich): the typer app (``tiqo.cli.app``) builds a command from its module on first use, and
``tiqo --help`` (``tiqo.cli.root_help``) lists the commands from this table without importing any of them.
``tests/test_root_help.py`` fails, naming the line to change, when a summary here and the command's docstring differ."""

from __future__ import annotations

from typing import NamedTuple


class Command(NamedTuple):
    module: str
    attribute: str  # a command function, or a Typer that becomes a group of this name
    summary: str  # the first paragraph of its help, as the root help lists it


COMMANDS: dict[str, Command] = {
    "ask": Command("tiqo.cli.ask", "ask", "Ask one question and stream the answer."),
    "chat": Command(
        "tiqo.cli.ask",
        "chat",
        "Chat interactively, with history. /help lists commands; Ctrl-C stops an answer; Ctrl-D exits.",
    ),
    "transcribe": Command(
        "tiqo.cli.voice", "transcribe", "Transcribe speech to text. Segments print as they are decoded."
    ),
    "speak": Command(
        "tiqo.cli.voice", "speak", "Say text aloud. Audio streams as it is made: long texts start playing at once."
    ),
    "image": Command(
        "tiqo.cli.media",
        "image",
        "Make a picture from a prompt with a local diffusion model (or an external image provider when policy allows).",
    ),
    "video": Command(
        "tiqo.cli.media",
        "video",
        "Make a short mp4 with a local video model: from text, or from a picture (--image).",
    ),
    "embed": Command(
        "tiqo.cli.embed",
        "embed",
        'Embed text as vectors. Prints one JSON object per input: {"index", "model", "embedding"}.',
    ),
    "ps": Command(
        "tiqo.cli.models",
        "ps",
        "Show loaded models: memory, requests in flight, queue, keep-alive expiry. Example: tiqo ps",
    ),
    "plugins": Command(
        "tiqo.cli.gateway_misc",
        "plugins",
        "Show loaded plugins and what each provides (engines, provider kinds), and plugins that failed to load.",
    ),
    "usage": Command(
        "tiqo.cli.ledger", "usage", "Requests, tokens, cost, cache hits and errors per group, with a total."
    ),
    "logs": Command("tiqo.cli.ledger", "logs", "The most recent requests, newest last."),
    "audit": Command(
        "tiqo.cli.ledger", "audit", "Every call that left the machine, and why it was allowed, newest last."
    ),
    "alerts": Command(
        "tiqo.cli.ledger",
        "alerts",
        "Recent alerts, newest last: budget thresholds crossed, and other things the daemon raised.",
    ),
    "events": Command("tiqo.cli.ledger", "events", "Tail the daemon's live events until Ctrl-C, one line each."),
    "dash": Command(
        "tiqo.cli.dash",
        "dash",
        "Live dashboard: requests, spend, budgets, keys, loaded models and alerts, as they happen.",
    ),
    "backup": Command(
        "tiqo.cli.backup", "backup", "Back up the daemon's state while it serves, into one archive (mode 0600)."
    ),
    "restore": Command(
        "tiqo.cli.backup",
        "restore",
        "Restore a backup into this home; the daemon must be stopped (`tiqo daemon stop`).",
    ),
    "doctor": Command(
        "tiqo.cli.doctor",
        "doctor",
        "Check the set-up and print the command that fixes each problem; exit code 1 when a check fails.",
    ),
    # groups (typer lists a group's commands after the plain commands, in this order)
    "voices": Command("tiqo.cli.voice", "voices_app", "Voices for `tiqo speak`: list them, add Piper voices."),
    "vec": Command("tiqo.cli.vec", "app", "Vector collections: ingest files, search them by meaning."),
    "jobs": Command(
        "tiqo.cli.jobs",
        "app",
        "Long work the daemon does in the background (video, images): progress, results, cancel.",
    ),
    "daemon": Command("tiqo.cli.daemon", "app", "Start, stop and inspect the background daemon."),
    "models": Command("tiqo.cli.models", "app", "List, add, remove, load and unload models."),
    "config": Command("tiqo.cli.config", "app", "Show and change settings (config.toml and TIQO_* variables)."),
    "providers": Command("tiqo.cli.providers", "app", "List, add and remove external providers (API endpoints)."),
    "keys": Command("tiqo.cli.keys", "app", "List, add, remove, enable and disable providers' API keys."),
    "route": Command(
        "tiqo.cli.route", "app", "See how tiqo would route a request (classification, candidates, prices)."
    ),
    "cache": Command("tiqo.cli.gateway_misc", "cache_app", "Look at and empty the response cache."),
    "budget": Command(
        "tiqo.cli.budget",
        "budget_app",
        "Show, set and remove spending limits on external models (local models are never limited).",
    ),
    "users": Command("tiqo.cli.users", "app", "Users, their tiers and rate limits, and tokens for the TCP listener."),
}

# The root command's own help and options (typer adds --install-completion, --show-completion and --help).
ROOT_HELP = (
    "Local-first AI services: warm local models behind one daemon and an OpenAI-compatible API.\n\n"
    'Example: tiqo ask "Name three primary colours."'
)
NO_AUTOSTART_HELP = "Never start the daemon; fail if it is not running (or TIQO_NO_AUTOSTART=1)."
VERSION_HELP = "Print the version."
