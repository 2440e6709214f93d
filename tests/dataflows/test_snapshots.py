"""What the steps hand Bytewax's recovery store, and that it restores machines exactly.

- Packed snapshots restore machines exactly, parked early arrivals included.
- Through a real Bytewax run: an epoch writes the state of the users it touched and
  nothing else, however many users the store holds.
- A demoted machine (beyond ``LIVE_MACHINES``) keeps a change made since the last
  snapshot, and carries on from its packed bytes as if it had stayed live.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from crypton import schema
from crypton.config import load_markets
from crypton.domain.exchange import Exchange
from crypton.domain.matching import BookMachine, _pack_order
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    Credit,
    Debit,
    PlaceOrder,
    Settlement,
    WalletInbox,
)
from crypton.domain.wallet import WalletMachine
from dataflows.exchange import BookLogic, BookSnapshotV2, WalletLogic, _Step, build_flow
from tests.domain import support
from tests.domain.support import BTC_USDT, Feeder, btc, contents, limit, market_sell, usdt
from tests.domain.test_properties import PROFILE, run_timed, timed_sessions

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
        Settlement(
            user_id="u",
            src="BTC-USDT",
            seq=2,
            prev=1,
            order_id="o",
            take=0,
            refund=0,
            receive=0,
            closed=True,
            ts=3,
        )
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


@PROFILE
@given(timed_sessions, st.randoms())
def test_random_sessions_across_the_windows_restore_from_packed_snapshots(
    steps: list[tuple[WalletInbox, int]], random: Any
) -> None:
    """The steps pack machines with msgpack, not pickle: a random session across the
    dedupe windows (``tests.domain.test_properties``), every wallet and book packed
    and restored as the steps do it at a random point, carries on to the same bytes
    and ends in the same state."""
    script, outputs = run_timed(steps)
    cut = random.randint(0, len(script))
    first = Exchange(MARKETS)
    for cmd in script[:cut]:
        first.submit(cmd)
    restored = Exchange(MARKETS)
    restored.wallets = {
        user: WalletMachine.restore(_roundtrip(WalletLogic, w.snapshot()), MARKETS)  # type: ignore[arg-type]
        for user, w in first.wallets.items()
    }
    restored.books = {
        symbol: BookMachine.restore(_roundtrip(BookLogic, b.snapshot()), MARKETS.market(symbol))  # type: ignore[arg-type]
        for symbol, b in first.books.items()
    }
    assert [msgspec.json.encode(restored.submit(cmd)) for cmd in script[cut:]] == outputs[cut:]
    fresh = Exchange(MARKETS)
    for cmd in script:
        fresh.submit(cmd)
    for user, wallet in fresh.wallets.items():
        assert restored.wallets[user].snapshot() == wallet.snapshot()
    for symbol, book in fresh.books.items():
        assert restored.books[symbol].snapshot() == book.snapshot()


def test_a_book_packed_before_levels_had_their_own_clock_restores() -> None:
    """A recovery store written by the previous version holds levels as (price, rows),
    ages counted back from the book's clock: they restore to the same book."""
    feed = Feeder(BookMachine(BTC_USDT))
    for i, (side, ticks) in enumerate([("buy", -2), ("buy", -1), ("sell", 2), ("buy", -2)]):
        cmd = limit(f"u{i}", f"o{i}", side, usdt("50000") + ticks * usdt("10"), btc("0.002"),
                    ts=10 * i)  # fmt: skip
        feed.order(cmd, usdt("1000") if side == "buy" else btc("0.002"))
    book = feed.machine
    old_sides = tuple(
        [
            (level.price, [_pack_order(o, book.clock, "BTC-USDT") for o in level.orders])
            for level in book.book.levels_from_best(side)
        ]
        for side in ("buy", "sell")
    )
    old = (*book.snapshot()[:6], old_sides)
    assert msgspec.msgpack.Decoder(BookSnapshotV2).decode(msgspec.msgpack.encode(old))
    restored = BookMachine.restore(_roundtrip(BookLogic, old), BTC_USDT)  # type: ignore[arg-type]
    assert contents(restored) == contents(book)


