"""JSON codecs for the messages of ``crypton.domain.messages``, one per topic shape.

Encoders and decoders are built once: msgspec's are fast and validate while
they decode, so a malformed record fails here with a reason and goes to the
dead-letter topic instead of reaching the domain.
"""

from __future__ import annotations

from typing import Any

import msgspec

from crypton import topics
from crypton.domain.messages import (
    BalanceState,
    BookInbox,
    DeadLetter,
    DepthState,
    Message,
    OrderState,
    Rejection,
    Trade,
    TransferState,
    WalletInbox,
)

__all__ = ["DECODE_ERRORS", "DecodeError", "decode", "decoder_for", "encode"]

DecodeError = msgspec.DecodeError
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)
"""What decoding a record can raise: msgspec reports invalid UTF-8 inside a string as a
``UnicodeDecodeError``, not a ``DecodeError`` (found by tests/test_codec_fuzz.py)."""
_encoder = msgspec.json.Encoder()

wallet_inbox = msgspec.json.Decoder(WalletInbox)
book_inbox = msgspec.json.Decoder(BookInbox)
orders = msgspec.json.Decoder(OrderState)
balances = msgspec.json.Decoder(BalanceState)
trades = msgspec.json.Decoder(Trade)
depth = msgspec.json.Decoder(DepthState)
transfers = msgspec.json.Decoder(TransferState)
rejections = msgspec.json.Decoder(Rejection)
dead_letters = msgspec.json.Decoder(DeadLetter)


BY_TOPIC: dict[str, msgspec.json.Decoder[Any]] = {
    topics.WALLET_INBOX: wallet_inbox,
    topics.BOOK_INBOX: book_inbox,
    topics.ORDERS: orders,
    topics.BALANCES: balances,
    topics.TRADES: trades,
    topics.DEPTH: depth,
    topics.TRANSFERS: transfers,
    topics.REJECTIONS: rejections,
    topics.DEAD_LETTERS: dead_letters,
}
"""The decoder of each logical topic (users are the API's: see ``crypton.users``)."""


def encode(message: Message | msgspec.Struct) -> bytes:
    """The JSON bytes of a message, as written to Kafka."""
    return _encoder.encode(message)


def decoder_for(kind: type[Any]) -> msgspec.json.Decoder[Any]:
    """A decoder for any message type or union of them."""
    return msgspec.json.Decoder(kind)


def decode(data: bytes | str, kind: type[Any]) -> Any:
    return msgspec.json.decode(data, type=kind)
