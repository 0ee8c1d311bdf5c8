"""tiqo: local-first AI services — one CLI, one daemon, warm local models."""

__version__ = "0.1.0"
API_VERSION = "1"
