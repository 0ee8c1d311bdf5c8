"""The response cache (exact in SQLite, optionally semantic) and its in-memory semantic index."""
