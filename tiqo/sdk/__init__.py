"""The plugin API: the only part of tiqo that plugins import."""

from tiqo.sdk.embedding import Embedded, EmbeddingRunner
from tiqo.sdk.engine import (
    ChatRunner,
    Described,
    Engine,
    Fragile,
    GenerationParams,
    ModelSpec,
    Piece,
    Recognised,
    Runner,
    StopFlag,
)
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
from tiqo.sdk.speech import SpeechRunner, SttJob, TranscribeRunner, TtsJob

__all__ = [
    "AudioProviderKind",
    "ChatRunner",
    "Described",
    "Embedded",
    "EmbeddingRunner",
    "Engine",
    "FailureKind",
    "FormFile",
    "Fragile",
    "GenerationParams",
    "ModelSpec",
    "Piece",
    "ProviderConfig",
    "ProviderKind",
    "Recognised",
    "Runner",
    "SpeechRunner",
    "StopFlag",
    "StreamTranslator",
    "SttJob",
    "TranscribeRunner",
    "TtsJob",
    "UnsupportedRequest",
    "UpstreamFailure",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "failure_from_status",
    "hookimpl",
    "retry_after_seconds",
]
