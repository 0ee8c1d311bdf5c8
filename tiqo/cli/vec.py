"""``tiqo vec``: collections in the daemon's vector store: create, add files, search, list, remove."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from tiqo.cli.output import EXIT_USAGE, client, console, err_console, fail, handle_errors, print_json
from tiqo.client.streams import ApiError

app = typer.Typer(
    help="Vector collections: ingest files, search them by meaning.\n\n"
    'Example: tiqo vec create notes && tiqo vec add notes *.md && tiqo vec search notes "how do I deploy"',
    no_args_is_help=True,
)
USER = typer.Option(None, "--user", "-u", help="Act as this user (collections are per user unless shared).")
BATCH_CHARS = 2_000_000  # one ingest request carries at most about this much text (the daemon limits bodies)
BATCH_DOCS = 200
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".csv", ".json", ".html", ".py", ".log", ""}


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        fail(f"{path}: reading PDF needs pypdf", "pip install pypdf", EXIT_USAGE)
    try:
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
    except Exception as exc:
        fail(f"{path}: not a readable PDF ({exc})", "check the file, or convert it to text first", EXIT_USAGE)


def _read(path: str) -> tuple[str, str]:
    """(source, text) of a file or of stdin (``-``)."""
    if path == "-":
        if sys.stdin.isatty():
            fail("no text on stdin", "pipe it in (`… | tiqo vec add NAME -`) or name files", EXIT_USAGE)
        return "stdin", sys.stdin.read()
    file = Path(path).expanduser()
    if not file.is_file():
        fail(f"{path}: no such file", "name text, Markdown or PDF files, or - for stdin", EXIT_USAGE)
    if file.suffix.lower() == ".pdf":
        return str(file.resolve()), _pdf_text(file)
    data = file.read_bytes()
    if b"\0" in data[:8192]:
        fail(f"{path}: looks binary, not text", "tiqo vec add reads text, Markdown and PDF files", EXIT_USAGE)
    return str(file.resolve()), data.decode("utf-8", errors="replace")


def _meta(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--meta {pair!r} is not KEY=VALUE", "e.g. --meta lang=en", EXIT_USAGE)
        out[key.strip()] = value
    return out


def _batches(docs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for doc in docs:
        if batches[-1] and (size + len(doc["text"]) > BATCH_CHARS or len(batches[-1]) >= BATCH_DOCS):
            batches.append([])
            size = 0
        batches[-1].append(doc)
        size += len(doc["text"])
    return [b for b in batches if b]


@app.command("create")
@handle_errors
def create(
    name: str = typer.Argument(..., help="Collection name."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Embedding model; default embed.default_model."),
    shared: bool = typer.Option(False, "--shared", help="Let every user search it (only you change it)."),
    dimension: Optional[int] = typer.Option(None, "--dimension", help="Raw vectors of this size, no model."),
    user: Optional[str] = USER,
) -> None:
    """Create a collection.

    Example: tiqo vec create notes --shared
    """
    with client() as c:
        data = c.vec_create(name, model=model, shared=shared, dimension=dimension, user=user)
    what = f"model {data['model']}" if data.get("model") else f"{data['dimension']} dimensions"
    console.print(f"created {escape(name)} ({what}{', shared' if data['shared'] else ''})")


@app.command("list")
@handle_errors
def list_(json_out: bool = typer.Option(False, "--json", help="Print JSON."), user: Optional[str] = USER) -> None:
    """Your collections and the ones other users share.

    Example: tiqo vec list --json
    """
    with client() as c:
        data = c.vec_list(user=user)
    if json_out:
        print_json(data)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "OWNER", "ROWS", "MODEL", "DIM", "SHARED", "INDEX"):
        table.add_column(column)
    for v in data:
        table.add_row(
            v["name"],
            v["owner"],
            f"{v['rows']:,}",
            v.get("model") or "-",
            str(v.get("dimension") or "-"),
            "yes" if v["shared"] else "no",
            "ann" if v.get("indexed") else "flat",
        )
    console.print(table)


@app.command("rm")
@handle_errors
def rm(name: str = typer.Argument(..., help="Collection name."), user: Optional[str] = USER) -> None:
    """Remove a collection and everything in it.

    Example: tiqo vec rm notes
    """
    with client() as c:
        c.vec_remove(name, user=user)
    console.print(f"removed {escape(name)}")


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="Collection name."),
    files: list[str] = typer.Argument(..., help="Text, Markdown or PDF files, or - for stdin."),
    lines: bool = typer.Option(False, "--lines", help="One document per line, not per file."),
    meta: list[str] = typer.Option([], "--meta", help="Metadata KEY=VALUE on every chunk (repeatable)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Chunk size; default vectors.chunk_size."),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap", help="Overlap; vectors.chunk_overlap."),
    chunk_unit: Optional[str] = typer.Option(None, "--chunk-unit", help="chars or tokens; vectors.chunk_unit."),
    json_out: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    user: Optional[str] = USER,
) -> None:
    """Add documents: chunked with overlap, embedded by the daemon.

    Re-adding an unchanged file adds nothing; a changed file replaces its old chunks.

    Example: tiqo vec add notes docs/*.md --meta project=web

    Example: cat faq.txt | tiqo vec add notes - --lines
    """
    docs = _documents(files, lines, _meta(meta))
    if not docs:
        fail("nothing to add", "give files with some text", EXIT_USAGE)
    chunking = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "chunk_unit": chunk_unit}
    totals = _ingest(name, docs, user, chunking)
    if json_out:
        print_json(totals)
        return
    console.print(
        f"{totals['added']} added, {totals['replaced']} replaced, {totals['unchanged']} unchanged "
        f"({totals['chunks']} chunks written, {totals['embedded']} embedded)"
    )


def _documents(files: list[str], lines: bool, extra: dict[str, str]) -> list[dict[str, Any]]:
    """One document per file (or per non-blank line with --lines); empty files are skipped with a word."""
    docs: list[dict[str, Any]] = []
    for path in files:
        source, text = _read(path)
        if lines:
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    docs.append({"source": f"{source}:{n}", "text": line, "metadata": {**extra, "line": n}})
        elif text.strip():
            docs.append({"source": source, "text": text, "metadata": extra})
        else:
            err_console.print(f"[yellow]skipped[/] {escape(path)}: empty")
    return docs


def _ingest(name: str, docs: list[dict[str, Any]], user: str | None, chunking: dict[str, Any]) -> dict[str, int]:
    """Send the documents in bounded batches, with a progress bar; returns the summed counts."""
    totals = {"added": 0, "unchanged": 0, "replaced": 0, "chunks": 0, "embedded": 0}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("adding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("documents"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=len(docs) < 2,
    )
    with client() as c, progress:
        task = progress.add_task("add", total=len(docs))
        pending = _batches(docs)
        while pending:
            batch = pending.pop(0)
            try:
                counts = c.vec_ingest(name, batch, user=user, **chunking)
            except ApiError as exc:  # over vectors.max_chunks_per_request: halve the batch (one document: give up)
                if exc.code != "too_many_chunks" or len(batch) < 2:
                    raise
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
                continue
            for key in totals:
                totals[key] += int(counts.get(key, 0))
            progress.advance(task, len(batch))
    return totals


@app.command("search")
@handle_errors
def search(
    name: str = typer.Argument(..., help="Collection name."),
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", "--top-k", help="How many matches."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL filter, e.g. \"source LIKE '%.md'\"."),
    hybrid: bool = typer.Option(False, "--hybrid", help="Fuse vector and full-text search (rank fusion)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    user: Optional[str] = USER,
) -> None:
    """Search a collection by meaning; scores are cosine similarity (higher is closer).

    Example: tiqo vec search notes "deploy to production" -k 3 --where "source LIKE '%.md'"
    """
    body = {"text": query, "top_k": k, "filter": where, "hybrid": hybrid, "include_metadata": True}
    with client() as c:
        data = c.vec_query(name, body, user=user)
    if json_out:
        print_json(data["matches"])
        return
    if not data["matches"]:
        err_console.print("[dim]no matches[/]")
    for m in data["matches"]:
        meta = m.get("metadata") or {}
        where_from = f"{meta.get('source', '')}#{meta.get('chunk', 0)}" if meta.get("source") else m["id"]
        console.print(f"[bold]{m['score']:.3f}[/] [dim]{escape(where_from)}[/]")
        text = " ".join(m.get("text", "").split())
        console.print("  " + escape(text[:300] + ("…" if len(text) > 300 else "")))
