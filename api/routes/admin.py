"""Admin routes (the admin token as Bearer): users and API keys, credits and debits."""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from litestar import Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter

from crypton import codec, topics
from crypton.domain.messages import FEE_ACCOUNT, Credit, Debit, TransferState
from crypton.domain.money import to_text
from crypton.users import (
    SCOPES,
    ApiKey,
    UserIdError,
    UserState,
    check_user_id,
    hash_key,
    new_api_key,
    new_key_id,
    new_user_id,
)

from .. import schemas
from .._body import strict_json
from .._claims import transfer_terms
from .._context import Ctx
from ..errors import ApiError, error_responses, invalid, not_found, unavailable
from ..validation import check_transfer

MAX_BODY_BYTES: Final = 1024
"""A user or a transfer is a few hundred bytes of JSON."""


def with_body(kind: type[msgspec.Struct], *, optional: bool = False) -> dict[str, Any]:
    """For a route with a body: parsed strictly, only after the router's admin guard
    checked the token."""
    return {
        "guards": [strict_json(kind, optional=optional)],
        "request_max_body_size": MAX_BODY_BYTES,
    }


Wait = Annotated[
    bool, Parameter(description="Wait (at most 5 s) for the wallet's decision before answering")
]


@post("/v1/admin/users", **with_body(schemas.NewUser, optional=True), status_code=201,
      responses=error_responses(400, 401, 409, 413, 415, 503))  # fmt: skip
async def create_user(
    ctx: Ctx, data: JSONBody[schemas.NewUser | None] = None
) -> schemas.UserCreated:
    """Create a user and its API key. The key is in this response only: the log keeps
    its SHA-256."""
    user_id = (data.user_id if data else None) or new_user_id()
    try:
        check_user_id(user_id)
    except UserIdError as exc:
        raise invalid("user_id", str(exc)) from None
    if not ctx.readmodel.ready.is_set():
        raise unavailable("the API is still reading the log; retry shortly")

    def known() -> UserState | None:
        with ctx.readmodel.read() as model:
            return model.user(user_id)

    if known() is not None:
        raise ApiError(409, "user_exists", f"user {user_id!r} already exists")
    key = new_api_key()
    now = ctx.now_ms()
    first = ApiKey(new_key_id(), hash_key(key), SCOPES, now)
    mine = UserState(
        user_id=user_id, key_hashes=[first.hash], created_at=now, version=1, keys=[first]
    )
    topic = topics.topic_name(topics.USERS, ctx.settings.topic_prefix)
    await ctx.commands.append(topic, user_id, codec.encode(mine), "create_user")
    # Another replica may have created the same id at the same moment: the first
    # record in the log wins. Waiting for ours also makes the key usable at once here.
    winner = await ctx.hub.wait_for(("user", user_id), known, ctx.config.wait_timeout_s)
    if winner is not None and winner.key_hashes != mine.key_hashes:
        # Write the winner again so that compaction, which keeps the last record
        # per key, keeps the winner and not our losing record.
        await ctx.commands.append(topic, user_id, codec.encode(winner), "create_user")
        raise ApiError(409, "user_exists", f"user {user_id!r} already exists")
    return schemas.UserCreated(
        user_id=user_id, api_key=key, key_id=first.key_id, scopes=list(first.scopes)
    )


@get("/v1/admin/users/{user_id:str}/balances", responses=error_responses(401, 404))
async def user_balances(ctx: Ctx, user_id: FromPath[str]) -> dict[str, schemas.BalanceView]:
    """Any user's balances, including the fee account ``_fees``."""
    with ctx.readmodel.read() as model:
        if user_id != FEE_ACCOUNT and model.user(user_id) is None:
            raise not_found("user", user_id)
        state = model.balance(user_id)
    return schemas.from_balances(state, ctx.precisions)


_TRANSFER_RESPONSES = {
    200: ResponseSpec(schemas.TransferView, description="Decided (repeat, or ?wait=true)"),
    **error_responses(400, 401, 404, 409, 413, 415, 503),
}


@post("/v1/admin/users/{user_id:str}/credit", **with_body(schemas.TransferRequest),
      status_code=202, responses=_TRANSFER_RESPONSES)  # fmt: skip
async def credit(
    ctx: Ctx, user_id: FromPath[str], data: JSONBody[schemas.TransferRequest], wait: Wait = False
) -> Response[schemas.TransferView]:
    """Add to the user's available balance (a deposit)."""
    return await _transfer(ctx, user_id, "credit", data, wait)


@post("/v1/admin/users/{user_id:str}/debit", **with_body(schemas.TransferRequest),
      status_code=202, responses=_TRANSFER_RESPONSES)  # fmt: skip
async def debit(
    ctx: Ctx, user_id: FromPath[str], data: JSONBody[schemas.TransferRequest], wait: Wait = False
) -> Response[schemas.TransferView]:
    """Take from the user's available balance (a withdrawal); the wallet rejects a debit
    beyond what is available, with the reason."""
    return await _transfer(ctx, user_id, "debit", data, wait)


async def _transfer(
    ctx: Ctx, user_id: str, direction: str, body: schemas.TransferRequest, wait: bool
) -> Response[schemas.TransferView]:
    command = check_transfer(ctx.markets, user_id, direction, body, ctx.now_ms())
    terms = transfer_terms(command)
    if not ctx.readmodel.ready.is_set():
        raise unavailable("the API is still reading the log; retry shortly")

    def decided() -> TransferState | None:
        with ctx.readmodel.read() as model:
            return model.transfer(user_id, body.transfer_id)

    def answer(state: TransferState) -> Response[schemas.TransferView]:
        # Never another transfer's outcome: the first transfer in the log with this id
        # is the one the wallet decided, whatever this request asked for.
        if transfer_terms(state) != terms:
            raise _conflict(body.transfer_id)
        return Response(schemas.from_transfer(state, ctx.precisions[state.asset]), status_code=200)

    with ctx.readmodel.read() as model:
        if user_id != FEE_ACCOUNT and model.user(user_id) is None:
            raise not_found("user", user_id)
    known = decided()
    if known is not None:
        return answer(known)
    claim = ("transfer", user_id, body.transfer_id)
    if not ctx.claims.claim(claim, terms):
        raise _conflict(body.transfer_id)
    topic = topics.topic_name(topics.WALLET_INBOX, ctx.settings.topic_prefix)
    try:
        await ctx.commands.append(topic, user_id, codec.encode(command), direction)
    except ApiError:
        ctx.claims.release(claim, terms)
        raise
    if wait:
        key = ("transfer", f"{user_id}/{body.transfer_id}")
        final = await ctx.hub.wait_for(key, decided, ctx.config.wait_timeout_s)
        if final is not None:
            return answer(final)
    return Response(_pending(command, ctx.precisions[command.asset]), status_code=202)


def _conflict(transfer_id: str) -> ApiError:
    return ApiError(
        409, "transfer_conflict", f"transfer_id {transfer_id!r} was used for a different transfer"
    )


def _pending(command: Credit | Debit, precision: int) -> schemas.TransferView:
    return schemas.TransferView(
        transfer_id=command.transfer_id, user_id=command.user_id,
        direction="credit" if isinstance(command, Credit) else "debit", asset=command.asset,
        amount=to_text(command.amount, precision), status="PENDING", reason=None, reason_code=None,
        time=command.ts,
    )  # fmt: skip
