"""The Litestar application: ``python -m uvicorn api.app:create_app --factory``."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from crypton.config import Settings

from ._config import ApiConfig, api_secret
from ._context import Context
from ._hub import Hub
from ._openapi import operation_id, refine_schema
from ._paths import StrictPathMiddleware
from ._producer import CommandLog
from ._ratelimit import Buckets, RateLimitMiddleware
from .auth import BEARER
from .errors import EXCEPTION_HANDLERS
from .metrics import Metrics, metrics_middleware
from .readmodel import LiveReadModel
from .routes import account, health, keys, markets, orders, page, stream

log = logging.getLogger("crypton.api")

ROUTERS = [health.router, markets.router, orders.router, account.router, keys.router,
           stream.router]  # fmt: skip
"""One Router per area, carrying its dependencies, guards, security and tags once."""
ROUTES = [
    handler
    for router in ROUTERS
    for route in router.routes
    for handler in getattr(route, "route_handlers", ())
    if "OPTIONS" not in handler.http_methods
]


def _close_streams_on_exit_signals(loop: asyncio.AbstractEventLoop, hub: Hub) -> None:
    """Chain onto the server's SIGINT/SIGTERM handlers so open SSE streams end at once:
    uvicorn waits for every response to finish before it shuts down, and a stream
    never finishes by itself. Clients reconnect elsewhere with Last-Event-ID."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers live on the main thread only (e.g. not under a test client)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(hub.close)
            previous(sig, frame)

        signal.signal(signum, handler)


def create_app(settings: Settings | None = None, config: ApiConfig | None = None) -> Litestar:
    """Build the app; the read model and the producer start with the server's event loop."""
    settings = settings or Settings.from_env()
    config = config or ApiConfig.from_env()
    metrics = Metrics()
    readmodel = LiveReadModel(settings, metrics, config.readmodel_dir)
    hub = Hub()
    readmodel.on_changes = hub.post
    secret = api_secret(config, settings.data_dir)
    ctx = Context(
        settings=settings,
        config=config,
        markets=settings.markets(),
        metrics=metrics,
        readmodel=readmodel,
        hub=hub,
        commands=CommandLog(settings, metrics, config.produce_timeout_s, secret),
        secret=secret,
        rate_limits=Buckets(config.rate_limit, config.rate_burst) if config.rate_limit else None,
    )
    if config.admin_token is None:
        log.warning("CRYPTON_ADMIN_TOKEN is not set: admin routes answer 401")

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # Nothing connects before this: building the app (e.g. to dump its OpenAPI
        # document) needs no broker.
        loop = asyncio.get_running_loop()
        hub.bind(loop)
        _close_streams_on_exit_signals(loop, hub)
        ctx.commands.start()
        readmodel.start()
        try:
            yield
        finally:
            await asyncio.to_thread(readmodel.stop)
            await asyncio.to_thread(ctx.commands.close)

    app = Litestar(
        # The OPTIONS handlers first: each path then has one before Litestar makes its own.
        route_handlers=[*ROUTERS, page.index, page.static_files()],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[metrics_middleware(metrics), StrictPathMiddleware, RateLimitMiddleware],
        state=State({"ctx": ctx}),
        openapi_config=OpenAPIConfig(
            title="Crypton",
            version="1.0.0",
            description=(
                "A crypto exchange whose only database is the Kafka log. Amounts are decimal "
                "strings, times are milliseconds since the epoch. Authenticate with "
                "`Authorization: Bearer <api key>` (admin routes: the admin token)."
            ),
            path="/schema",
            operation_id_creator=operation_id,
            render_plugins=[SwaggerRenderPlugin(path="/"), JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    BEARER: SecurityScheme(type="http", scheme="bearer", description="API key")
                }
            ),
        ),
    )
    refine_schema(app, ROUTES, ctx.markets)
    return app
