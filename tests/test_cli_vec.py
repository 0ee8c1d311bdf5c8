"""`tiqo vec` as a user runs it: files, stdin, JSON output, a real daemon and the real embedding model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProc, start_daemon
from tests.test_vectors import CORPUS


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    daemon = start_daemon()
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def test_create_add_search_list_rm(d: DaemonProc, tmp_path: Path) -> None:
    for topic, text in CORPUS.items():
        (tmp_path / f"{topic}.{'md' if topic < 'h' else 'txt'}").write_text(text)
    out = d.cli("vec", "create", "docs")
    assert out.returncode == 0 and "created docs" in out.stdout, out.stderr
    files = sorted(str(p) for p in tmp_path.iterdir())
    out = d.cli("vec", "add", "docs", *files, "--meta", "team=web")
    assert out.returncode == 0, out.stderr
    assert f"{len(CORPUS)} added" in out.stdout
    assert "adding" in out.stderr and f"{len(CORPUS)}/{len(CORPUS)}" in out.stderr  # the progress bar, on stderr
    again = d.cli("vec", "add", "docs", *files, "--meta", "team=web", "--json")
    assert json.loads(again.stdout)["unchanged"] == len(CORPUS)

    out = d.cli("vec", "search", "docs", "how to make homemade bread", "-k", "2", "--json")
    assert out.returncode == 0, out.stderr
    matches = json.loads(out.stdout)
    assert len(matches) == 2 and matches[0]["metadata"]["source"].endswith("cooking.md")
    assert matches[0]["metadata"]["team"] == "web" and matches[0]["score"] > matches[1]["score"]
    out = d.cli("vec", "search", "docs", "software bug in my code", "--where", "source LIKE '%.txt'", "--json")
    sources = [m["metadata"]["source"] for m in json.loads(out.stdout)]
    assert sources[0].endswith("programming.txt") and all(s.endswith(".txt") for s in sources)
    out = d.cli("vec", "search", "docs", "thunderstorm", "--hybrid")
    assert out.returncode == 0 and "weather" in out.stdout.split("\n  ", 1)[0]

    listed = json.loads(d.cli("vec", "list", "--json").stdout)
    assert [(x["name"], x["rows"]) for x in listed] == [("docs", len(CORPUS))]
    assert "docs" in d.cli("vec", "list").stdout
    assert d.cli("vec", "rm", "docs").returncode == 0
    assert json.loads(d.cli("vec", "list", "--json").stdout) == []


def test_stdin_lines_and_errors(d: DaemonProc) -> None:
    assert d.cli("vec", "create", "faq").returncode == 0
    text = "\n".join(CORPUS.values())
    out = d.cli("vec", "add", "faq", "-", "--lines", "--json", input=text)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["added"] == len(CORPUS)
    out = d.cli("vec", "search", "faq", "will it rain tomorrow", "-k", "1", "--json")
    top = json.loads(out.stdout)[0]
    assert top["text"] == CORPUS["weather"] and top["metadata"]["source"] == "stdin:9"

    out = d.cli("vec", "create", "faq")
    assert out.returncode == 1 and "already exists" in out.stderr and "hint:" in out.stderr
    out = d.cli("vec", "search", "nope", "x")
    assert out.returncode == 1 and "no collection" in out.stderr and "tiqo vec create" in out.stderr
    out = d.cli("vec", "add", "faq", "/no/such/file.md")
    assert out.returncode == 2 and "no such file" in out.stderr
    out = d.cli("vec", "search", "faq", "x", "--where", "nonsense ===")
    assert out.returncode == 1 and "filter" in out.stderr
    out = d.cli("vec", "search", "faq", "x", "--user", "mallory")  # another user does not see it
    assert out.returncode == 1 and "no collection" in out.stderr
