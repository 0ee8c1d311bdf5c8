"""The ledger's rows: one per request the daemon answered or refused, one per off-machine call."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

CounterKey = tuple[str, str]  # (counter, period id)


@dataclass
class RequestRow:
    """One row per request the daemon answered or refused."""

    id: str
    ts: float
    user: str = ""
    tier: str = ""
    task: str = ""
    data_class: str = ""
    backend: str = ""
    provider: str = ""
    model: str = ""
    key: str | None = None  # the key's name, never the secret
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nusd: int = 0
    latency_ms: float = 0.0
    cache: str = "off"
    outcome: str = "ok"  # ok | error | refused | interrupted | cancelled
    error: str | None = None  # the error code
    attempts: int = 0
    route: str = ""
    content: str | None = None  # only with ledger.store_content, never for restricted requests
    audio_s: float = 0.0  # seconds of audio heard (stt) or spoken (tts); for tts, tokens_in counts characters
    images: int = 0  # images made (image), or frames (video)
    video_s: float = 0.0  # seconds of video made
    steps: int = 0  # denoising steps run (local image and video models)
    device: str = ""  # where a local model ran: cpu, cuda:0, ...


REQUEST_COLUMNS = tuple(f.name for f in fields(RequestRow))


@dataclass
class CallRow:
    """One off-machine call: the audit trail (why it was allowed) and its budget reservation."""

    id: str
    request_id: str
    ts: float
    user: str
    provider: str
    model: str
    key: str | None
    data_class: str
    reason: str
    reserved_nusd: int = 0
    charges: list[CounterKey] = field(default_factory=list)
