"""``python -m tiqo.daemon``: run the daemon in the foreground (the CLI spawns this)."""

if __name__ == "__main__":  # not when a spawned worker process (json_bounds) imports this module as __mp_main__
    from tiqo.daemon.root import main

    main()
