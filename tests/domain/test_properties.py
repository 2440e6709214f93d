"""Property tests: random command sequences keep every invariant, deterministically.

A session is a random list of commands from a few users over three markets:
credits and debits (some with repeated transfer ids), limit and market orders
with every time in force, post-only and STP mode, cancels, cancel-alls and
repeated client order ids. Prices and quantities are on the tick and step most
of the time, but not always; invalid orders must be REJECTED with a reason.
After every command ``AuditedExchange`` checks supply, holds, books, links,
trade sequences and arithmetic, and order transitions. Then the same session
must give byte-identical output in a fresh exchange, and again after a
snapshot and restore of every machine at a random point.

The sessions above are a millisecond a command, inside one dedupe window. The
timed sessions at the end jump past the window now and then, so that what the
windows forget (order and transfer ids, the books' links to idle users) is
exercised under the same checks.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypton.domain.exchange import Exchange
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Trade,
    TransferState,
    WalletInbox,
)
from crypton.domain.orders import order_problem
from crypton.domain.sequencing import DEDUPE_WINDOW_MS
from crypton.domain.wallet import WalletMachine

from .support import MARKETS, AuditedExchange, oid, only

PROFILE = settings(
    max_examples=int(os.environ.get("CRYPTON_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

USERS = ["u0", "u1", "u2", "u3"]
RARE_USERS = ["_fees", "_ops"]
# Market -> (centre price, price unit to move by, quantity unit): a few prices
# around a centre so that orders cross often, quantities mostly above the minimums.
MARKET_GRID = {
    "BTC-USDT": (50_000_000000, 5_000000, 10_000),
    "ETH-USDT": (2_000_000000, 1_000000, 100_000),
    "ETH-BTC": (4_000000, 10_000, 100_000),
}
ASSETS = ["BTC", "ETH", "USDT"]
CREDIT_SIZE = {"BTC": 100_000000, "ETH": 1_000_000000, "USDT": 100_000_000000}

users = st.sampled_from(USERS * 15 + RARE_USERS)
client_ids = st.sampled_from([f"c{i}" for i in range(16)])
markets = st.sampled_from(["BTC-USDT"] * 10 + ["ETH-USDT"] * 6 + ["ETH-BTC"] * 3 + ["DOGE-USDT"])


@st.composite
def price_for(draw: st.DrawFn, market: str, side: str) -> int | None:
    centre, unit, _step = MARKET_GRID.get(market, MARKET_GRID["BTC-USDT"])
    # Buys lean above the centre and sells below it, so that many orders cross.
    offset = draw(st.integers(-2, 3))
    price = centre + (offset if side == "buy" else -offset) * unit
    oddity = draw(st.sampled_from(["ok"] * 60 + ["off_tick", "zero", "negative", "none", "huge"]))
    return {
        "ok": price, "off_tick": price + 1, "zero": 0, "negative": -price, "none": None,
        "huge": 2**63,
    }[oddity]  # fmt: skip


@st.composite
def quantity_for(draw: st.DrawFn, market: str) -> int | None:
    _centre, _unit, step = MARKET_GRID.get(market, MARKET_GRID["BTC-USDT"])
    quantity = draw(st.integers(2, 40)) * step
    oddity = draw(st.sampled_from(["ok"] * 50 + ["off_step", "zero", "none", "huge"]))
    return {
        "ok": quantity, "off_step": quantity + 1, "zero": 0, "none": None, "huge": 2**70,
    }[oddity]  # fmt: skip


@st.composite
def place_orders(draw: st.DrawFn) -> PlaceOrder:
    user, cid, market = draw(users), draw(client_ids), draw(markets)
    side = draw(st.sampled_from(["buy", "sell"]))
    kind = draw(st.sampled_from(["limit"] * 5 + ["market"]))
    fields: dict[str, Any] = {
        "time_in_force": draw(st.sampled_from(["GTC"] * 5 + ["IOC", "FOK"])),
        "stp": draw(st.sampled_from(["expire_taker", "expire_maker", "expire_both"])),
        "post_only": draw(st.sampled_from([False] * 9 + [True])),
    }
    if kind == "limit":
        fields["price"] = draw(price_for(market, side))
        fields["quantity"] = draw(quantity_for(market))
        if draw(st.integers(0, 60)) == 0:
            fields["funds"] = 1_000000
    elif side == "sell":
        fields["quantity"] = draw(quantity_for(market))
    else:
        centre, *_ = MARKET_GRID.get(market, MARKET_GRID["BTC-USDT"])
        fields["funds"] = draw(st.integers(1, 200)) * centre // 500
        if draw(st.integers(0, 25)) == 0:
            fields["funds"] = draw(st.sampled_from([0, 1, 2**63]))
        if draw(st.integers(0, 20)) == 0:
            fields["quantity"] = MARKET_GRID.get(market, MARKET_GRID["BTC-USDT"])[2]
    return PlaceOrder(
        user_id=user, order_id=oid(user, cid), client_order_id=cid, market=market, side=side,
        type=kind, ts=0, **fields,
    )  # fmt: skip


@st.composite
def transfers(draw: st.DrawFn) -> Credit | Debit:
    user, asset = draw(users), draw(st.sampled_from([*ASSETS * 5, "DOGE"]))
    size = CREDIT_SIZE.get(asset, 1)
    amount = draw(st.integers(1, 4 * size))
    if draw(st.integers(0, 25)) == 0:
        amount = draw(st.sampled_from([0, -1, 2**63]))
    tid = draw(st.sampled_from([f"t{i}" for i in range(40)]))
    kind = Credit if draw(st.integers(0, 3)) else Debit
    return kind(user_id=user, asset=asset, amount=amount, transfer_id=tid, ts=0)


@st.composite
def cancels(draw: st.DrawFn) -> CancelOrder | CancelAll:
    user = draw(users)
    if draw(st.integers(0, 5)):
        # Mostly one's own orders, sometimes somebody else's id.
        owner = user if draw(st.integers(0, 6)) else draw(users)
        return CancelOrder(user_id=user, order_id=oid(owner, draw(client_ids)), ts=0)
    return CancelAll(user_id=user, market=draw(st.none() | markets), ts=0)


commands = st.one_of(transfers(), place_orders(), place_orders(), place_orders(), cancels())


def _seeded(session: list[WalletInbox]) -> list[WalletInbox]:
    """Fund everybody first, so that most orders are affordable; stamp times."""
    seed: list[WalletInbox] = [
        Credit(user_id=u, asset=a, amount=CREDIT_SIZE[a], transfer_id=f"seed-{a}", ts=0)
        for u in USERS
        for a in ASSETS
    ]
    return [msgspec.structs.replace(c, ts=i) for i, c in enumerate([*seed, *session])]


def _check_answer(
    ex: AuditedExchange, cmd: WalletInbox, out: list[Message], seen: set[str]
) -> None:
    """What one command must answer, beyond the invariants ``AuditedExchange`` checks."""
    if isinstance(cmd, PlaceOrder):
        if cmd.order_id in seen:
            assert out == [], "a repeated order id is answered by the original order only"
            return
        seen.add(cmd.order_id)
        first = out[0]
        assert isinstance(first, OrderState) and first.order_id == cmd.order_id
        market = MARKETS.get(cmd.market)
        problem = order_problem(market, cmd) if market else f"unknown market {cmd.market}"
        if cmd.user_id.startswith("_"):
            problem = "reserved account"
        if problem:
            assert (first.status, first.reason, len(out)) == ("REJECTED", problem, 1)
        else:
            assert first.status in ("NEW", "REJECTED")
            assert first.status == "NEW" or first.reason.startswith("insufficient")  # type: ignore[union-attr]
            final = [s for s in only(out, OrderState) if s.order_id == cmd.order_id][-1]
            if final.status in ("OPEN", "PARTIALLY_FILLED"):
                assert cmd.time_in_force == "GTC" and cmd.type == "limit"
            if cmd.time_in_force == "FOK" and final.status == "EXPIRED":
                assert final.filled_quantity == 0
                assert not [t for t in only(out, Trade) if t.taker_order_id == cmd.order_id]
    elif isinstance(cmd, CancelOrder):
        states = [s for s in only(out, OrderState) if s.status == "CANCELED"]
        rejections = only(out, Rejection)
        assert len(states) + len(rejections) == 1
        if states:
            assert states[0].order_id == cmd.order_id and states[0].user_id == cmd.user_id


@PROFILE
@given(st.lists(commands, min_size=30, max_size=100), st.randoms(use_true_random=False))
def test_random_sessions_keep_every_invariant_and_replay_exactly(
    session: list[WalletInbox], random: Any
) -> None:
    script = _seeded(session)
    audited = AuditedExchange()
    outputs: list[bytes] = []
    seen: set[str] = set()
    for cmd in script:
        before = audited.wallet(cmd.user_id).snapshot() if isinstance(cmd, Debit) else None
        out = audited.submit(cmd)  # checks every invariant after the command
        _check_answer(audited, cmd, out, seen)
        if isinstance(cmd, Debit) and before is not None:
            (state,) = [m for m in only(out, TransferState)] or [None]
            available = before[1].get(cmd.asset, (0, 0))[0]
            if state is not None and state.reason is None:
                assert available >= cmd.amount
            elif state is not None and state.reason.startswith("insufficient"):  # type: ignore[union-attr]
                assert available < cmd.amount
        outputs.append(msgspec.json.encode(out))

    _assert_replays_exactly(script, outputs, random.randint(0, len(script)))


def _assert_replays_exactly(script: list[WalletInbox], outputs: list[bytes], cut: int) -> None:
    """The same commands in a fresh exchange give the same bytes; so does a snapshot of
    every machine after ``cut`` commands, restored (through pickle, as Bytewax stores
    state) and continued."""
    fresh = Exchange(MARKETS)
    assert [msgspec.json.encode(fresh.submit(cmd)) for cmd in script] == outputs
    first = Exchange(MARKETS)
    for cmd in script[:cut]:
        first.submit(cmd)
    restored = _restore(pickle.loads(pickle.dumps(_snapshot(first))))
    assert [msgspec.json.encode(restored.submit(cmd)) for cmd in script[cut:]] == outputs[cut:]
    assert _snapshot(restored) == _snapshot(fresh)


def _snapshot(ex: Exchange) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {user: w.snapshot() for user, w in sorted(ex.wallets.items())},
        {symbol: b.snapshot() for symbol, b in sorted(ex.books.items())},
    )


def _restore(snapshot: tuple[dict[str, Any], dict[str, Any]]) -> Exchange:
    wallets, books = snapshot
    ex = Exchange(MARKETS)
    ex.wallets = {user: WalletMachine.restore(s, MARKETS) for user, s in wallets.items()}
    ex.books = {m: BookMachine.restore(s, MARKETS.market(m)) for m, s in books.items()}
    return ex


@PROFILE
@given(st.lists(place_orders(), min_size=20, max_size=80))
def test_order_heavy_sessions(session: list[WalletInbox]) -> None:
    """Orders only (after funding): exercises the books harder than the mixed sessions."""
    audited = AuditedExchange()
    seen: set[str] = set()
    for cmd in _seeded(session):
        _check_answer(audited, cmd, audited.submit(cmd), seen)


# --- across the dedupe windows --------------------------------------------------------

W = DEDUPE_WINDOW_MS
gaps = st.sampled_from([1] * 24 + [W // 3, W + 1, 2 * W + 7])
"""Time to the next command: mostly a millisecond, now and then past a window or two."""


@st.composite
def cancel_targets(draw: st.DrawFn) -> CancelOrder | CancelAll:
    """A cancel naming (owner, client order id) in ``order_id``, resolved by the test to
    that client id's current order; or a cancel-all."""
    user = draw(users)
    if draw(st.integers(0, 5)):
        owner = user if draw(st.integers(0, 6)) else draw(users)
        return CancelOrder(user_id=user, order_id=f"{owner}|{draw(client_ids)}", ts=0)
    return CancelAll(user_id=user, market=draw(st.none() | markets), ts=0)


