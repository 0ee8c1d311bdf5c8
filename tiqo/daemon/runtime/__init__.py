"""Local compute: the warm-model scheduler, engine threads, plugin loading and the engines."""
