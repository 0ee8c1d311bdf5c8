"""Client of the daemon's API: one method per route, plus daemon autostart."""

from tiqo.client.client import ApiError, DaemonUnavailable, Stream, TiqoClient

__all__ = ["ApiError", "DaemonUnavailable", "Stream", "TiqoClient"]
