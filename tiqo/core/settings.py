"""Every setting in one table: key, type, default, environment variable and what it does.

Values come from (highest first) ``TIQO_*`` environment variables, ``config.toml``, the defaults here.
The same table renders ``tiqo config show`` and the docs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiqo.core.durations import parse_duration, parse_size
from tiqo.core.errors import ConfigError
from tiqo.core.paths import Paths


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive whole number")
    return number


def _auto_int(value: Any) -> int | None:
    """``auto`` (None: decided at run time) or an integer."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    return _int(value)


def _auto_size(value: Any) -> int | None:
    if value is None or str(value).strip().lower() == "auto":
        return None
    return parse_size(value)


def _str(value: Any) -> str:
    return str(value)


def _similarity(value: Any) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{value!r} is not a cosine similarity in (0, 1]")
    return number


def _max_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("a limit of 0 would refuse all audio (use e.g. 2h, or -1 for no limit)")
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a duration above 0 (e.g. 60s)")
    return seconds


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return text

    return parse


def _timezone(value: Any) -> str:
    """An IANA time zone name; ``local`` resolves to this machine's (TZ, /etc/localtime), else UTC."""
    from zoneinfo import ZoneInfo

    text = str(value).strip()
    if text.lower() == "local":
        text = _local_timezone()
    try:
        ZoneInfo(text)
    except Exception:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as UTC or Europe/Paris)") from None
    return text


def _local_timezone() -> str:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return "UTC"


