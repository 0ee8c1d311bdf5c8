"""Settings, paths, errors and small value types shared by every layer."""
