"""``GET /metrics``: the daemon's Prometheus metrics (``accounting/metrics.py``, ``telemetry/gauges.py``).

On the Unix socket it is open like every route; over TCP only a scrape token reads it (``http/tcp.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tiqo.core.errors import NotFound
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.http.openapi_errors import errors

router = APIRouter()
EXPOSITION = {
    "text/plain": {"schema": {"type": "string"}},
    "application/openmetrics-text": {"schema": {"type": "string"}},
}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format (OpenMetrics when asked)", "content": EXPOSITION}}
    | errors(403, 404),
)
async def metrics(request: Request) -> Response:
    """Requests, durations, tokens, cost, cache hits, keys, breakers, models, queues and budgets, for Prometheus."""
    registry: Metrics | None = request.app.state.metrics
    if registry is None:
        raise NotFound("metrics are off", hint="turn them on: `tiqo config set metrics.enabled true`, then restart")
    body, content_type = registry.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