def _percentages(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = sorted({int(str(v).strip().rstrip("%")) for v in items if str(v).strip()})
    if any(not 0 < v < 100 for v in out):
        raise ValueError(f"thresholds must be percentages between 1 and 99, not {value!r}")
    return tuple(out)


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    kind: str
    env_var: str = ""  # when the default name (TIQO_ + last part) would be ambiguous
    secret: bool = False  # may hold a password or token: `tiqo config show` redacts it, the systemd unit omits it

    @property
    def env(self) -> str:
        if self.env_var:
            return self.env_var
        return "TIQO_" + self.key.split(".", 1)[1].upper() if self.key.count(".") else "TIQO_" + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "daemon.socket",
        "",
        _str,
        "Unix socket path; empty = <runtime dir>/tiqo.sock. A folder others can write (the temp dir) is refused",
        "path",
    ),
    Setting(
        "daemon.autostart", True, _bool, "Start the daemon on first use (TIQO_NO_AUTOSTART=1 turns it off)", "bool"
    ),
    Setting(
        "daemon.startup_timeout", "60s", parse_duration, "How long the CLI waits for a starting daemon", "duration"
    ),
    Setting("daemon.log_level", "info", _choice("debug", "info", "warning", "error"), "Daemon log level", "choice"),
    Setting(
        "daemon.listen",
        "",
        _str,
        "Also serve the /v1 routes over TCP at HOST:PORT, with bearer tokens (`tiqo users token`), and /metrics to "
        "scrape tokens (`tiqo users token NAME --scrape`); empty = off",
        "str",
    ),
    Setting(
        "daemon.listen_tier",
        "free",
        _str,
        "Tier of TCP callers whose [users.NAME] names none (free: local models only; not routing.tier)",
        "str",
    ),
    Setting(
        "daemon.listen_max_connections",
        128,
        _positive_int,
        "Most TCP connections served at once; more get 503 (the Unix socket is not counted)",
        "int",
    ),
    Setting("daemon.max_request_size", "16MiB", parse_size, "Largest request body; bigger ones get 413", "size"),
    Setting(
        "daemon.send_timeout",
        "60s",
        _positive_duration,
        "Longest a client may leave an answer unread; then the daemon drops the connection and frees the model",
        "duration",
    ),
    Setting(
        "daemon.max_json_values",
        50_000,
        _positive_int,
        "Most values (objects, arrays, items) in a JSON body; more get 413 before the body is parsed",
        "int",
    ),
    Setting(
        "scheduler.keep_alive",
        "5m",
        parse_duration,
        "Idle time before a model unloads (0 = at once, -1 = never)",
        "duration",
    ),
    Setting("scheduler.max_loaded_models", 3, _int, "Most models loaded at once (0 = only memory decides)", "int"),
    Setting("scheduler.max_queue", 64, _int, "Requests that may wait per daemon; more get 503 + Retry-After", "int"),
    Setting("scheduler.memory_budget", "auto", _auto_size, "Memory for loaded models; auto = 75% of RAM", "size|auto"),
    Setting(
        "scheduler.num_parallel",
        1,
        _int,
        "Requests one loaded model serves at once (each slot is a model instance)",
        "int",
    ),
    Setting("llm.default_model", "smollm2-135m", _str, "Model used when a request names none", "str"),
    Setting("llm.n_ctx", 4096, _int, "Context window in tokens (capped at the model's trained length)", "int"),
    Setting(
        "llm.n_threads", "auto", _auto_int, "CPU threads per model; auto = physical cores - 1 (at least 1)", "int|auto"
    ),
    Setting(
        "llm.n_gpu_layers",
        "auto",
        _auto_int,
        "Layers offloaded to the GPU; auto = all when llama.cpp has GPU support",
        "int|auto",
    ),
    Setting("llm.n_batch", 512, _int, "Prompt tokens evaluated per batch", "int"),
    Setting(
        "stt.default_model",
        "whisper-tiny.en",
        _str,
        "Speech-to-text model used when a request names none",
        "str",
        env_var="TIQO_STT_MODEL",
    ),
    Setting(
        "stt.max_upload",
        "200MiB",
        parse_size,
        "Largest audio upload to /v1/audio/*; bigger ones get 413",
        "size",
        env_var="TIQO_STT_MAX_UPLOAD",
    ),
    Setting(
        "stt.max_decoded",
        4,
        _positive_int,
        "Transcriptions whose decoded audio may be held at once (each up to stt.max_duration); more wait, "
        "past scheduler.max_queue they get 503",
        "int",
    ),
    Setting(
        "stt.max_duration",
        "2h",
        _max_duration,
        "Longest audio one transcription may decode (-1 = no limit); longer gets 413 (decoded audio: 230 MB an hour)",
        "duration",
        env_var="TIQO_STT_MAX_DURATION",
    ),
    Setting(
        "stt.device",
        "auto",
        _choice("auto", "cpu", "cuda"),
        "Where Whisper runs; auto = cuda (float16) when CTranslate2 sees a GPU, else cpu (int8)",
        "choice",
        env_var="TIQO_STT_DEVICE",
    ),
    Setting(
        "stt.n_threads",
        "auto",
        _auto_int,
        "CPU threads per Whisper model; auto = physical cores - 1 (at least 1)",
        "int|auto",
        env_var="TIQO_STT_THREADS",
    ),
    Setting(
        "stt.vad_filter",
        True,
        _bool,
        "Skip silence with Silero VAD before decoding (without it silence turns into invented words)",
        "bool",
        env_var="TIQO_STT_VAD",
    ),
    Setting("stt.beam_size", 5, _int, "Beam width of Whisper decoding (1 = greedy, faster)", "int", "TIQO_STT_BEAM"),
    Setting(
        "tts.default_voice",
        "en_US-joe-medium",
        _str,
        "Voice used when a request names none (or names an OpenAI voice such as alloy)",
        "str",
        env_var="TIQO_TTS_VOICE",
    ),
    Setting(
        "tts.max_chars",
        1_000_000,
        _int,
        "Longest text one speech request may hold; longer gets 413",
        "int",
        env_var="TIQO_TTS_MAX_CHARS",
    ),
    Setting(
        "embed.default_model",
        "all-minilm-l6-v2",
        _str,
        "Embedding model used when a request names none (also for vector collections)",
        "str",
        env_var="TIQO_EMBED_MODEL",
    ),
    Setting(
        "embed.n_threads",
        "auto",
        _auto_int,
        "CPU threads of the embedding model; auto = physical cores - 1 (at least 1)",
        "int|auto",
        env_var="TIQO_EMBED_THREADS",
    ),
    Setting("routing.tier", "default", _str, "Tier of requests that name none (see [tiers] in config.toml)", "str"),
    Setting(
        "routing.data_class",
        "internal",
        _choice("public", "internal", "confidential", "restricted"),
        "Data class of requests that name none; restricted never leaves the machine",
        "choice",
    ),
    Setting(
        "classification.max_scan_chars",
        8_000_000,
        _positive_int,
        "Most characters of a request scanned for restricted data (linear time, off the event loop); a longer "
        "request is classified restricted (local models only), never sent out unscanned",
        "int",
    ),
    Setting("routing.max_attempts", 6, _int, "Most upstream attempts (keys and candidates) per request", "int"),
    Setting("routing.timeout_connect", "3s", parse_duration, "Connect timeout for external providers", "duration"),
    Setting(
        "routing.timeout_first_byte",
        "20s",
        parse_duration,
        "Longest wait for a provider's first streamed token before trying the next candidate",
        "duration",
    ),
    Setting(
        "routing.timeout_idle",
        "15s",
        parse_duration,
        "Longest silence between streamed chunks of a provider",
        "duration",
    ),
    Setting("routing.breaker_failures", 5, _int, "Consecutive failures that open a circuit breaker", "int"),
    Setting(
        "routing.breaker_cooldown", "60s", parse_duration, "How long an open breaker waits before a probe", "duration"
    ),
    Setting(
        "routing.key_strategy",
        "round-robin",
        _choice("round-robin", "least-used", "weighted"),
        "How a provider's keys take turns (providers may override it)",
        "choice",
    ),
    Setting(
        "cache.mode",
        "deterministic",
        _choice("off", "deterministic", "all"),
        "Exact response cache: deterministic = only temperature 0 or seeded requests",
        "choice",
        env_var="TIQO_CACHE_MODE",
    ),
    Setting("cache.ttl", "24h", parse_duration, "How long a cached answer stays valid", "duration", "TIQO_CACHE_TTL"),
    Setting(
        "cache.scope",
        "user",
        _choice("user", "all"),
        "Who gets a cached answer: user = only the user who asked; all = every user of the same data class (restricted "
        "answers stay per user, and a class the caller names itself never reads or writes shared entries)",
        "choice",
        env_var="TIQO_CACHE_SCOPE",
    ),
    Setting(
        "cache.semantic",
        False,
        _bool,
        "Also serve a cached answer to a question that means the same (embedding similarity, see the threshold)",
        "bool",
        env_var="TIQO_CACHE_SEMANTIC",
    ),
    Setting(
        "cache.semantic_threshold",
        0.93,
        _similarity,
        "Cosine similarity of the last user message at or above which the semantic cache answers (paraphrases "
        "measure 0.94-0.99 with the bundled model, near but different questions up to 0.90)",
        "float",
        env_var="TIQO_CACHE_SEMANTIC_THRESHOLD",
    ),
    Setting(
        "budget.timezone",
        "local",
        _timezone,
        "Time zone of budget days and months (an IANA name; local = this machine's)",
        "str",
        env_var="TIQO_BUDGET_TIMEZONE",
    ),
    Setting(
        "budget.thresholds",
        "70,85,95",
        _percentages,
        "Budget percentages that raise an alert (once per period)",
        "list",
        env_var="TIQO_BUDGET_THRESHOLDS",
    ),
    Setting(
        "budget.actions",
        "",
        _str,
        "What a threshold does besides alerting, e.g. 85:prefer-local,95:block-external",
        "str",
        env_var="TIQO_BUDGET_ACTIONS",
    ),
    Setting(
        "budget.alert_command",
        "",
        _str,
        "Command run on each alert, with the alert as JSON on stdin (shell syntax)",
        "str",
        env_var="TIQO_ALERT_COMMAND",
    ),
    Setting(
        "budget.alert_webhook",
        "",
        _str,
        "URL each alert is POSTed to as JSON",
        "str",
        env_var="TIQO_ALERT_WEBHOOK",
        secret=True,
    ),
    Setting(
        "ledger.store_content",
        False,
        _bool,
        "Keep prompts and answers in the ledger (never for restricted requests)",
        "bool",
        env_var="TIQO_LEDGER_CONTENT",
    ),
    Setting(
        "metrics.enabled",
        True,
        _bool,
        "Serve GET /metrics (Prometheus) and count requests for it; false = no /metrics, nothing counted",
        "bool",
        env_var="TIQO_METRICS",
    ),
    Setting(
        "metrics.user_labels",
        False,
        _bool,
        "Label request metrics with the user too (one series per user: mind the cardinality)",
        "bool",
        env_var="TIQO_METRICS_USER_LABELS",
    ),
    Setting(
        "metrics.max_label_values",
        100,
        _positive_int,
        "Most distinct values one metric label keeps; later ones are counted as `other`",
        "int",
        env_var="TIQO_METRICS_MAX_LABEL_VALUES",
    ),
    Setting(
        "state.backend",
        "sqlite",
        _choice("sqlite", "redis"),
        "Where budget counters and reservations live: sqlite (one daemon) or redis (daemons sharing budgets)",
        "choice",
        env_var="TIQO_STATE_BACKEND",
    ),
    Setting(
        "state.redis_url",
        "redis://127.0.0.1:6379/0",
        _str,
        "Redis server for state.backend = redis",
        "str",
        env_var="TIQO_REDIS_URL",
        secret=True,
    ),
    Setting(
        "vectors.chunk_size",
        1000,
        _int,
        "Largest chunk `tiqo vec add` makes of a document (in vectors.chunk_unit)",
        "int",
        env_var="TIQO_VECTORS_CHUNK_SIZE",
    ),
    Setting(
        "vectors.chunk_overlap",
        200,
        _int,
        "How much of a chunk's end the next chunk repeats (whole sentences or words)",
        "int",
        env_var="TIQO_VECTORS_CHUNK_OVERLAP",
    ),
    Setting(
        "vectors.chunk_unit",
        "chars",
        _choice("chars", "tokens"),
        "What chunk sizes count: chars, or tokens (words and punctuation)",
        "choice",
        env_var="TIQO_VECTORS_CHUNK_UNIT",
    ),
    Setting(
        "vectors.max_chunks_per_request",
        10000,
        _positive_int,
        "Most chunks one ingest request may make (all its documents together); more is refused with 413 before "
        "anything is embedded",
        "int",
        env_var="TIQO_VECTORS_MAX_CHUNKS",
    ),
    Setting(
        "vectors.index_threshold",
        50000,
        _int,
        "Rows from which a collection gets an ANN index, built in the background (0 = never)",
        "int",
        env_var="TIQO_VECTORS_INDEX_THRESHOLD",
    ),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def _lookup(table: Mapping[str, Any], dotted: str) -> Any:
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


