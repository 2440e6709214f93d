"""Fuzzing the decoding of inbox records (issue 11): whatever bytes reach an inbox, the
codec either decodes a message or raises its ``DecodeError`` (the dataflow dead-letters
those), and what it decodes the wallet either applies or refuses without a change.
Bounded: a fixed number of examples, no deadline to trip on a loaded machine."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypton import codec
from crypton.config import load_markets
from crypton.domain.messages import (
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    Message,
    PlaceOrder,
    Settlement,
)
from crypton.domain.wallet import WalletMachine

MARKETS = load_markets()
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip

SEEDS: list[Message] = [
    PlaceOrder(
        user_id="alice", order_id="o-1", client_order_id="c-1", market="BTC-USDT", side="buy",
        type="limit", price=50_000_000_000, quantity=100_000, ts=1,
    ),
    PlaceOrder(
        user_id="alice", order_id="o-2", client_order_id="c-2", market="ETH-USDT", side="buy",
        type="market", funds=25_000_000, time_in_force="IOC", ts=2,
    ),
    CancelOrder(user_id="alice", order_id="o-1", ts=3),
    CancelAll(user_id="alice", market="BTC-USDT", ts=4),
    Credit(user_id="alice", asset="USDT", amount=10**9, transfer_id="t-1", ts=5),
    Debit(user_id="alice", asset="BTC", amount=10**6, transfer_id="t-2", ts=6),
    Settlement(user_id="alice", src="BTC-USDT", seq=1, prev=0, order_id="o-1", take=10**6,
               refund=0, receive=10**5, closed=True, ts=7),
]  # fmt: skip
ENCODED = [codec.encode(m) for m in SEEDS]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def decoded(data: bytes) -> Any:
    """The message, or ``None`` for a record the codec refuses (``DECODE_ERRORS``)."""
    try:
        msg = codec.wallet_inbox.decode(data)
    except codec.DECODE_ERRORS:
        return None
    # What decodes re-encodes to the same message: the dead-letter and replay paths agree.
    assert codec.wallet_inbox.decode(codec.encode(msg)) == msg
    return msg


def wallet() -> WalletMachine:
    machine = WalletMachine("alice", MARKETS)
    machine.handle(Credit(user_id="alice", asset="USDT", amount=10**12, transfer_id="f1", ts=0))
    machine.handle(Credit(user_id="alice", asset="BTC", amount=10**9, transfer_id="f2", ts=0))
    machine.handle(SEEDS[0])  # an open order to cancel or release
    return machine


def _funds(machine: WalletMachine) -> tuple[Any, ...]:
    """Balances, holds, the dedupe window and the version (the snapshot without the sequencing:
    a refused Settlement still consumes its sequence number, by design, or one
    bad record from a book would stall every later one)."""
    return machine.snapshot()[1:5]


def applied_or_refused(msg: Any) -> None:
    """The dataflow dead-letters a message whose handling raises, so a raise must leave
    the funds as they were; what is applied keeps every balance non-negative."""
    machine = wallet()
    before = _funds(machine)
    try:
        machine.handle(msg)
    except Exception:
        assert _funds(machine) == before, msg
        return
    for asset in machine.balances:
        available, held = machine.balance(asset)
        assert available >= 0 and held >= 0, (msg, asset, available, held)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_refused(data: bytes) -> None:
    decoded(data)


@FUZZ
@given(
    st.sampled_from(ENCODED),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255), st.booleans()), max_size=6),
)
def test_corrupted_records_decode_or_are_refused(
    seed: bytes, edits: list[tuple[int, int, bool]]
) -> None:
    data = bytearray(seed)
    for position, byte, insert in edits:
        at = position % (len(data) + 1)
        if insert:
            data[at:at] = bytes([byte])
        elif data:
            data[at % len(data)] = byte
    msg = decoded(bytes(data))
    if msg is not None and msg.user_id == "alice":
        applied_or_refused(msg)


@FUZZ
@given(st.sampled_from(ENCODED), st.text(max_size=12), json_values)
def test_records_with_odd_fields_decode_and_apply_safely(
    seed: bytes, field: str, value: object
) -> None:
    fields = json.loads(seed)
    if isinstance(fields, list):  # a message encoded as an array: any place but the tag
        fields[1 + len(field) % (len(fields) - 1)] = value
    else:
        # Half the time an existing field, else any name (unknown fields are ignored).
        name = sorted(fields)[len(field) % len(fields)] if len(field) % 2 else field
        fields[name] = value
    msg = decoded(json.dumps(fields).encode())
    if msg is not None and msg.user_id == "alice":
        applied_or_refused(msg)


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(min_value=-(2**70), max_value=2**70))
def test_amounts_of_any_size_and_sign_are_refused_or_kept_whole(seed: Message, amount: int) -> None:
    fields = msgspec.to_builtins(seed)
    if isinstance(fields, list):  # a Settlement, encoded as an array: take, refund, receive
        for index in (6, 7, 8):
            fields[index] = amount
    else:
        for name in ("amount", "price", "quantity", "funds"):
            if name in fields and fields[name] is not None:
                fields[name] = amount
    msg = decoded(json.dumps(fields).encode())
    if msg is not None:
        applied_or_refused(msg)
