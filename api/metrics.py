"""Prometheus metrics of one API process, served at ``/metrics``.

Each app gets its own registry so several apps can live in one process (tests)
without clashing over the global default registry; the process, platform and
garbage-collector collectors are added to it (the default registry has them, a new
one does not), so CPU, memory, file descriptors and GC pauses are scraped too.
"""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = Counter(
            "crypton_api_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "crypton_api_request_duration_seconds",
            "HTTP request latency until the response starts",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.commands = Counter(
            "crypton_api_commands", "Commands acknowledged by the broker", ["command"], registry=r
        )
        self.produce_failures = Counter(
            "crypton_api_produce_failures",
            "Commands the broker did not acknowledge",
            ["command"],
            registry=r,
        )
        self.records = Counter(
            "crypton_api_readmodel_records", "State records read", ["topic"], registry=r
        )
        self.applied = Counter(
            "crypton_api_readmodel_applied",
            "State records that changed the read model (not stale or duplicate)",
            ["topic"],
            registry=r,
        )
        self.unsigned = Counter(
            "crypton_api_readmodel_unsigned",
            "Users records without the API's MAC, ignored (only with CRYPTON_API_SECRET)",
            ["topic"],
            registry=r,
        )
        self.decode_errors = Counter(
            "crypton_api_readmodel_decode_errors",
            "Undecodable state records",
            ["topic"],
            registry=r,
        )
        self.lag = Gauge(
            "crypton_api_readmodel_lag", "Records behind the high watermark", ["topic"], registry=r
        )
        self.ready = Gauge(
            "crypton_api_readmodel_ready", "1 once caught up with the log at start", registry=r
        )
        self.sse_clients = Gauge(
            "crypton_api_sse_clients", "Connected SSE clients", ["stream"], registry=r
        )
        self.sse_dropped = Counter(
            "crypton_api_sse_dropped",
            "SSE clients dropped for falling behind",
            ["stream"],
            registry=r,
        )
        self.rate_limited = Counter(
            "crypton_api_rate_limited",
            "Requests refused with 429 by the rate limit, by bucket kind",
            ["bucket"],
            registry=r,
        )


def metrics_middleware(metrics: Metrics) -> type:
    """ASGI middleware counting requests and timing them by route template."""

    class _Middleware:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await self.app(scope, receive, send)
                return
            method = scope["method"]
            start = time.perf_counter()
            status = 500

            async def record(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    route = str(scope.get("path_template") or "unmatched")
                    metrics.latency.labels(method, route).observe(time.perf_counter() - start)
                await send(message)

            try:
                await self.app(scope, receive, record)
            finally:
                route = str(scope.get("path_template") or "unmatched")
                metrics.requests.labels(method, route, str(status)).inc()

    return _Middleware
