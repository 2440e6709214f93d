"""Push: server-sent events for a market and for the caller's own orders and balances."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import FromPath, HeaderParameter
from litestar.response import ServerSentEvent

from .._context import Ctx, User
from .._sse import market_stream, user_stream
from ..auth import PUBLIC, SECURITY, USER_ONLY
from ..errors import error_responses, too_many_streams
from . import area
from .markets import market_of

LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="Resume after this event id (browsers send it when they reconnect)",
    ),
]


@get("/v1/stream/markets/{market:str}", responses=error_responses(404))
async def stream_market(
    ctx: Ctx, market: FromPath[str], last_event_id: LastEventId = None
) -> ServerSentEvent:
    """``trade`` and ``depth`` events of one market (``text/event-stream``)."""
    m = market_of(ctx, market)
    return ServerSentEvent(market_stream(ctx, m, last_event_id))


@get("/v1/stream/me", dependencies=USER_ONLY, security=SECURITY,
     responses=error_responses(401, 429, 503))  # fmt: skip
async def stream_me(ctx: Ctx, user: User, last_event_id: LastEventId = None) -> ServerSentEvent:
    """The caller's ``order`` and ``balance`` events. Without Last-Event-ID the stream
    starts with the current balances and open orders. A user may keep a few streams
    open at once (``CRYPTON_SSE_STREAMS_PER_USER``); one more is a 429."""
    if len(ctx.hub.users.get(user, ())) >= ctx.config.sse_streams_per_user:
        raise too_many_streams(ctx.config.sse_streams_per_user)
    return ServerSentEvent(user_stream(ctx, user, last_event_id))


router = area("stream", [stream_market, stream_me], dependencies=PUBLIC)
