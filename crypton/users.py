"""Users and API keys, kept as events on the compacted topic ``crypton.users``.

The log is the only database, so a user is a record keyed by ``user_id`` that
every API replica folds into its own table. Keys are never stored: only the
SHA-256 of a 256-bit random key, which is as good as a slow password hash
because the key cannot be guessed from a dictionary.

>>> key = new_api_key()
>>> user = UserState(user_id="alice", key_hashes=[hash_key(key)], created_at=0, version=1)
>>> user.key_hashes == [hash_key(key)]
True
>>> check_user_id("_fees")
Traceback (most recent call last):
...
crypton.users.UserIdError: user ids starting with '_' are reserved
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from typing import Final, Literal

import msgspec

from crypton.domain.messages import Message

__all__ = [
    "SCOPES",
    "USER_ID_PATTERN",
    "ApiKey",
    "UserIdError",
    "UserState",
    "check_user_id",
    "hash_key",
    "key_table",
    "new_api_key",
    "new_key_id",
    "new_user_id",
    "users_decoder",
]

USER_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Letters, digits, ``_ . -``; 1-64 characters; never a leading ``_`` (reserved for
system accounts such as the fee wallet), nor a ``/`` (transfer keys use it)."""
_USER_ID = re.compile(USER_ID_PATTERN)
_KEY_PREFIX: Final = "crk_"


class UserIdError(ValueError):
    """A user id that does not match ``USER_ID_PATTERN`` or is reserved."""


Scope = Literal["read", "trade"]
SCOPES: Final[tuple[Scope, ...]] = ("read", "trade")
"""What a key may do: ``read`` the account (orders, balances, fills, the user stream),
``trade`` (place and cancel orders)."""


class ApiKey(msgspec.Struct, frozen=True):
    """One key of a user: its id (public), the SHA-256 of its secret, its scopes."""

    key_id: str
    hash: str
    scopes: tuple[Scope, ...]
    created_at: int


class UserState(Message, tag="user"):
    """A user (key: user_id). Its valid keys are ``keys`` plus, from records written
    before keys had ids and scopes, every hash of ``key_hashes`` not in ``keys`` (each
    with every scope). A later record with a higher ``version`` adds or revokes keys;
    ``key_hashes`` keeps listing every valid hash so older readers still authenticate."""

    user_id: str
    key_hashes: list[str]
    created_at: int
    version: int
    keys: list[ApiKey] = msgspec.field(default_factory=list)


def key_table(state: UserState) -> dict[str, ApiKey]:
    """Every valid key of ``state`` by hash; a key from before ids and scopes gets the
    first 16 characters of its hash as id, and every scope.

    >>> old = UserState(user_id="a", key_hashes=["ab" * 32], created_at=5, version=1)
    >>> key_table(old)["ab" * 32].key_id, key_table(old)["ab" * 32].scopes
    ('abababababababab', ('read', 'trade'))
    """
    table = {k.hash: k for k in state.keys}
    for digest in state.key_hashes:
        if digest not in table:
            table[digest] = ApiKey(digest[:16], digest, SCOPES, state.created_at)
    return table


users_decoder: Final = msgspec.json.Decoder(UserState)


def check_user_id(user_id: str) -> str:
    """Return ``user_id`` if it is a valid id a client may choose, else raise with the reason."""
    if user_id.startswith("_"):
        raise UserIdError("user ids starting with '_' are reserved")
    if not _USER_ID.fullmatch(user_id):
        raise UserIdError("user ids are 1-64 letters, digits, '_', '.' or '-'")
    return user_id


def new_user_id() -> str:
    """A fresh random user id, for clients that do not choose one."""
    return "u" + uuid.uuid4().hex


def new_api_key() -> str:
    """A new secret key: 256 random bits, prefixed so that leaked keys are easy to grep for."""
    return _KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A key's public id: what the admin names to revoke it."""
    return "k" + uuid.uuid4().hex[:16]


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