class Settings:
    """Resolved settings plus the raw TOML (which also holds the ``[models.NAME]`` catalog)."""

    def __init__(self, paths: Paths, toml: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None):
        self.paths = paths
        self.toml: dict[str, Any] = dict(toml or {})
        self._env = dict(os.environ if env is None else env)
        self._values: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        for setting in SETTINGS:
            raw, source = self.raw(setting)
            try:
                self._values[setting.key] = setting.parse(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"setting {setting.key} = {raw!r} ({source}): {exc}",
                    hint=f"fix it with `tiqo config set {setting.key} VALUE` or unset {setting.env}",
                ) from None
            self._sources[setting.key] = source
        if _bool(self._env.get("TIQO_NO_AUTOSTART", "0")):
            self._values["daemon.autostart"] = False
            self._sources["daemon.autostart"] = "env TIQO_NO_AUTOSTART"

    def raw(self, setting: Setting) -> tuple[Any, str]:
        if setting.env in self._env:
            return self._env[setting.env], f"env {setting.env}"
        try:
            return _lookup(self.toml, setting.key), "config.toml"
        except KeyError:
            return setting.default, "default"

    @classmethod
    def load(cls, paths: Paths | None = None, env: Mapping[str, str] | None = None) -> Settings:
        paths = paths or Paths.from_env(dict(env) if env is not None else None)
        return cls(paths, read_toml(paths.config_file), env)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def source(self, key: str) -> str:
        return self._sources[key]

    @property
    def socket_path(self) -> Path:
        custom = self["daemon.socket"]
        return Path(custom).expanduser() if custom else self.paths.default_socket

    def model_entries(self) -> dict[str, dict[str, Any]]:
        """The ``[models.NAME]`` tables of config.toml."""
        models = self.toml.get("models", {})
        return {str(k): dict(v) for k, v in models.items() if isinstance(v, Mapping)}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint=f"fix or remove {path}") from None


