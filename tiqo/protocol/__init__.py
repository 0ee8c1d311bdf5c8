"""Request and response models of tiqo's API (OpenAI-compatible plus ``/tiqo/...``)."""
