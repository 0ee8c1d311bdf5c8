"""Entry point of the ``tiqo`` command (``tiqo.cli.main:main``, and ``python -m tiqo``).

The root help is printed from the command table (``tiqo.cli.root_help``) and ``--version`` from the package; everything
else goes to the typer app (``tiqo.cli.app``), which imports only the command it runs."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from tiqo.cli.root_help import exit_code, print_root_help

    if sys.argv[1:] == ["--version"] and "_TIQO_COMPLETE" not in os.environ:
        from tiqo import __version__

        print(f"tiqo {__version__}")  # what the typer option prints
        return
    code = exit_code(sys.argv[1:], os.environ)
    if code is not None:  # the root help: it writes no file, so it skips the umask below (and its imports)
        print_root_help(trailing_newline=code == 0)
        sys.exit(code)
    from tiqo.cli.app import app
    from tiqo.core.paths import use_private_umask

    # Everything tiqo writes (config.toml, the daemon log, chat history, the unit file, the daemon it starts) is
    # private from its first byte; files the user names with -o are created with the user's own umask instead.
    use_private_umask()
    app(prog_name="tiqo")  # the same name (and completion scripts) under `python -m tiqo`
