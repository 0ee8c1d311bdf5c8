"""Bodies of tiqo's own routes (``/tiqo/...``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tiqo.core.durations import parse_duration


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_alive: str | float | None = None

    def keep_alive_seconds(self) -> float | None:
        return None if self.keep_alive is None else parse_duration(self.keep_alive)


class BackupRequest(BaseModel):
    """``POST /tiqo/backup``: where the daemon writes the archive (an absolute path ending in .tar, .tar.gz or .tgz
    that does not exist yet), and whether provider keys go in."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096)
    include_keys: bool = False


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class AddModelRequest(BaseModel):
    """A local GGUF (``path``) or an external model (``provider`` + ``upstream_model`` + prices)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME)
    path: str | None = None
    n_ctx: int | None = Field(default=None, ge=64)
    keep_alive: str | None = None
    description: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    price_in: float = Field(default=0.0, ge=0, description="USD per 1M input tokens")
    price_out: float = Field(default=0.0, ge=0, description="USD per 1M output tokens")
    context: int | None = Field(default=None, ge=1)
    capabilities: list[str] | None = None
    fallbacks: list[str] | None = None
    premium: bool = Field(default=False, description="only tiers with premium = true may use it")
    price_minute: float = Field(default=0.0, ge=0, description="USD per minute of audio (speech-to-text)")
    price_mchar: float = Field(default=0.0, ge=0, description="USD per 1M characters (text-to-speech)")
    price_image: float = Field(default=0.0, ge=0, description="USD per image (image generation)")

    @model_validator(mode="after")
    def _one_source(self) -> AddModelRequest:
        if (self.path is None) == (self.provider is None):
            raise ValueError(
                "give either path (a GGUF file, a Whisper folder or a Piper .onnx voice) or provider (an external "
                "model)"
            )
        return self


class ReplicaEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048)
    weight: float = Field(default=1.0, gt=0, le=1000)


class AddProviderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME)
    kind: str = "openai"
    base_url: str | None = None
    key_strategy: str | None = None
    max_class: str | None = None
    timeout_connect: str | None = None
    timeout_first_byte: str | None = None
    timeout_idle: str | None = None
    headers: dict[str, str] | None = None
    auth: Literal["key", "none"] | None = Field(default=None, description='"none": a keyless server (local vLLM)')
    endpoints: list[ReplicaEndpoint] | None = Field(
        default=None, max_length=64, description="replicas serving the same models (balanced, health-checked)"
    )
    trusted: bool | None = Field(
        default=None, description="inside the trust boundary (another tiqo): it may receive restricted data"
    )


class AddKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    name: str | None = None
    secret: str = Field(min_length=1, max_length=4096)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    rpd: int | None = Field(default=None, ge=1)
    tpd: int | None = Field(default=None, ge=1)
    reset: str | None = None
    tz: str | None = None
    weight: float | None = Field(default=None, gt=0)


class RouteExplainRequest(BaseModel):
    """A dry run of routing: a prompt (or full chat messages) and who asks."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    model: str | None = None
    user: str | None = None
    tier: str | None = None
    data_class: str | None = Field(default=None, alias="class")
    task: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None  # a JSON answer needs a model with the json capability


class SetBudgetRequest(BaseModel):
    """One limit of ``[budgets]``: ``usd`` null removes it."""

    model_config = ConfigDict(extra="forbid")
    scope: Literal["global", "user", "provider", "model"] = "global"
    name: str | None = Field(default=None, description="user, provider or model name; * = each one separately")
    period: Literal["day", "month"] = "day"
    usd: float | None = Field(
        default=None,
        ge=0,
        le=1e12,  # tiqo.policy.budget.MAX_USD
        strict=True,
        description="a number of US dollars (not a boolean); null removes it",
    )


class CreateTokenRequest(BaseModel):
    """``POST /tiqo/users/NAME/token``: optionally the tier to give the user (written to ``[users.NAME] tier``), or
    a scrape token instead of a user's."""

    model_config = ConfigDict(extra="forbid")
    tier: str | None = Field(
        default=None,
        description="a [tiers] name, or default; without one the user keeps theirs or gets daemon.listen_tier",
    )
    scrape: bool = Field(
        default=False,
        description='a scrape token: reads GET /metrics over TCP and nothing else ([users.NAME] role = "metrics")',
    )
