"""The collections' LanceDB tables under <state dir>/vectors/: one connection for writes and index builds (its calls
block: worker threads), one on LanceDB's async API for queries (on the event loop), what is known of each open table
(whether it has an ANN index, how many rows that index covers, which version its full-text index covers), and a write
lock per table. lancedb is imported on first use, never at start-up."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from tiqo.core.paths import ensure_private_dir
from tiqo.daemon.knowledge.catalog import Collection
from tiqo.daemon.knowledge.rows import schema
from tiqo.daemon.knowledge.vector_search import ensure_fts


class Tables:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.indexed: dict[str, bool] = {}  # tbl -> whether it has an ANN index
        self.covered: dict[str, int] = {}  # rows the ANN index held when it was built or last refreshed
        self._db: Any = None
        self._tables: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._fts_version: dict[str, int] = {}
        self._readers: dict[str, Any] = {}  # tbl -> AsyncTable, for queries
        self._async_db: Any = None

    def lock(self, c: Collection) -> asyncio.Lock:
        """Writes to one collection are serialised by this lock."""
        return self._locks.setdefault(c.tbl, asyncio.Lock())

    def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            ensure_private_dir(self.root)
            self._db = lancedb.connect(str(self.root))
        return self._db

    def table(self, c: Collection, create_dim: int | None = None) -> Any:
        """The collection's table; None before its first write, unless ``create_dim`` says to create it."""
        table = self._tables.get(c.tbl)
        if table is not None:
            return table
        db = self._connect()
        try:
            table = db.open_table(c.tbl)
        except ValueError:  # not created yet: the first write creates it
            if create_dim is None:
                return None
            table = db.create_table(c.tbl, schema=schema(create_dim))
        self._tables[c.tbl] = table
        if c.tbl not in self.indexed:
            vector_index = next((i.name for i in table.list_indices() if i.index_type != "FTS"), None)
            self.indexed[c.tbl] = vector_index is not None
            if vector_index is not None:
                stats = table.index_stats(vector_index)
                self.covered[c.tbl] = int(stats.num_indexed_rows) if stats is not None else 0
        return table

    def drop(self, tbl: str) -> None:
        self._tables.pop(tbl, None)
        self._readers.pop(tbl, None)
        self.indexed.pop(tbl, None)
        self.covered.pop(tbl, None)
        self._fts_version.pop(tbl, None)
        db = self._connect()
        with contextlib.suppress(ValueError, FileNotFoundError):
            db.drop_table(tbl)

    def stats(self, c: Collection) -> tuple[int, bool, int]:
        """Rows, whether an ANN index exists, and rows written since it was built or refreshed (an estimate: rows
        replaced in place count as neither)."""
        table = self.table(c)
        if table is None:
            return 0, False, 0
        rows, indexed = int(table.count_rows()), self.indexed.get(c.tbl, False)
        return rows, indexed, max(0, rows - self.covered.get(c.tbl, rows)) if indexed else 0

    def scan(self, table: Any, where: str, columns: list[str]) -> list[dict[str, Any]]:
        limit = max(1, int(table.count_rows(where)))
        rows: list[dict[str, Any]] = table.search().where(where).select(columns).limit(limit).to_list()
        return rows

    def merge(self, c: Collection, rows: list[dict[str, Any]], replace_where: str | None = None) -> int:
        """Upsert ``rows`` by id (and delete the rows of ``replace_where`` that are not among them); the new count."""
        table = self.table(c, c.dimension)
        op = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if replace_where is not None:
            op = op.when_not_matched_by_source_delete(replace_where)
        op.execute(rows)
        return int(table.count_rows())

    @staticmethod
    def delete(table: Any, condition: str) -> tuple[int, int]:
        """Rows deleted and rows left."""
        before = int(table.count_rows())
        table.delete(condition)
        after = int(table.count_rows())
        return before - after, after

    async def reader(self, c: Collection) -> Any:
        """The collection's table on LanceDB's async API, or None before its first write. Its connection checks for
        a newer version on every query (read_consistency_interval 0): writes go through the sync tables."""
        if c.tbl not in self._tables and await asyncio.to_thread(self.table, c) is None:
            return None
        table = self._readers.get(c.tbl)
        if table is None:
            if self._async_db is None:
                import lancedb

                self._async_db = await lancedb.connect_async(str(self.root), read_consistency_interval=timedelta(0))
            table = self._readers[c.tbl] = await self._async_db.open_table(c.tbl)
        return table

    def ensure_fts(self, c: Collection) -> None:
        """Hybrid search needs the full-text index to cover the table's current version."""
        self._fts_version[c.tbl] = ensure_fts(self.table(c), self._fts_version.get(c.tbl))
