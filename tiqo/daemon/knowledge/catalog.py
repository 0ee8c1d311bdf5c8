"""Who owns which vector collection, and who may read or write it: the ``vector_collections`` table in the daemon's
SQLite store (read and written on the event loop; the vectors themselves are in LanceDB, see ``vectors``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from tiqo.core.errors import BadRequest, Conflict, NotFound, TiqoError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COLUMNS = "owner, name, tbl, model, dimension, shared, created"


class Forbidden(TiqoError):
    status = 403
    type = "permission_error"
    code = "forbidden"


@dataclass
class Collection:
    owner: str
    name: str
    tbl: str
    model: str | None
    dimension: int | None
    shared: bool
    created: float

    def as_dict(self, rows: int, indexed: bool, unindexed: int = 0) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "model": self.model,
            "dimension": self.dimension,
            "shared": self.shared,
            "created": self.created,
            "rows": rows,
            "indexed": indexed,
            "unindexed": unindexed,  # rows written since the ANN index was built or refreshed: searched flat
        }


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class Catalog:
    def __init__(self, store: Any) -> None:
        self.store = store  # tiqo.daemon.state.store.Store

    @property
    def db(self) -> Any:
        return self.store.db

    def _collection(self, row: tuple[Any, ...]) -> Collection:
        owner, name, tbl, model, dimension, shared, created = row
        return Collection(owner, name, tbl, model, dimension, bool(shared), created)

    def visible(self, user: str) -> list[Collection]:
        rows = self.db.execute(
            "SELECT owner, name, tbl, model, dimension, shared, created FROM vector_collections "
            "WHERE owner = ? OR shared = 1 ORDER BY name, owner",
            (user,),
        ).fetchall()
        return [self._collection(r) for r in rows]

    def get(self, user: str, name: str) -> Collection:
        """``user``'s collection ``name``, else the one another user shares under that name. A shared name belongs to
        whoever shared it first (``create`` refuses a second); rows from before that rule resolve to the oldest."""
        row = self.db.execute(
            "SELECT owner, name, tbl, model, dimension, shared, created FROM vector_collections "
            "WHERE name = ? AND (owner = ? OR shared = 1) ORDER BY owner != ?, created, owner LIMIT 1",
            (name, user, user),
        ).fetchone()
        if row is None:
            raise NotFound(
                f"no collection {name!r}",
                param="name",
                hint=f"`tiqo vec list` shows your collections; make it with `tiqo vec create {name}`",
            )
        return self._collection(row)

    def writable(self, user: str, name: str) -> Collection:
        c = self.get(user, name)
        if c.owner != user:
            raise Forbidden(
                f"collection {name!r} belongs to {c.owner}, who shares it read-only",
                hint=f"ask {c.owner} to change it, or make your own with `tiqo vec create {name}`",
            )
        return c

    def exists(self, user: str, name: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM vector_collections WHERE owner = ? AND name = ?", (user, name)).fetchone()
            is not None
        )

    def add(self, c: Collection) -> None:
        if c.shared:
            self._refuse_shared_name(c.owner, c.name)
        self.db.execute(
            f"INSERT INTO vector_collections ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (c.owner, c.name, c.tbl, c.model, c.dimension, int(c.shared), c.created),
        )

    def delete(self, c: Collection) -> None:
        self.db.execute("DELETE FROM vector_collections WHERE owner = ? AND name = ?", (c.owner, c.name))

    def _refuse_shared_name(self, user: str, name: str) -> None:
        """A second user may not share a collection under a name another user already shares: readers who ask for
        that name would get whichever sorted first, so anyone could slip their own data in under a trusted name."""
        row = self.db.execute(
            "SELECT owner FROM vector_collections WHERE name = ? AND shared = 1 AND owner != ? LIMIT 1", (name, user)
        ).fetchone()
        if row is not None:
            raise Conflict(
                f"{row[0]} already shares a collection named {name!r}",
                param="name",
                code="name_taken",
                hint=f"pick another name, or create {name!r} without sharing it (then only you see yours)",
            )

    def set_dimension(self, c: Collection, dim: int) -> None:
        if c.dimension is None:
            c.dimension = dim
            self.db.execute("UPDATE vector_collections SET dimension = ? WHERE tbl = ?", (dim, c.tbl))
        elif c.dimension != dim:
            raise BadRequest(
                f"vectors have {dim} dimensions; collection {c.name!r} holds {c.dimension}",
                param="values",
                code="dimension_mismatch",
                hint=f"send {c.dimension}-dimensional vectors, or create another collection with --dimension {dim}",
            )
