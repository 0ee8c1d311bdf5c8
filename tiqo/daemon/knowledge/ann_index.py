"""ANN indexes, built in the background: a collection that reaches ``vectors.index_threshold`` rows gets one, and rows
written since (searched flat until then) are folded in once they reach the threshold or a tenth of the index. Search
stays correct (exact) meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time

from tiqo.core.settings import Settings
from tiqo.daemon.knowledge.catalog import Collection
from tiqo.daemon.knowledge.tables import Tables
from tiqo.daemon.knowledge.vector_search import build_index, refresh_index

log = logging.getLogger("tiqo.vectors")


class AnnIndexer:
    def __init__(self, tables: Tables, settings: Settings) -> None:
        self.tables = tables
        self.settings = settings
        self._building: dict[str, asyncio.Task[None]] = {}

    def after_write(self, c: Collection, rows: int) -> None:
        """Start a build or a refresh if the collection, now ``rows`` long, needs one and none is running."""
        threshold = int(self.settings["vectors.index_threshold"])
        if threshold <= 0 or rows < threshold or c.tbl in self._building:
            return
        if self.tables.indexed.get(c.tbl):
            covered = self.tables.covered.get(c.tbl, rows)
            if rows - covered < max(threshold, covered // 10):
                return
        task = asyncio.get_running_loop().create_task(self._build(c, rows))
        self._building[c.tbl] = task

    async def _build(self, c: Collection, rows: int) -> None:
        started = time.perf_counter()
        what = "refreshed" if self.tables.indexed.get(c.tbl) else "built"
        try:
            await asyncio.to_thread(self._build_index, c, rows)
            self.tables.indexed[c.tbl] = True
            self.tables.covered[c.tbl] = rows
            log.info("%s the ANN index of %s (%d rows) in %.1fs", what, c.name, rows, time.perf_counter() - started)
        except Exception:
            log.exception("building the ANN index of %s failed; search stays exact", c.name)
        finally:
            self._building.pop(c.tbl, None)

    def _build_index(self, c: Collection, rows: int) -> None:
        table = self.tables.table(c)
        if self.tables.indexed.get(c.tbl):
            refresh_index(table)
        else:
            build_index(table, rows, int(c.dimension or 0))

    async def wait(self, c: Collection) -> None:
        """Until a build of the collection's index in flight is done (it may have failed)."""
        task = self._building.get(c.tbl)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def forget(self, c: Collection) -> None:
        """For a collection being removed: wait out a build in flight and stop tracking it."""
        task = self._building.pop(c.tbl, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
