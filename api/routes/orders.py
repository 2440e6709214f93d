"""Orders: place, cancel, cancel all, get and list (the caller's own only).

Commands are acknowledged once they are in the log (202); the order's state
comes later from ``crypton.orders``. ``?wait=true`` waits (bounded) for the
book's answer to a new order (resting, filled, expired, or the wallet's refusal),
and for a canceled order to close, so a client can read its own write.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from litestar import Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, Parameter, QueryParameter

from crypton import codec, topics
from crypton.domain.messages import NEW, TERMINAL, CancelAll, CancelOrder, OrderState

from .. import schemas
from .._body import strict_json
from .._claims import order_terms
from .._context import Ctx, User
from ..auth import SECURITY, TRADE, USER, user_guard
from ..errors import ApiError, error_responses, invalid, not_found
from ..validation import check_order, new_client_order_id
from . import area
from .markets import market_of

Wait = Annotated[
    bool, Parameter(description="Wait (at most 5 s) for the order's state before answering")
]
MAX_ORDER_BYTES: Final = 2048
"""An order is under 1 KB of JSON; twice that leaves room for whitespace."""
_ORDER_CURSOR = re.compile(r"(\d{1,19})\.([A-Za-z0-9-]{1,64})")
OrderId = Annotated[
    str, Parameter(pattern=r"^[A-Za-z0-9-]{1,64}$", description="The order_id of an order")
]
ClientOrderId = Annotated[
    str,
    Parameter(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The client_order_id of an order"),
]
Cursor = Annotated[
    str | None,
    Parameter(
        pattern=r"^[0-9]{1,19}\.[A-Za-z0-9-]{1,64}$",
        description="next_cursor of the previous page",
    ),
]


def _inbox(ctx: Ctx) -> str:
    return topics.topic_name(topics.WALLET_INBOX, ctx.settings.topic_prefix)


def _view(ctx: Ctx, state: OrderState) -> schemas.OrderView:
    return schemas.from_order(ctx.markets.market(state.market), state)


def _own_by_client_id(ctx: Ctx, user: User, client_order_id: str) -> OrderState:
    with ctx.readmodel.read() as model:
        state = model.order_by_client_id(user, client_order_id)
    if state is None:
        raise not_found("order", client_order_id)
    return state


def _own_order(ctx: Ctx, user: User, order_id: str) -> OrderState:
    with ctx.readmodel.read() as model:
        state = model.order_of(user, order_id)
    if state is None:
        raise not_found("order", order_id)
    return state


@post(
    "/v1/orders", status_code=202,
    opt=TRADE,
    guards=[user_guard, strict_json(schemas.NewOrder)], request_max_body_size=MAX_ORDER_BYTES,
    responses={
        200: ResponseSpec(
            schemas.OrderView, description="Known order (repeated client_order_id, or ?wait=true)"
        ),
        **error_responses(400, 401, 403, 409, 413, 415, 503),
    },
)  # fmt: skip
async def place_order(
    ctx: Ctx, user: User, data: JSONBody[schemas.NewOrder], wait: Wait = False
) -> Response[schemas.OrderView]:
    """Place an order. The order id is derived from (user, client_order_id), so a retry
    with the same client_order_id names the same order and never places a second one.
    Reusing a client_order_id with other terms is a 409 ``order_conflict``."""
    client_order_id = data.client_order_id or new_client_order_id()
    command = check_order(ctx.markets, user, data, client_order_id, ctx.now_ms(), ctx.secret)
    terms = order_terms(command)

    def answer(state: OrderState) -> Response[schemas.OrderView]:
        # Only the first order in the log with this client_order_id exists: never answer
        # with another request's terms as if they had been accepted.
        if order_terms(state) != terms:
            raise _conflict(client_order_id)
        return Response(_view(ctx, state), status_code=200)

    with ctx.readmodel.read() as model:
        known = model.order_by_client_id(user, client_order_id)
    if known is not None:
        return answer(known)
    claim = ("order", user, client_order_id)
    if not ctx.claims.claim(claim, terms):
        raise _conflict(client_order_id)
    try:
        await ctx.commands.append(_inbox(ctx), user, codec.encode(command), "place_order")
    except ApiError:
        ctx.claims.release(claim, terms)
        raise
    if wait:

        def latest() -> OrderState | None:
            with ctx.readmodel.read() as model:
                return model.order_of(user, command.order_id)

        def answered() -> OrderState | None:
            # The book's answer (resting, filled, expired...) or the wallet's refusal:
            # NEW only says that the funds are held and the order is on its way.
            state = latest()
            return state if state is not None and state.status != NEW else None

        state = await ctx.hub.wait_for(
            ("order", command.order_id), answered, ctx.config.wait_timeout_s
        )
        if state is None:
            state = latest()  # the book is slow: what is known so far
        if state is not None:
            return answer(state)
    market = ctx.markets.market(command.market)
    return Response(schemas.from_order(market, command), status_code=202)


def _conflict(client_order_id: str) -> ApiError:
    return ApiError(
        409, "order_conflict",
        f"client_order_id {client_order_id!r} was used for an order with other terms",
    )  # fmt: skip


_CANCEL_RESPONSES = {
    200: ResponseSpec(schemas.OrderView, description="With ?wait=true: the closed order"),
    **error_responses(401, 403, 404, 409, 503),
}


@get("/v1/orders/{order_id:str}", responses=error_responses(401, 404))
async def get_order(ctx: Ctx, user: User, order_id: OrderId) -> schemas.OrderView:
    return _view(ctx, _own_order(ctx, user, order_id))


@delete(
    "/v1/orders/{order_id:str}", status_code=202, opt=TRADE,
    responses=_CANCEL_RESPONSES,
)  # fmt: skip
async def cancel_order(
    ctx: Ctx, user: User, order_id: OrderId, wait: Wait = False
) -> Response[schemas.OrderView]:
    """Request a cancel. An order that is already closed (filled, canceled, expired,
    rejected) answers 409 ``order_closed``; its state is at GET /v1/orders/{order_id}."""
    return await _cancel(ctx, user, _own_order(ctx, user, order_id), wait)


@get("/v1/orders/by-client-id/{client_order_id:str}", responses=error_responses(401, 404))
async def get_order_by_client_id(
    ctx: Ctx, user: User, client_order_id: ClientOrderId
) -> schemas.OrderView:
    """The caller's order placed with this client_order_id (another user's is a 404)."""
    return _view(ctx, _own_by_client_id(ctx, user, client_order_id))


@delete(
    "/v1/orders/by-client-id/{client_order_id:str}", status_code=202, opt=TRADE,
    responses=_CANCEL_RESPONSES,
)  # fmt: skip
async def cancel_order_by_client_id(
    ctx: Ctx, user: User, client_order_id: ClientOrderId, wait: Wait = False
) -> Response[schemas.OrderView]:
    """Request the cancel of the caller's order placed with this client_order_id, as
    DELETE /v1/orders/{order_id} does."""
    return await _cancel(ctx, user, _own_by_client_id(ctx, user, client_order_id), wait)


async def _cancel(
    ctx: Ctx, user: User, state: OrderState, wait: bool
) -> Response[schemas.OrderView]:
    order_id = state.order_id
    if state.status in TERMINAL:
        raise ApiError(
            409, "order_closed", f"order {order_id} is already {state.status}",
            reason_code="order_not_open",
        )  # fmt: skip
    command = CancelOrder(user_id=user, order_id=order_id, ts=ctx.now_ms())
    await ctx.commands.append(_inbox(ctx), user, codec.encode(command), "cancel_order")
    if wait:

        def closed() -> OrderState | None:
            with ctx.readmodel.read() as model:
                now = model.order_of(user, order_id)
            return now if now is not None and now.status in TERMINAL else None

        final = await ctx.hub.wait_for(("order", order_id), closed, ctx.config.wait_timeout_s)
        if final is not None:
            return Response(_view(ctx, final), status_code=200)
    return Response(_view(ctx, state), status_code=202)


@delete("/v1/orders", status_code=202,
        opt=TRADE, responses=error_responses(401, 403, 404, 503))  # fmt: skip
async def cancel_all(
    ctx: Ctx,
    user: User,
    market: Annotated[str | None, Parameter(description="Cancel in this market only")] = None,
    everything: Annotated[
        bool, QueryParameter(name="all", description="Cancel in every market (instead of `market`)")
    ] = False,
) -> schemas.CancelAllResult:
    """Cancel every open order of the caller in one market (``market``) or in all of them
    (``all=true``). One of the two is required: a request naming neither is a client bug
    (an empty order id, say), never "cancel everything"."""
    if (market is None) == (not everything):
        raise invalid("market", "give either market=<market> or all=true, not both or neither")
    if market is not None:
        market_of(ctx, market)
    with ctx.readmodel.read() as model:
        open_ids = [o.order_id for o in model.open_orders(user, market)]
    command = CancelAll(user_id=user, market=market, ts=ctx.now_ms())
    await ctx.commands.append(_inbox(ctx), user, codec.encode(command), "cancel_all")
    return schemas.CancelAllResult(market=market, order_ids=open_ids)


@get("/v1/orders", responses=error_responses(400, 401, 404))
async def list_orders(
    *,
    ctx: Ctx,
    user: User,
    status: FromQuery[Literal["open", "all"]] = "all",
    market: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> schemas.OrderPage:
    """The caller's orders, newest first."""
    if market is not None:
        market_of(ctx, market)
    after = None
    if cursor is not None:
        match = _ORDER_CURSOR.fullmatch(cursor)
        if match is None:
            raise invalid("cursor", "cursor must be a next_cursor returned by this endpoint")
        after = (int(match[1]), match[2])
    with ctx.readmodel.read() as model:
        page = model.list_orders(
            user, open_only=status == "open", market=market, limit=limit, cursor=after
        )
    return schemas.OrderPage(
        items=[_view(ctx, s) for s in page.items], next_cursor=page.next_cursor
    )


router = area(
    "orders",
    [place_order, get_order, cancel_order, get_order_by_client_id, cancel_order_by_client_id,
     cancel_all, list_orders],
    dependencies=USER, security=SECURITY,
)  # fmt: skip
