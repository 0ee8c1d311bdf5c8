"""Generated documentation stays in step with the code; README and CI agree on the test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT
from tiqo.cli.manpage import render
from tiqo.core.settings import SETTINGS, markdown_table


def test_readme_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    embedded = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", readme, re.S)
    assert embedded, "README lost its settings table markers"
    assert embedded.group(1).strip() == markdown_table().strip(), (
        "regenerate: python -c 'from tiqo.core.settings import markdown_table; print(markdown_table())'"
    )


def test_man_page_matches_the_cli_tree() -> None:
    page = render()
    assert (ROOT / "man" / "tiqo.1").read_text() == page, "regenerate: python -m tiqo.cli.manpage > man/tiqo.1"
    for command in ("tiqo ask", "tiqo daemon status", "tiqo models add", "tiqo config set"):
        assert command.replace("-", "\\-") in page
    assert all(s.env in page for s in SETTINGS)


def test_completion_scripts_match_the_cli() -> None:
    marks = {"bash": "complete_bash", "zsh": "#compdef tiqo", "fish": "complete --command tiqo"}
    for shell, mark in marks.items():
        env = {**os.environ, "_TIQO_COMPLETE": f"source_{shell}"}
        fresh = subprocess.run([sys.executable, "-m", "tiqo"], capture_output=True, text=True, env=env)
        assert fresh.returncode == 0, fresh.stderr
        committed = (ROOT / "completions" / f"tiqo.{shell}").read_text()
        assert mark in committed, f"completions/tiqo.{shell} is not a {shell} script"
        assert committed == fresh.stdout, f"regenerate: _TIQO_COMPLETE=source_{shell} tiqo > completions/tiqo.{shell}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
