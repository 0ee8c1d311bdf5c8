"""tiqo's first-party provider kinds, each registered by its own module through the ``tiqo`` entry-point group:
``tiqo_providers.openai`` (OpenAI-compatible servers), ``tiqo_providers.anthropic`` (Messages API) and
``tiqo_providers.gemini`` (generateContent). All three are sans-IO translators (see ``tiqo.sdk.provider``)."""

from tiqo_providers._common import UnsupportedRequest

__all__ = ["UnsupportedRequest"]
