"""Packed snapshots restore machines exactly, parked early arrivals included."""

from __future__ import annotations

import msgspec

from crypton.config import load_markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import BookCancel, BookOrder, Credit, PlaceOrder, Release
from crypton.domain.wallet import WalletMachine
from dataflows.exchange import BookLogic, WalletLogic

MARKETS = load_markets()
BTC = MARKETS.market("BTC-USDT")


def _roundtrip(logic: type[WalletLogic] | type[BookLogic], snapshot: object) -> object:
    return logic.state.decode(msgspec.msgpack.encode(snapshot))


def test_wallet_snapshot_survives_packing() -> None:
    wallet = WalletMachine("u", MARKETS)
    wallet.handle(Credit(user_id="u", asset="USDT", amount=10**9, transfer_id="t", ts=1))
    wallet.handle(
        PlaceOrder(user_id="u", order_id="o", client_order_id="c", market="BTC-USDT",
                   side="buy", type="limit", price=50_000 * 10**6, quantity=10_000, ts=2)
    )  # fmt: skip
    # An early arrival (seq 2 before 1) is parked and must survive the snapshot.
    wallet.handle(
        Release(user_id="u", src="BTC-USDT", seq=2, order_id="o", status="CANCELED", ts=3, prev=1)
    )
    restored = WalletMachine.restore(_roundtrip(WalletLogic, wallet.snapshot()), MARKETS)  # type: ignore[arg-type]
    assert restored.snapshot() == wallet.snapshot()
    assert restored.inbound.gaps == 1


def test_book_snapshot_survives_packing() -> None:
    book = BookMachine(BTC)
    for seq, price in enumerate((49_000, 49_500, 51_000), start=1):
        side = "buy" if price < 50_000 else "sell"
        cmd = PlaceOrder(user_id="u", order_id=f"o{seq}", client_order_id=f"c{seq}",
                         market="BTC-USDT", side=side, type="limit", price=price * 10**6,
                         quantity=10_000, ts=seq)  # fmt: skip
        book.handle(BookOrder(market="BTC-USDT", src="u", seq=seq, order=cmd, hold=1, prev=seq - 1))
    book.handle(
        BookCancel(market="BTC-USDT", src="u", seq=5, order_id="o1", ts=9, prev=4)
    )  # parked
    restored = BookMachine.restore(_roundtrip(BookLogic, book.snapshot()), BTC)  # type: ignore[arg-type]
    assert restored.snapshot() == book.snapshot()
    assert restored.book.depth(5) == book.book.depth(5)
    assert restored.inbound.gaps == 1
    assert {oid: o.status for oid, o in restored.book.orders.items()} == {
        oid: o.status for oid, o in book.book.orders.items()
    }
    assert restored.book.best_bid() == book.book.best_bid() == 49_500 * 10**6


def test_bounded_state_survives_packing() -> None:
    """Both generations of the windows, the horizon and the stale count come back."""
    t0, minute = 1_700_000_000_000, 60_000
    wallet = WalletMachine("u", MARKETS)
    book = BookMachine(BTC)
    first = None
    for i in range(30):  # half an hour: windows swap, old ids and users are forgotten
        ts = t0 + i * minute
        wallet.handle(Credit(user_id="u", asset="USDT", amount=1, transfer_id=f"t{i}", ts=ts))
        cmd = PlaceOrder(user_id=f"x{i}", order_id=f"o{i}", client_order_id="c", side="buy",
                         market="BTC-USDT", type="limit", price=49_000 * 10**6, quantity=10_000,
                         time_in_force="IOC", ts=ts)  # fmt: skip
        msg = BookOrder(market="BTC-USDT", src=f"x{i}", seq=1, order=cmd, hold=1, prev=0)
        first = first or msg
        book.handle(msg)
    assert first is not None and book.handle(first) == []  # x0 forgotten: a stale repeat
    assert wallet.transfers_seen.horizon > 0 and wallet.transfers_seen.previous
    assert book.inbound.applied.horizon > 0 and book.inbound.stale == 1
    restored_wallet = WalletMachine.restore(
        _roundtrip(WalletLogic, wallet.snapshot()),  # type: ignore[arg-type]
        MARKETS,
    )
    restored_book = BookMachine.restore(_roundtrip(BookLogic, book.snapshot()), BTC)  # type: ignore[arg-type]
    assert restored_wallet.snapshot() == wallet.snapshot()
    assert restored_book.snapshot() == book.snapshot()
    assert restored_book.clock == book.clock == t0 + 29 * minute
