"""Errors that carry an HTTP status, an OpenAI error type and a hint naming the fix."""

from __future__ import annotations

from typing import Any


class TiqoError(Exception):
    """An error a user can act on. ``hint`` names the command or setting that fixes it."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.param is not None:
            err["param"] = self.param
        if self.hint:
            err["hint"] = self.hint
        return {"error": err}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class BadRequest(TiqoError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class ContextOverflow(BadRequest):
    code = "context_length_exceeded"


class NotFound(TiqoError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(TiqoError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(TiqoError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Unprocessable(TiqoError):
    status = 422
    type = "invalid_request_error"
    code = "validation_error"


class RateLimited(TiqoError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class BudgetExceeded(RateLimited):
    """A budget limit leaves no room for any external candidate (local models keep working)."""

    code = "budget_exceeded"


class ClassificationRefused(TiqoError):
    """Restricted data and no local model can serve it: fail closed rather than send it off the machine."""

    status = 403
    type = "permission_error"
    code = "restricted_data"


class UpstreamFailed(TiqoError):
    """Every candidate that could serve the request failed."""

    status = 502
    type = "upstream_error"
    code = "all_candidates_failed"


class NoCandidate(TiqoError):
    """Routing left nothing that can serve the request (capabilities, data class, tier, context)."""

    status = 400
    type = "invalid_request_error"
    code = "no_candidate"


class Busy(TiqoError):
    status = 503
    type = "server_error"
    code = "server_busy"


class StateUnavailable(Busy):
    """The shared state (Redis) that a limit lives in cannot be reached: the request is refused rather than let
    through uncounted (fail closed)."""

    code = "state_unavailable"


class ModelLoadFailed(TiqoError):
    status = 500
    type = "server_error"
    code = "model_load_failed"


class ConfigError(TiqoError):
    """A setting has a value tiqo cannot use."""

    status = 400
    type = "invalid_request_error"
    code = "bad_config"


class Cancelled(TiqoError):
    """Long work (a job) stopped because its owner cancelled it; raised between steps."""

    status = 409
    type = "invalid_request_error"
    code = "cancelled"


class WorkerDied(TiqoError):
    """A model's worker process died (out of memory, a crash, killed): the work it was doing is lost, the daemon is
    not. The next request starts a fresh worker."""

    status = 500
    type = "server_error"
    code = "worker_died"
