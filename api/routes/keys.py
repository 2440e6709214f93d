"""Admin routes for a user's API keys: issue (with scopes), list, revoke.

A user's keys are its ``crypton.users`` record; a change is a new record with
the next version, folded by every replica's read model. Revoking answers once
this replica has folded the new record; every other replica tails the same
topic and refuses the key within about the broker's round trip (well under a
second). Two admins changing one user at once: the first record in the log
wins and the other request is a 409 to retry.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from litestar import delete, get, post
from litestar.params import FromPath, JSONBody

from crypton import codec, topics
from crypton.users import (
    SCOPES,
    ApiKey,
    Scope,
    UserState,
    hash_key,
    key_table,
    new_api_key,
    new_key_id,
)

from .. import schemas
from .._context import Ctx
from ..auth import ADMIN_GUARDS, PUBLIC, SECURITY
from ..errors import ApiError, error_responses, not_found, unavailable
from . import admin, area
from .admin import with_body


def _user(ctx: Ctx, user_id: str) -> UserState:
    if not ctx.readmodel.ready.is_set():
        raise unavailable("the API is still reading the log; retry shortly")
    with ctx.readmodel.read() as model:
        state = model.user(user_id)
    if state is None:
        raise not_found("user", user_id)
    return state


def _views(state: UserState) -> list[schemas.KeyView]:
    keys = sorted(key_table(state).values(), key=lambda k: (k.created_at, k.key_id))
    return [schemas.KeyView(k.key_id, list(k.scopes), k.created_at) for k in keys]


async def _update(ctx: Ctx, state: UserState, change: Callable[[UserState], UserState]) -> None:
    """Write ``change(state)`` as the next version and wait until this replica folded it."""
    new = change(state)
    topic = topics.topic_name(topics.USERS, ctx.settings.topic_prefix)
    await ctx.commands.append(topic, state.user_id, codec.encode(new), "update_user")

    def folded() -> UserState | None:
        with ctx.readmodel.read() as model:
            now = model.user(state.user_id)
        return now if now is not None and now.version >= new.version else None

    winner = await ctx.hub.wait_for(("user", state.user_id), folded, ctx.config.wait_timeout_s)
    if winner is None:
        raise unavailable("the change is in the log but not yet read back; check GET .../keys")
    if winner != new:
        raise ApiError(409, "user_changed", "the user changed meanwhile; retry")


@post("/v1/admin/users/{user_id:str}/keys", **with_body(schemas.NewKey, optional=True),
      status_code=201, responses=error_responses(400, 401, 404, 409, 413, 415, 503))  # fmt: skip
async def create_key(
    ctx: Ctx, user_id: FromPath[str], data: JSONBody[schemas.NewKey | None] = None
) -> schemas.KeyCreated:
    """Issue another key for the user (rotation: issue, switch, revoke the old one).
    The secret is in this response only."""
    state = _user(ctx, user_id)
    scopes: tuple[Scope, ...] = SCOPES
    if data is not None and data.scopes is not None:
        scopes = tuple(s for s in SCOPES if s in data.scopes)
    secret = new_api_key()
    key = ApiKey(new_key_id(), hash_key(secret), scopes, ctx.now_ms())

    def add(old: UserState) -> UserState:
        return msgspec.structs.replace(
            old,
            version=old.version + 1,
            keys=[*key_table(old).values(), key],
            key_hashes=[*old.key_hashes, key.hash],
        )

    await _update(ctx, state, add)
    return schemas.KeyCreated(key.key_id, secret, list(scopes), key.created_at)


@get("/v1/admin/users/{user_id:str}/keys", responses=error_responses(401, 404, 503))
async def list_keys(ctx: Ctx, user_id: FromPath[str]) -> schemas.KeyPage:
    """The user's valid keys, oldest first; never their secrets."""
    return schemas.KeyPage(items=_views(_user(ctx, user_id)))


@delete("/v1/admin/users/{user_id:str}/keys/{key_id:str}", status_code=204,
        responses=error_responses(401, 404, 409, 503))  # fmt: skip
async def revoke_key(ctx: Ctx, user_id: FromPath[str], key_id: FromPath[str]) -> None:
    """Revoke a key: from now on it is a 401, on every replica within a second."""
    state = _user(ctx, user_id)
    table = key_table(state)
    doomed = next((k for k in table.values() if k.key_id == key_id), None)
    if doomed is None:
        raise not_found("key", key_id)

    def remove(old: UserState) -> UserState:
        return msgspec.structs.replace(
            old,
            version=old.version + 1,
            keys=[k for k in key_table(old).values() if k.hash != doomed.hash],
            key_hashes=[h for h in old.key_hashes if h != doomed.hash],
        )

    await _update(ctx, state, remove)


router = area(
    "admin",
    [admin.create_user, admin.user_balances, admin.credit, admin.debit, create_key, list_keys,
     revoke_key],
    dependencies=PUBLIC, guards=ADMIN_GUARDS, security=SECURITY,
)  # fmt: skip
"""Every admin route: the admin token (a guard, so it is checked before any body is read)."""
