"""The ``tiqo`` command: a thin client of the daemon. Never imports the daemon or any model library."""
