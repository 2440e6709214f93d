"""MACs over what the API writes to the log, so that a record nobody signed is not
mistaken for a command (defence in depth behind the broker's ACLs).

The API signs every command it appends to ``crypton.wallet.inbox`` and every record
of ``crypton.users`` with a secret it shares with the dataflow and the audit
(``CRYPTON_API_SECRET``). The MAC travels in a record header, so the records
themselves, their codecs and every other reader stay as they are. When the secret
is set, the dataflow dead-letters commands without a valid MAC, the API's read
model ignores such users records, and ``crypton audit`` counts them instead of
replaying them. Pure standard library: it decides, it does no I/O.

>>> m = mac(b"a-secret", "crypton.wallet.inbox", b"alice", b"{}")
>>> verify(b"a-secret", "crypton.wallet.inbox", b"alice", b"{}", [(HEADER, m)])
True
>>> verify(b"a-secret", "crypton.wallet.inbox", b"bob", b"{}", [(HEADER, m)])
False
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from typing import Final

from crypton.domain.messages import CancelAll, CancelOrder, Credit, Debit, PlaceOrder

HEADER: Final = "crypton-mac"
API_COMMANDS: Final = (PlaceOrder, CancelOrder, CancelAll, Credit, Debit)
"""What only the API writes to the wallet inbox (the books write Settlement)."""
ENV: Final = "CRYPTON_API_SECRET"

Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
"""A record's headers as confluent-kafka gives them."""


def mac(secret: bytes, topic: str, key: bytes, value: bytes) -> bytes:
    """The hex HMAC-SHA256 of a record: its topic, key and value, each length-prefixed
    so that no two different records give the same input."""
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (topic.encode(), key, value):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest().encode()


def verify(secret: bytes, topic: str, key: bytes, value: bytes, headers: Headers) -> bool:
    """Whether the record carries the MAC ``secret`` gives it."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    given = next((v for k, v in pairs if k == HEADER), None)
    if isinstance(given, str):
        given = given.encode()
    return given is not None and hmac.compare_digest(given, mac(secret, topic, key, value))


def required_secret() -> bytes | None:
    """``CRYPTON_API_SECRET`` when it is set: signed records are then required."""
    raw = os.environ.get(ENV)
    return raw.encode() if raw else None
