"""Audio decoding and encoding, and bounded PCM buffers."""