def validate(key: str, value: str) -> Any:
    """Parse ``value`` for ``key`` the way the daemon will, or raise ``ConfigError``."""
    setting = BY_KEY.get(key)
    if setting is None:
        raise ConfigError(f"unknown setting {key!r}", hint="`tiqo config show` lists every setting")
    try:
        setting.parse(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return setting


def typed_for_toml(setting: Setting, value: str) -> Any:
    """The value as it should be written to TOML (booleans and integers unquoted)."""
    if setting.kind == "bool":
        return _bool(value)
    if setting.kind == "int":
        return _int(value)
    if setting.kind == "int|auto" and value.strip().lower() != "auto":
        return _int(value)
    if setting.kind == "float":
        return float(value)
    return value


def write_config_value(path: Path, parts: list[str], value: Any) -> None:
    """Set the key at ``parts`` in the TOML file at ``path`` (None removes it), keeping comments (tomlkit).

    Written mode 0600 from its first byte: keys.toml holds keys, and config.toml may hold a Redis password, a webhook
    URL or a provider's extra headers."""
    import tomlkit

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    node: Any = doc
    for part in parts[:-1]:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    _atomic_write(path, tomlkit.dumps(doc))


def _atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(text)
    os.replace(tmp, path)


def markdown_table() -> str:
    """The settings table as Markdown (the README embeds it; a test keeps the two in step)."""
    lines = ["| setting | environment | default | what it does |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = str(s.default).lower() if isinstance(s.default, bool) else str(s.default)
        lines.append(f"| `{s.key}` | `{s.env}` | `{default or '(empty)'}` | {s.doc} |")
    return "\n".join(lines)