timed_commands = st.one_of(
    transfers(), place_orders(), place_orders(), place_orders(), cancel_targets()
)
timed_sessions = st.lists(st.tuples(timed_commands, gaps), min_size=30, max_size=100)
"""Commands, each with the time since the one before: run with ``run_timed``."""


@PROFILE
@given(timed_sessions, st.randoms())
def test_sessions_across_the_dedupe_windows_keep_every_invariant_and_replay_exactly(
    steps: list[tuple[WalletInbox, int]], random: Any
) -> None:
    script, outputs = run_timed(steps)
    _assert_replays_exactly(script, outputs, random.randint(0, len(script)))


def run_timed(steps: list[tuple[WalletInbox, int]]) -> tuple[list[WalletInbox], list[bytes]]:
    """Run a timed session, checking as it goes; the commands as sent and their outputs.

    Times jump past the ten-minute window now and then, so the wallets' id windows
    and the books' links forget. A place repeating an order id is ignored while the
    window holds the id and refused (``duplicate_order_id``) once it does not but the
    order still rests. A client order id whose order is closed and forgotten names a
    new order (a new generation of the id here): the API answers such a retry from the
    order's record and never writes it, so the core never sees the old id again."""
    audited = AuditedExchange()  # checks every invariant after every command
    script: list[WalletInbox] = []
    outputs: list[bytes] = []
    generation: dict[tuple[str, str], int] = {}
    placed: set[str] = set()

    def current(user: str, cid: str) -> tuple[str, str]:
        numbered = f"{cid}.{generation.get((user, cid), 0)}"
        return numbered, oid(user, numbered)

    ts = 0
    for drawn, gap in [(c, 1) for c in _seeded([])] + steps:
        ts += gap
        cmd: WalletInbox
        if isinstance(drawn, PlaceOrder):
            user, asked = drawn.user_id, drawn.client_order_id
            cid, order_id = current(user, asked)
            wallet = audited.wallets.get(user)
            if wallet is not None:
                wallet._tick(ts)  # what the place does first: the window may forget now
            remembered = wallet is not None and order_id in wallet.orders_seen
            open_ = wallet is not None and order_id in wallet.holds
            if order_id in placed and not (remembered or open_):
                generation[(user, asked)] = generation.get((user, asked), 0) + 1
                cid, order_id = current(user, asked)
                remembered = open_ = False
            cmd = msgspec.structs.replace(drawn, client_order_id=cid, order_id=order_id, ts=ts)
            out = audited.submit(cmd)
            if remembered:
                assert out == [], "a repeat inside the window is ignored"
            elif open_:
                assert [(type(m), getattr(m, "reason_code", None)) for m in out] == [
                    (Rejection, "duplicate_order_id")
                ], "a repeat of an open order the window forgot is refused, with no record"
            else:
                _check_answer(audited, cmd, out, set())
            placed.add(order_id)
        else:
            cmd = msgspec.structs.replace(drawn, ts=ts)
            if isinstance(cmd, CancelOrder):
                owner, cid = cmd.order_id.split("|")
                cmd = msgspec.structs.replace(cmd, order_id=current(owner, cid)[1])
            out = audited.submit(cmd)
            _check_answer(audited, cmd, out, set())
        script.append(cmd)
        outputs.append(msgspec.json.encode(out))

    return script, outputs
