"""GGUF language models through llama-cpp-python.

Chat prompts are rendered with the model's own template (from the GGUF metadata) and tokenized here, so the
prompt length is known before generation: an over-long prompt is a clear 400, not a crash, and usage is exact.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from tiqo.core.errors import BadRequest, ContextOverflow
from tiqo.daemon.catalog.gguf import read_gguf
from tiqo.daemon.runtime.engines.json_output import checked, compiled, instruct
from tiqo.daemon.runtime.engines.threads import default_threads
from tiqo.daemon.runtime.engines.tool_calls import as_calls, compiled_calls, history
from tiqo.sdk.engine import ChatRunner, GenerationParams, ModelSpec, Piece, Recognised, StopFlag

if TYPE_CHECKING:
    from tiqo.core.settings import Settings

log = logging.getLogger("tiqo.engine.llama")
llama_log = logging.getLogger("tiqo.llama.cpp")

# For models whose GGUF has no chat template (base models): plain ChatML.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
COMPUTE_OVERHEAD = 64 * 1024 * 1024
DEFAULT_TEMPERATURE = 0.8
_CHEAP_BYTES_PER_TOKEN = 8  # prompts shorter than n_ctx * this are tokenized without a length check first
# Chat models on llama.cpp also answer in JSON (response_format) and call tools: a grammar constrains the output and
# the answer is validated.
CAPABILITIES = ("chat", "completion", "json", "tools")


_log_callback: Any = None


def _route_llama_logs() -> None:
    """Send llama.cpp's own log lines to the daemon log (they go to stderr otherwise, even with verbose=False)."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    levels = {1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG, 5: logging.DEBUG}

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            llama_log.log(levels.get(level, logging.DEBUG), "%s", line)

    _log_callback = callback  # keep a reference: llama.cpp holds only the C pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaRunner:
    """One ``Llama`` instance. The scheduler guarantees a single caller at a time (one thread per slot)."""

    def __init__(self, spec: ModelSpec, options: dict[str, Any], gpu_layers_default: int) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm: Any
        _route_llama_logs()
        assert spec.path is not None
        info = read_gguf(spec.path)
        trained = info.context_length or 4096
        self.n_ctx = min(int(options.get("n_ctx") or 4096), trained)
        threads = options.get("n_threads") or default_threads()
        gpu_layers = options.get("n_gpu_layers")
        gpu_layers = gpu_layers_default if gpu_layers is None else int(gpu_layers)
        self.llm = llama_cpp.Llama(
            model_path=str(spec.path),
            n_ctx=self.n_ctx,
            n_batch=int(options.get("n_batch") or 512),
            n_threads=int(threads),
            n_threads_batch=int(threads),
            n_gpu_layers=gpu_layers,
            verbose=False,
        )
        eos_id = self.llm.token_eos()
        eos = self.llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos_id = self.llm.token_bos()
        bos = self.llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        template = info.chat_template or CHATML
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self.details: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_threads": int(threads),
            "n_gpu_layers": gpu_layers,
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()) and gpu_layers != 0,
            "chat_template": "gguf" if info.chat_template else "chatml (fallback)",
            "architecture": info.architecture,
        }
        self.name = spec.name
        self._max_piece: int | None = None

    def chat(self, messages: list[dict[str, str]], params: GenerationParams, stop: StopFlag) -> Iterator[Piece]:
        # a response_format or tools: compiled here, in the runner's thread (cached per schema), never on the loop
        made = None if params.json_format is None else compiled(params.json_format, self._check_grammar)
        calls = None if params.tools is None else compiled_calls(params.tools, self._check_grammar)
        constrained = made or calls
        messages = history(messages)
        if constrained is not None:
            messages = instruct(messages, constrained.instruction)
        tokens, extra_stop = self._render(messages)
        pieces = self._generate(tokens, params, stop, extra_stop, None if constrained is None else constrained.gbnf)
        if made is not None:
            pieces = checked(pieces, made, params.max_tokens)
        if calls is not None:
            pieces = as_calls(pieces, calls, params.max_tokens)
        return pieces

    def _render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The prompt's tokens through the model's chat template, and the template's stop strings."""
        try:
            rendered = self.formatter(messages=cast(Any, messages))
        except Exception as exc:  # jinja templates raise on roles they do not support
            raise BadRequest(f"the chat template of {self.name} rejected these messages: {exc}") from None
        tokens = self._tokenize(rendered.prompt, add_bos=not rendered.added_special)
        extra_stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, [s for s in extra_stop if s]

    def _check_grammar(self, gbnf: str) -> None:
        """Raise when llama.cpp's own parser refuses ``gbnf`` (a refused grammar must never reach the sampler)."""
        self._grammar(gbnf).close()

    def _grammar(self, gbnf: str) -> Any:
        from tiqo.daemon.runtime.engines.grammar_sampler import GrammarProcessor

        return GrammarProcessor(self.llm._model.vocab, gbnf)

    def complete(self, prompt: str, params: GenerationParams, stop: StopFlag) -> Iterator[Piece]:
        tokens = self._tokenize(prompt, add_bos=True)
        if not tokens:  # an empty prompt and no start token: llama.cpp asserts on an empty batch
            raise BadRequest(
                f"the prompt is empty and {self.name} adds no start token: there is nothing to continue",
                param="prompt",
                hint="send at least one character of prompt text",
            )
        return self._generate(tokens, params, stop, [])

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """The prompt's tokens; a prompt that cannot fit the window is refused before tokenizing it (16 MiB of text
        takes llama.cpp about 25 s to tokenize here, holding the model): no token is longer than the vocabulary's
        longest piece, so more bytes than ``n_ctx`` such pieces cannot fit."""
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > self.n_ctx * _CHEAP_BYTES_PER_TOKEN and len(data) >= self.n_ctx * self._longest_piece():
            self._overflow(f"at least {len(data) // self._longest_piece()}")
        return cast(list[int], self.llm.tokenize(data, add_bos=add_bos, special=True))

    def _longest_piece(self) -> int:
        """Bytes of the vocabulary's longest token (computed once, when a prompt is long enough to need it)."""
        if self._max_piece is None:
            model = self.llm._model
            self._max_piece = max((len(model.token_to_piece(i, True)) for i in range(self.llm.n_vocab())), default=1)
        return self._max_piece

    def _overflow(self, tokens: str) -> NoReturn:
        raise ContextOverflow(
            f"the prompt is {tokens} tokens but {self.name} has a context window of {self.n_ctx} tokens",
            param="messages",
            hint="shorten the input, or raise the window: `tiqo config set llm.n_ctx 8192` "
            "(up to the model's trained length)",
        )

    def _generate(
        self,
        tokens: list[int],
        params: GenerationParams,
        stop: StopFlag,
        extra_stop: list[str],
        gbnf: str | None = None,
    ) -> Iterator[Piece]:
        if len(tokens) >= self.n_ctx:
            self._overflow(str(len(tokens)))
        return self._stream(tokens, params, stop, extra_stop, gbnf)

    def _stream(
        self,
        tokens: list[int],
        params: GenerationParams,
        stop: StopFlag,
        extra_stop: list[str],
        gbnf: str | None,
    ) -> Iterator[Piece]:
        grammar = None if gbnf is None else self._grammar(gbnf)  # this generation's grammar state
        try:
            yield from self._pieces(tokens, params, stop, extra_stop, grammar)
        finally:
            if grammar is not None:
                grammar.close()

    def _pieces(
        self,
        tokens: list[int],
        params: GenerationParams,
        stop: StopFlag,
        extra_stop: list[str],
        grammar: Any,
    ) -> Iterator[Piece]:
        from llama_cpp import StoppingCriteriaList

        limit = self._answer_limit(len(tokens), params.max_tokens)
        cap = _AnswerCap(len(tokens), limit)
        stream: Any = self.llm.create_completion(
            tokens,
            max_tokens=params.max_tokens if params.max_tokens is not None else -1,
            temperature=DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
            top_p=0.95 if params.top_p is None else params.top_p,
            stop=list(params.stop) + extra_stop,
            seed=params.seed,
            presence_penalty=params.presence_penalty or 0.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            logit_bias=params.logit_bias,
            logits_processor=None if grammar is None else [grammar],
            stopping_criteria=StoppingCriteriaList([cap]),
            stream=True,
        )
        parts: list[str] = []
        finish = "length"
        try:
            for chunk in stream:
                if stop.is_set():
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if text:
                    parts.append(text)
                    yield Piece(text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            stream.close()  # stops llama.cpp at once when the client went away
        if cap.hit and finish != "cancelled":
            finish = "length"
        # The stream does not count tokens. A `length` finish took exactly the limit; otherwise the text is tokenized
        # again, which can be one off where the model spelled a character in other byte pieces than the tokenizer
        # would, and is held to the limit.
        completion = limit if finish == "length" else min(self._count("".join(parts)), limit)
        yield Piece("", finish_reason=finish, prompt_tokens=len(tokens), completion_tokens=completion)

    def _count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0

    def _answer_limit(self, prompt: int, max_tokens: int | None) -> int:
        """llama-cpp-python's own limit on an answer: ``max_tokens``, or what is left of the context when that is
        less (or when there is no max_tokens)."""
        left = self.n_ctx - prompt
        return max_tokens if max_tokens is not None and 0 < max_tokens < left else left

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            del self.llm


class LlamaEngine:
    name = "llama.cpp"
    kinds = ("llm",)
    options = ("n_ctx", "n_threads", "n_gpu_layers", "n_batch")
    recognise_order = 90  # any file the others do not claim: read as GGUF, or a clear 400 saying why not

    def __init__(self) -> None:
        self._gpu_layers_default: int | None = None

    def default_options(self, settings: Settings) -> dict[str, Any]:
        return {
            "n_ctx": settings["llm.n_ctx"],
            "n_threads": settings["llm.n_threads"],
            "n_gpu_layers": settings["llm.n_gpu_layers"],
            "n_batch": settings["llm.n_batch"],
            "num_parallel": settings["scheduler.num_parallel"],
        }

    def capabilities(self, kind: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return CAPABILITIES

    def recognise(self, path: Path, pipeline: str | None) -> Recognised | None:
        if path.is_dir():
            return None
        gguf = read_gguf(path)  # raises a clear 400 for missing, non-GGUF or truncated files
        return Recognised(gguf.path.absolute(), "llm", f"{gguf.architecture}, {gguf.file_size} bytes")

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        if spec.path is None or not spec.path.exists():
            return spec.size_bytes + COMPUTE_OVERHEAD
        info = read_gguf(spec.path)
        n_ctx = min(int(options.get("n_ctx") or 4096), info.context_length or 4096)
        return info.file_size + info.kv_cache_bytes(n_ctx) + COMPUTE_OVERHEAD

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> ChatRunner:
        if self._gpu_layers_default is None:
            import llama_cpp

            self._gpu_layers_default = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        return LlamaRunner(spec, options, self._gpu_layers_default)


class _AnswerCap:
    """Ends a generation once ``limit`` answer tokens are in the context, as a llama-cpp-python stopping criterion
    (called after each token is sampled, with the tokens evaluated so far).

    llama-cpp-python checks ``max_tokens`` itself, but skips the check while the answer ends inside a UTF-8
    character: a caller whose ``logit_bias`` favours a lead byte got no answer until the context was full (4,096
    tokens, minutes of CPU) and then an error from llama_decode. The evaluated tokens lag the sampled ones by one,
    so in the normal case this never fires before llama-cpp-python's own check, and when it fires the answer holds
    exactly ``limit`` tokens."""

    __slots__ = ("hit", "limit", "prompt")

    def __init__(self, prompt: int, limit: int) -> None:
        self.prompt, self.limit, self.hit = prompt, limit, False

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        if len(input_ids) - self.prompt >= self.limit:
            self.hit = True
        return self.hit
