"""``python -m tiqo.daemon``: run the daemon in the foreground (the CLI spawns this)."""

from tiqo.daemon.server import main

main()
