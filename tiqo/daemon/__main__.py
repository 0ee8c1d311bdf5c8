"""``python -m tiqo.daemon``: run the daemon in the foreground (the CLI spawns this)."""

from tiqo.daemon.http.server import main

if __name__ == "__main__":  # not when a spawned worker process (json_bounds) imports it as __mp_main__
    main()
