"""tiqo: local-first AI services — one CLI, one daemon, warm local models."""

__version__ = "0.1.0"
API_VERSION = "1"
# The layout of the state database (tiqo/daemon/state/store.py, its PRAGMA user_version): one more with every
# migration. `tiqo restore` refuses an archive from a newer schema.
SCHEMA_VERSION = 8
