"""The plugin API: the only part of tiqo that plugins import."""

from tiqo.sdk.engine import Engine, GenerationParams, ModelSpec, Piece, Runner, StopFlag
from tiqo.sdk.hookspecs import hookimpl

__all__ = ["Engine", "GenerationParams", "ModelSpec", "Piece", "Runner", "StopFlag", "hookimpl"]
