"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from litestar import MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import schemas
from .._context import Ctx
from ..auth import PUBLIC
from ..errors import ApiError, error_responses
from . import area


@get("/health", sync_to_thread=False)
def health() -> schemas.Status:
    """The process is up."""
    return schemas.Status(status="ok")


@get("/ready", responses=error_responses(503),
     sync_to_thread=False)  # fmt: skip
def ready(ctx: Ctx) -> schemas.Status:
    """Caught up with the state topics as they were at start, and the broker reachable."""
    rm = ctx.readmodel
    if not rm.ready.is_set():
        raise ApiError(503, "not_ready", "the read model is still reading the state topics")
    if not rm.connected:
        raise ApiError(503, "not_ready", "the broker is not reachable")
    # No counts of users or orders: this route is public (they are in /metrics).
    detail = None if rm.ready_after_s is None else {"startup_ms": int(rm.ready_after_s * 1000)}
    return schemas.Status(status="ready", detail=detail)


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics(ctx: Ctx) -> Response[bytes]:
    return Response(
        generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST or MediaType.TEXT
    )


router = area("ops", [health, ready, metrics], dependencies=PUBLIC)