def _resting_fields(book: BookMachine) -> list[tuple[object, ...]]:
    # Not ``updated_at``: every change sets it before a state is emitted, so no
    # snapshot keeps it.
    return [
        (msgspec.structs.astuple(o.cmd), o.hold, o.remaining, o.spent, o.filled_quantity,
         o.filled_funds, o.fee, o.fee_num, o.version, o.status)
        for o in book.book.resting()
    ]  # fmt: skip


def test_every_kind_of_resting_order_survives_the_short_rows() -> None:
    """UUID ids as 16 bytes, ids that only look like one, orders that keep their whole
    command (post-only, another STP mode), partial fills and both sides, in priority."""
    book = BookMachine(BTC)
    t0 = 1_700_000_000_000
    orders = [  # (user, order id, side, price in USDT, extra)
        ("m", str(uuid.UUID(int=1)), "sell", 50_000, {}),
        ("m", "A" * 8 + "-" + "B" * 4 + "-" + "C" * 4 + "-" + "D" * 4 + "-" + "E" * 12, "sell",
         50_000, {}),
        ("m", "not-a-uuid-but-36-characters-long!!", "sell", 50_100, {"post_only": True}),
        ("m", "o4", "buy", 49_000, {"stp": "expire_both"}),
        ("m", "o5", "buy", 49_000, {}),
        ("t", str(uuid.UUID(int=2**128 - 1)), "buy", 50_000, {}),  # takes 1.5 of the asks
    ]  # fmt: skip
    for seq, (user, oid, side, price, extra) in enumerate(orders, start=1):
        quantity = 30_000 if user == "t" else 20_000
        cmd = PlaceOrder(user_id=user, order_id=oid, client_order_id=f"c{seq}",
                         market="BTC-USDT", side=side, type="limit", price=price * 10**6,
                         quantity=quantity, ts=t0 + seq, **extra)  # type: ignore[arg-type]  # fmt: skip
        prev = seq - 1 if user == "m" else 0
        book.handle(BookOrder(market="BTC-USDT", src=user, seq=seq, order=cmd,
                              hold=10**12, prev=prev))  # fmt: skip
    assert len(book.book) == 4  # the taker filled one ask and half of the next
    assert any(o.filled_quantity for o in book.book.resting())
    restored = BookMachine.restore(_roundtrip(BookLogic, book.snapshot()), BTC)  # type: ignore[arg-type]
    assert restored.snapshot() == book.snapshot()
    assert _resting_fields(restored) == _resting_fields(book)
    assert restored.book.depth(5) == book.book.depth(5)


def test_a_book_packed_before_the_short_rows_still_restores() -> None:
    """A recovery store written by the previous version: whole commands per order."""
    book = BookMachine(BTC)
    for seq, price in enumerate((49_000, 49_000, 51_000), start=1):
        side = "buy" if price < 50_000 else "sell"
        cmd = PlaceOrder(user_id="u", order_id=f"o{seq}", client_order_id=f"c{seq}",
                         market="BTC-USDT", side=side, type="limit", price=price * 10**6,
                         quantity=10_000, post_only=seq == 2, ts=seq)  # fmt: skip
        book.handle(BookOrder(market="BTC-USDT", src="u", seq=seq, order=cmd, hold=1, prev=seq - 1))
    current = book.snapshot()
    rows = [
        (msgspec.structs.astuple(o.cmd), o.hold, o.remaining, o.spent, o.filled_quantity,
         o.filled_funds, o.fee, o.fee_num, o.version)
        for o in book.book.resting()
    ]  # fmt: skip
    old = msgspec.msgpack.encode((*current[:6], rows))
    restored = BookMachine.restore(BookLogic.state.decode(old), BTC)
    assert restored.snapshot() == current
    assert _resting_fields(restored) == _resting_fields(book)


