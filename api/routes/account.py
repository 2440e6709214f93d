"""The caller's balances and fills."""

from __future__ import annotations

import re
from typing import Annotated

from litestar import get
from litestar.params import FromQuery, Parameter

from .. import schemas
from .._context import Ctx, User
from ..auth import SECURITY, USER
from ..errors import error_responses, invalid
from . import area
from .markets import market_of

_FILL_CURSOR = re.compile(r"(\d{1,19})\.([A-Z0-9]{1,16}-[A-Z0-9]{1,16})\.(\d{1,19})")


@get("/v1/balances", responses=error_responses(401))
async def get_balances(ctx: Ctx, user: User) -> dict[str, schemas.BalanceView]:
    """``{asset: {available, held}}`` for every asset; ``held`` backs open orders."""
    with ctx.readmodel.read() as model:
        state = model.balance(user)
    return schemas.from_balances(state, ctx.precisions)


@get("/v1/fills", responses=error_responses(400, 401, 404))
async def list_fills(
    ctx: Ctx,
    user: User,
    market: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None,
        Parameter(
            pattern=r"^[0-9]{1,19}\.[A-Z0-9]{1,16}-[A-Z0-9]{1,16}\.[0-9]{1,19}$",
            description="next_cursor of the previous page",
        ),
    ] = None,
) -> schemas.FillPage:
    """The caller's executions, newest first: which side, maker or taker, and the fee
    (charged in the market's quote asset)."""
    if market is not None:
        market_of(ctx, market)
    after = None
    if cursor is not None:
        match = _FILL_CURSOR.fullmatch(cursor)
        if match is None:
            raise invalid("cursor", "cursor must be a next_cursor returned by this endpoint")
        after = (int(match[1]), match[2], int(match[3]))
    with ctx.readmodel.read() as model:
        page = model.fills(user, market=market, limit=limit, cursor=after)
        ids = [model.client_order_id(f.order_id) for f in page.items]
    items = [
        schemas.from_fill(ctx.markets.market(f.trade.market), f, client_order_id)
        for f, client_order_id in zip(page.items, ids, strict=True)
    ]
    return schemas.FillPage(items=items, next_cursor=page.next_cursor)


router = area("account", [get_balances, list_fills], dependencies=USER, security=SECURITY)
