"""The log schema: every message has one topic, a key, a codec and a fold rule."""

from __future__ import annotations

import msgspec
import pytest

from crypton import schema
from crypton.domain.messages import (
    SCHEMA_VERSION,
    BalanceState,
    BookOrder,
    Credit,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Trade,
    TransferState,
)
from crypton.views import View

TRADE = Trade("BTC-USDT", 1, 5, 1, 5, "buy", "m", "t", "a", "b", 0, 0, 0, 0)
BALANCES = BalanceState("alice", 2, {}, 0)


def _tagged(root: type) -> set[type]:
    found: set[type] = set()
    for sub in root.__subclasses__():
        if sub.__struct_config__.tag is not None:  # type: ignore[attr-defined]
            found.add(sub)
        found |= _tagged(sub)
    return found


def test_every_message_type_belongs_to_exactly_one_topic() -> None:
    declared = [kind for spec in schema.SPECS for kind in spec.types]
    assert len(declared) == len(set(declared))
    assert _tagged(Message) <= set(declared)


def test_topic_names_are_unique_and_prefixed() -> None:
    names = [spec.name("dev.") for spec in schema.SPECS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("dev.crypton.") for name in names)


@pytest.mark.parametrize(
    ("message", "topic", "key"),
    [
        (Credit(user_id="u", asset="BTC", amount=1, transfer_id="t", ts=0), "wallet.inbox", "u"),
        (TRADE, "trades", "BTC-USDT"),
        (BALANCES, "balances", "alice"),
        (
            TransferState(user_id="u", transfer_id="t", direction="credit", asset="BTC",
                          amount=1, status="ACCEPTED", ts=0),
            "transfers",
            "u/t",
        ),
    ],
)  # fmt: skip
def test_the_record_encoder_writes_where_the_spec_says(
    message: msgspec.Struct, topic: str, key: str
) -> None:
    encode = schema.record_encoder("p.")
    name, raw_key, value = encode(message)  # type: ignore[arg-type]
    spec = schema.spec_of(message)
    assert (spec.logical, name, raw_key) == (topic, f"p.crypton.{topic}", key.encode())
    assert spec.decode(value) == message


def test_fold_rules() -> None:
    upsert, first = schema.BALANCES.fold, schema.TRADES.fold
    assert upsert is not None and first is not None
    newer = msgspec.structs.replace(BALANCES, version=3)
    assert upsert.accepts(None, BALANCES) and upsert.accepts(BALANCES, newer)
    assert not upsert.accepts(newer, BALANCES) and not upsert.accepts(BALANCES, BALANCES)
    assert first.accepts(None, TRADE) and not first.accepts(TRADE, TRADE)
    assert isinstance(schema.REJECTIONS.fold, schema.Append)
    assert schema.WALLET_INBOX.fold is None  # commands are not state


def test_the_view_folds_by_the_rules() -> None:
    view = View()
    assert view.apply(BALANCES) and not view.apply(BALANCES)
    assert view.apply(TRADE) and not view.apply(TRADE)
    rejection = Rejection(user_id="u", command="cancel_order", ref="o", reason="r", ts=0)
    assert view.apply(rejection) and view.apply(rejection)
    assert view.rejections == [rejection, rejection]
    assert not view.apply(Credit(user_id="u", asset="BTC", amount=1, transfer_id="t", ts=0))
    assert view.balances == {"alice": BALANCES} and view.orders == {}
    assert OrderState in schema.ORDERS.types


def test_a_command_is_written_without_its_defaults_and_read_back_whole() -> None:
    """``PlaceOrder`` omits the fields at their defaults; every reader fills them in, and
    a command written whole (as before) reads the same."""
    order = PlaceOrder(
        user_id="alice", order_id="o1", client_order_id="c1", market="BTC-USDT",
        side="buy", type="limit", price=5, quantity=1, ts=3,
    )  # fmt: skip
    value = schema.WALLET_INBOX.encode(order)
    for absent in (b'"v"', b'"funds"', b'"post_only"', b'"stp"', b'"time_in_force"'):
        assert absent not in value
    assert schema.WALLET_INBOX.decode(value) == order
    whole = msgspec.json.encode({"msg": "place_order", **msgspec.structs.asdict(order)})
    assert b'"v":1' in whole and schema.WALLET_INBOX.decode(whole) == order
    held = BookOrder("BTC-USDT", "alice", 1, order, 5, 0)
    assert schema.BOOK_INBOX.decode_all(schema.BOOK_INBOX.encode(held)) == [held]


def test_a_command_without_a_version_is_version_1() -> None:
    """Commands are written without ``v`` while it is at its default, so a record without
    one is of version 1 only while the default is 1. Moving ``SCHEMA_VERSION`` on means
    reading such records as version 1 first (then change this test)."""
    assert SCHEMA_VERSION == 1
    value = b'{"msg":"cancel_order","user_id":"a","order_id":"o1","ts":1}'
    command = b'{"msg":"place_order","user_id":"a","order_id":"o1","client_order_id":"c",'
    command += b'"market":"BTC-USDT","side":"buy","type":"limit","price":5,"quantity":1,"ts":1}'
    assert schema.WALLET_INBOX.decode(command).v == schema.WALLET_INBOX.decode(value).v == 1
