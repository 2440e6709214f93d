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
from typing import Final

import msgspec

from crypton.domain.messages import Message

__all__ = [
    "USER_ID_PATTERN",
    "UserIdError",
    "UserState",
    "check_user_id",
    "hash_key",
    "new_api_key",
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


class UserState(Message, tag="user"):
    """A user (key: user_id). ``key_hashes`` lists the SHA-256 of every valid key, so a
    later record with a higher ``version`` can rotate or revoke keys."""

    user_id: str
    key_hashes: list[str]
    created_at: int
    version: int


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


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