def test_a_resting_order_packs_into_much_fewer_bytes() -> None:
    """The short row against the whole command: bytes per resting order, UUID ids."""
    book = BookMachine(BTC)
    for n in range(1, 1001):
        cmd = PlaceOrder(user_id=f"user-{n}", order_id=str(uuid.uuid4()),
                         client_order_id=f"client-{n}", market="BTC-USDT", side="buy",
                         type="limit", price=(40_000 + n % 500) * 10**6, quantity=10_000,
                         ts=1_700_000_000_000 + n)  # fmt: skip
        book.handle(BookOrder(market="BTC-USDT", src=f"user-{n}", seq=1, order=cmd,
                              hold=10**12, prev=0))  # fmt: skip
    short = len(msgspec.msgpack.encode(book.snapshot())) / 1000
    whole = sum(
        len(msgspec.msgpack.encode((msgspec.structs.astuple(o.cmd), o.hold, o.remaining, o.spent,
                                    o.filled_quantity, o.filled_funds, o.fee, o.fee_num,
                                    o.version)))
        for o in book.book.resting()
    ) / 1000  # fmt: skip
    assert short < whole * 0.6, (short, whole)  # 76 bytes against 138 when written


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
    # The windows travel as 8 bytes an id (``IdWindow``) and mean the same ids again:
    # swapped at 10 and 20 minutes, the first ten transfers are forgotten.
    _, horizon, current, previous = restored_wallet.snapshot()[3][2]
    assert (len(current), len(previous), horizon) == (8 * 10, 8 * 10, t0 + 10 * minute)
    assert [f"t{i}" in restored_wallet.transfers_seen for i in (9, 10, 29)] == [False, True, True]
    assert restored_book.snapshot() == book.snapshot()
    assert restored_book.clock == book.clock == t0 + 29 * minute


def test_a_wallet_packed_before_digests_restores() -> None:
    """A recovery store written before the windows were digests (ids as strings)
    still resumes: the ids are digested on restore and are still repeats."""
    wallet = WalletMachine("u", MARKETS)
    for i in range(3):
        wallet.handle(Credit(user_id="u", asset="USDT", amount=1, transfer_id=f"t{i}", ts=i))
    state = list(wallet.snapshot())
    state[3] = (2, (0, 0, ("o1",), ()), (0, 0, ("t1", "t2"), ("t0",)))  # the old shape
    restored = WalletMachine.restore(_roundtrip(WalletLogic, tuple(state)), MARKETS)  # type: ignore[arg-type]
    assert "o1" in restored.orders_seen
    assert [f"t{i}" in restored.transfers_seen for i in range(4)] == [True, True, True, False]
    again = Credit(user_id="u", asset="USDT", amount=1, transfer_id="t0", ts=3)
    assert restored.handle(again) == []  # a repeat, as before the upgrade
    assert WalletMachine.restore(_roundtrip(WalletLogic, restored.snapshot()), MARKETS)  # type: ignore[arg-type]


