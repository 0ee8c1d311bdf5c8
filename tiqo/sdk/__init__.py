"""The plugin API: the only part of tiqo that plugins import."""

from tiqo.sdk.engine import Engine, GenerationParams, ModelSpec, Piece, Runner, StopFlag
from tiqo.sdk.hookspecs import hookimpl
from tiqo.sdk.provider import (
    AudioProviderKind,
    FailureKind,
    FormFile,
    ProviderConfig,
    ProviderKind,
    StreamTranslator,
    UnsupportedRequest,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamRequest,
    failure_from_status,
    retry_after_seconds,
)

__all__ = [
    "AudioProviderKind",
    "Engine",
    "FailureKind",
    "FormFile",
    "GenerationParams",
    "ModelSpec",
    "Piece",
    "ProviderConfig",
    "ProviderKind",
    "Runner",
    "StopFlag",
    "StreamTranslator",
    "UnsupportedRequest",
    "UpstreamFailure",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "failure_from_status",
    "hookimpl",
    "retry_after_seconds",
]
