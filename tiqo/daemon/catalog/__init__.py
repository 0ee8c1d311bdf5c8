"""What can serve: the local model registry, GGUF inspection and the routing config (default policy in data/)."""
