"""``GET /metrics``: the daemon's Prometheus metrics (``accounting/metrics.py``, ``telemetry/gauges.py``).

On the Unix socket it is open like every route; over TCP only a scrape token reads it (``http/tcp.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from tiqo.core.errors import NotFound
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import errors

router = api_router()
TEXT = {"schema": {"type": "string"}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text format (OpenMetrics when asked)",
        "content": {"text/plain": TEXT, "application/openmetrics-text": TEXT},
    },
    **errors(403, 404),
}


@router.get(
    "/metrics",
    response_class=Response,
    responses=RESPONSES,
)
async def metrics(request: Request) -> Response:
    """Requests, durations, tokens, cost, cache hits, keys, breakers, models, queues and budgets, for Prometheus."""
    registry: Metrics | None = request.app.state.metrics
    if registry is None:
        raise NotFound("metrics are off", hint="turn them on: `tiqo config set metrics.enabled true`, then restart")
    body, content_type = await registry.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
