"""Console output, the shared client, and error handling with meaningful exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import typer

from tiqo.core.errors import TiqoError

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1  # the daemon refused or failed the request
EXIT_USAGE = 2  # bad arguments or settings
EXIT_UNAVAILABLE = 3  # the daemon is not running / cannot be started
EXIT_INTERRUPTED = 130


class _LazyConsole:
    """A rich Console made on first use: `tiqo ask` streams to plain stdout, and importing rich costs more than the
    answer of a warm model. Everything, the context manager included, goes to the real Console."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __enter__(self) -> Console:
        return self._get().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._get().__exit__(*exc)


console = cast("Console", _LazyConsole(highlight=False))
err_console = cast("Console", _LazyConsole(stderr=True, highlight=False))


class State:
    no_autostart = False


state = State()


def client() -> Any:
    from tiqo.client import TiqoClient
    from tiqo.core.settings import Settings

    settings = Settings.load()
    return TiqoClient(settings, autostart=False if state.no_autostart else None)


def fail(message: str, hint: str | None = None, code: int = EXIT_ERROR) -> NoReturn:
    """One line saying what went wrong on stderr (and a hint naming the fix), then exit non-zero."""
    err_console.print(f"[bold red]tiqo:[/] {message}", markup=True, soft_wrap=True, highlight=False)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn client-side exceptions into one clear message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tiqo.client import ApiError, DaemonUnavailable

        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            fail(exc.message, exc.hint, EXIT_ERROR)
        except DaemonUnavailable as exc:
            fail(exc.message, exc.hint, EXIT_UNAVAILABLE)
        except TiqoError as exc:
            fail(exc.message, exc.hint, EXIT_USAGE)
        except KeyboardInterrupt:
            err_console.print("[dim]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # `tiqo ask ... | head -1`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def prompt_text(prompt: list[str] | None, example: str) -> str:
    """The prompt from the arguments, with text piped on stdin before it; ``example`` shows how to give one."""
    text = " ".join(prompt or []).strip()
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped.strip():
            text = f"{piped.rstrip()}\n\n{text}" if text else piped.rstrip()
    if not text:
        fail("no prompt given", f"pass one as an argument ({example}) or pipe text in", EXIT_USAGE)
    return text


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()