def _wallet_with_open_orders(order_ids: list[str]) -> WalletMachine:
    """A wallet holding for an open buy and an open sell on two markets per id pair."""
    wallet = WalletMachine("u", MARKETS)
    for asset in ("USDT", "BTC", "ETH"):
        wallet.handle(Credit(user_id="u", asset=asset, amount=10**15, transfer_id=asset, ts=1))
    for n, oid in enumerate(order_ids):
        market = ("BTC-USDT", "ETH-USDT")[n % 2]
        spec = MARKETS.market(market)
        wallet.handle(
            PlaceOrder(user_id="u", order_id=oid, client_order_id=f"c{n}", market=market,
                       side=("buy", "sell")[n // 2 % 2], type="limit",
                       price=(1_000 + n) * spec.tick * 1_000, quantity=spec.min_quantity * 10,
                       ts=2 + n)
        )  # fmt: skip
    return wallet


def test_a_wallets_holds_pack_by_market_with_uuid_ids_as_bytes() -> None:
    """Open orders' holds come back the same (market, asset, amount, what a fill pays
    in), whatever their ids look like, in about half the bytes for the API's ids."""
    ids = [str(uuid.uuid4()) for _ in range(40)] + ["client-7", str(uuid.uuid4()).upper()]
    wallet = _wallet_with_open_orders(ids)
    packed = msgspec.msgpack.encode(wallet.snapshot())
    restored = WalletMachine.restore(WalletLogic.state.decode(packed), MARKETS)  # type: ignore[arg-type]
    assert restored.snapshot() == wallet.snapshot()

    def holds(machine: WalletMachine) -> dict[str, tuple[str, str, int, str]]:
        return {o: (h.market, h.asset, h.amount, h.receives) for o, h in machine.holds.items()}

    assert holds(restored) == holds(wallet) and len(wallet.holds) == 42
    assert {h[1] for h in holds(wallet).values()} == {"USDT", "BTC", "ETH"}
    as_text = len(msgspec.msgpack.encode({o: h[:3] for o, h in holds(wallet).items()}))
    assert len(msgspec.msgpack.encode(wallet.snapshot()[2])) < as_text * 0.55


def test_a_wallet_packed_before_the_packed_holds_restores() -> None:
    """A recovery store written when holds were {order id: (market, asset, amount)}
    still resumes, to the same open orders."""
    wallet = _wallet_with_open_orders([str(uuid.uuid4()) for _ in range(4)] + ["plain"])
    state = list(wallet.snapshot())
    state[2] = {o: (h.market, h.asset, h.amount) for o, h in wallet.holds.items()}  # the old shape
    restored = WalletMachine.restore(_roundtrip(WalletLogic, tuple(state)), MARKETS)  # type: ignore[arg-type]
    assert restored.snapshot() == wallet.snapshot()
    assert {o: h.receives for o, h in restored.holds.items()} == {
        o: h.receives for o, h in wallet.holds.items()
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # user
            st.sampled_from(["buy", "sell", "cancel", "market"]),
            st.integers(-3, 3),  # price, ticks of 10 USDT from P
            st.integers(1, 3),  # quantity, 0.002 BTC each
            st.booleans(),  # snapshot after this step
        ),
        min_size=1,
        max_size=60,
    )
)
def test_a_snapshot_with_levels_packed_earlier_restores_the_book(
    steps: list[tuple[int, str, int, int, bool]],
) -> None:
    """Levels keep their packed bytes between snapshots until they change: whatever
    snapshots came before, each snapshot restores exactly the book it was taken of."""
    feed, mid = Feeder(BookMachine(BTC_USDT)), usdt("50000")
    for i, (user, kind, ticks, lots, snap) in enumerate(steps):
        name = f"u{user}"
        if kind == "cancel":
            feed.cancel(name, support.oid(name, f"o{i - 3}"))
        elif kind == "market":
            feed.order(market_sell(name, f"o{i}", btc("0.002") * lots), btc("0.002") * lots)
        else:
            cmd = limit(name, f"o{i}", kind, mid + ticks * usdt("10"), btc("0.002") * lots,
                        ts=i, stp="expire_maker")  # fmt: skip
            feed.order(cmd, usdt("100000") if kind == "buy" else btc("0.002") * lots)
        if snap or i == len(steps) - 1:
            restored = BookMachine.restore(
                _roundtrip(BookLogic, feed.machine.snapshot()),  # type: ignore[arg-type]
                BTC_USDT,
            )
            assert contents(restored) == contents(feed.machine)


def _credit(user: str, transfer: str, amount: int = 10**6) -> Credit:
    return Credit(user_id=user, asset="USDT", amount=amount, transfer_id=transfer, ts=1)


