"""Where shared state lives and how vectors are chunked: rows of the settings table (``setting_table``)."""

from __future__ import annotations

from tiqo.core.setting_kinds import (
    Setting,
    choice,
    integer,
    positive_int,
    text,
)

STORAGE: tuple[Setting, ...] = (
    Setting(
        "state.backend",
        "sqlite",
        choice("sqlite", "redis"),
        "Where shared state lives: sqlite (one daemon) or redis (daemons sharing budgets, rate limits, key "
        "limits and health, breakers, the response cache and alerts)",
        "choice",
        env_var="TIQO_STATE_BACKEND",
    ),
    Setting(
        "state.redis_url",
        "redis://127.0.0.1:6379/0",
        text,
        "Redis server for state.backend = redis",
        "str",
        env_var="TIQO_REDIS_URL",
        secret=True,
    ),
    Setting(
        "state.redis_prefix",
        "tiqo",
        text,
        "Prefix of every Redis key (state.backend = redis): daemons with one prefix share state; another prefix "
        "lets a second deployment use the same server",
        "str",
        env_var="TIQO_REDIS_PREFIX",
    ),
    Setting(
        "vectors.chunk_size",
        1000,
        integer,
        "Largest chunk `tiqo vec add` makes of a document (in vectors.chunk_unit)",
        "int",
        env_var="TIQO_VECTORS_CHUNK_SIZE",
    ),
    Setting(
        "vectors.chunk_overlap",
        200,
        integer,
        "How much of a chunk's end the next chunk repeats (whole sentences or words)",
        "int",
        env_var="TIQO_VECTORS_CHUNK_OVERLAP",
    ),
    Setting(
        "vectors.chunk_unit",
        "chars",
        choice("chars", "tokens"),
        "What chunk sizes count: chars, or tokens (words and punctuation)",
        "choice",
        env_var="TIQO_VECTORS_CHUNK_UNIT",
    ),
    Setting(
        "vectors.max_chunks_per_request",
        10000,
        positive_int,
        "Most chunks one ingest request may make (all its documents together); more is refused with 413 before "
        "anything is embedded",
        "int",
        env_var="TIQO_VECTORS_MAX_CHUNKS",
    ),
    Setting(
        "vectors.index_threshold",
        50000,
        integer,
        "Rows from which a collection gets an ANN index, built in the background (0 = never)",
        "int",
        env_var="TIQO_VECTORS_INDEX_THRESHOLD",
    ),
)
