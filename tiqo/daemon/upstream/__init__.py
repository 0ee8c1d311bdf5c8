"""Calls that leave the machine: the pooled HTTP client, text and speech provider calls, provider config, keys,
breakers."""