def test_an_epoch_writes_only_the_users_it_touched(tmp_path: Path) -> None:
    """The recovery store, watched by a trigger, receives at each epoch the state of
    the users that epoch touched: not one row per user of the partition."""
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    users = [f"u{i}" for i in range(300)]
    later = [_credit("u7", "t2"), _credit("u42", "t2"), _credit("u42", "t3")]
    messages = [_credit(user, "t1") for user in users] + later
    items: list[Any] = [(m.user_id, [(i, m)]) for i, m in enumerate(messages)]
    # The first run funds every user and ends (EOF, which awakes every key); the second
    # resumes, runs three epochs and is aborted, as a crash would stop it.
    items.insert(len(users), TestingSource.EOF())
    items.append(TestingSource.ABORT())

    def run(epoch: timedelta) -> list[Any]:
        out: list[Any] = []
        flow = build_flow(MARKETS, TestingSource(items), TestingSink(out))
        run_main(flow, epoch_interval=epoch, recovery_config=RecoveryConfig(str(recovery)))
        return out

    run(timedelta(seconds=10))
    (db,) = recovery.iterdir()
    # Closed before the flow runs: a connection of Python's SQLite left open in the
    # process that runs Bytewax's own SQLite on the same file breaks both's locks.
    with closing(sqlite3.connect(db)) as store, store:
        store.executescript(
            """CREATE TABLE written (step_id TEXT, state_key TEXT, size INTEGER);
            CREATE TRIGGER written_snaps AFTER INSERT ON snaps BEGIN
                INSERT INTO written VALUES (NEW.step_id, NEW.state_key, length(NEW.ser_change));
            END;"""
        )
    out = run(timedelta(0))
    with closing(sqlite3.connect(db)) as store, store:
        written = list(store.execute("SELECT state_key, size FROM written WHERE step_id = ?",
                                     ("crypton.wallet",)))  # fmt: skip
        users_stored = store.execute(
            "SELECT COUNT(DISTINCT state_key) FROM snaps WHERE step_id = 'crypton.wallet'"
        ).fetchone()[0]
    assert users_stored == len(users)
    assert {key for key, _size in written} == {"u7", "u42"}
    assert all(size < 200 for _key, size in written), written  # one wallet, packed
    balances = [
        schema.BALANCES.decode(value)
        for _key, tagged in out
        for _offset, topic, _k, value in tagged
        if topic.endswith("balances")
    ]
    # The resumed run carried on from the stored wallets.
    assert {(b.user_id, b.balances["USDT"].available) for b in balances} >= {
        ("u7", 2 * 10**6),
        ("u42", 3 * 10**6),
    }


def _feed(logic: WalletLogic, *messages: Any) -> list[Any]:
    (tagged,) = logic.on_batch([list(enumerate(messages))])[0]
    return [(topic, key, value) for _position, topic, key, value in tagged]


def test_a_demoted_wallet_keeps_its_change_and_carries_on() -> None:
    step = _Step("wallet", MARKETS, schema.record_routes(), live_max=2, depth_levels=5)
    logics = {user: WalletLogic(step, None) for user in ("a", "b", "c")}
    reference = WalletMachine("a", MARKETS)
    reference.handle(_credit("a", "t1"))
    for user, logic in logics.items():
        _feed(logic, _credit(user, "t1"))
    # Three live machines, room for two: "a", the least recently used, was packed
    # and dropped before any epoch closed; its credit is in its packed state.
    a = logics["a"]
    assert a.machine is None and list(step.live) == [logics["b"], logics["c"]]
    assert a.snapshot() == msgspec.msgpack.encode(reference.snapshot())
    # Its next message decodes it again and it answers as the machine that stayed live.
    debit = Debit(user_id="a", asset="USDT", amount=4, transfer_id="t2", ts=2)
    encode = schema.record_encoder()
    assert _feed(a, debit) == [encode(m) for m in reference.handle(debit)]
    assert a.machine is not None and logics["b"].machine is None


def test_stale_drops_are_counted_for_monitoring() -> None:
    """A book's stale drops (a forgotten user's old message again) reach the step's
    counter, which Prometheus reads as ``crypton_dataflow_stale_messages_total``."""
    step = _Step("book", MARKETS, schema.record_routes(), live_max=10, depth_levels=5)
    logic = BookLogic(step, None)
    t0, minute = 1_700_000_000_000, 60_000
    first: BookOrder | None = None
    for i in range(30):  # half an hour of other users: x0 is forgotten
        cmd = PlaceOrder(user_id=f"x{i}", order_id=f"o{i}", client_order_id="c", side="buy",
                         market="BTC-USDT", type="limit", price=49_000 * 10**6, quantity=10_000,
                         time_in_force="IOC", ts=t0 + i * minute)  # fmt: skip
        msg = BookOrder(market="BTC-USDT", src=f"x{i}", seq=1, order=cmd, hold=1, prev=0)
        first = first or msg
        logic.on_batch([[(i, msg)]])
    assert first is not None and step.counts.stale == 0
    logic.on_batch([[(30, first)]])
    assert step.counts.stale == 1
