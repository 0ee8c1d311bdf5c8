"""The daemon's state: the SQLite store (WAL) and the Redis budget counters."""
