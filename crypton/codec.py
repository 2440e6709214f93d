"""JSON encoding of the log's messages; each topic's decoder is its spec's.

The codec of every topic is declared in ``crypton.schema`` (``spec.decode``);
this module keeps the one encoder and the decode error, for callers that
only write.
"""

from __future__ import annotations

import msgspec

from crypton import schema

__all__ = ["DECODE_ERRORS", "DecodeError", "encode", "wallet_inbox"]

DecodeError = msgspec.DecodeError
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)
"""What decoding a record can raise: msgspec reports invalid UTF-8 inside a string as a
``UnicodeDecodeError``, not a ``DecodeError`` (found by tests/test_codec_fuzz.py)."""
_encoder = msgspec.json.Encoder()

wallet_inbox = schema.WALLET_INBOX
"""The wallet inbox's spec: its ``decode`` reads commands (JSON objects) and the books'
settlements (JSON arrays)."""


def encode(message: msgspec.Struct) -> bytes:
    """The JSON bytes of a message, as written to Kafka."""
    return _encoder.encode(message)
