"""The book state machine: one market's matching engine, keyed by market.

It reads the book inbox (orders whose funds the wallet holds, cancels) and
matches in price-time priority at the maker's price. A maker's remaining
quantity is reduced in the same call that emits the trade, so nothing can be
filled twice. Each trade is one event carrying both sides, for every reader.
What it moves is settled from it in the same step: each order a book message
touched gets one ``Settlement`` to its wallet (the net of its fills in that
message, and whether the book closed it, so that the wallet frees what is left
of the hold exactly once), and the fee account one for the message's fees. A
book message therefore sends a wallet one settlement per order, never one per
fill and one more per close, and the count is a function of the book's input.

A book hears from, and reports to, every user who trades on its market, so
its sequencing state forgets the users idle for a while: its clock is the
largest command ``ts`` it has seen, and a user not heard from (or not sent
to) for ``DEDUPE_WINDOW_MS`` of that clock is forgotten. Its state is its
resting orders plus the users active in the last window or two, never its
history; ``crypton.domain.sequencing`` proves no message is applied twice.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any, Final

import msgspec
from msgspec.structs import astuple

from crypton.domain.book import Level, OrderBook, RestingOrder
from crypton.domain.markets import Market
from crypton.domain.messages import (
    CANCELED,
    EXPIRED,
    FEE_ACCOUNT,
    FILLED,
    OPEN,
    PARTIALLY_FILLED,
    REJECTED,
    BookCancel,
    BookInbox,
    BookOrder,
    DepthState,
    Emit,
    Message,
    OrderStatus,
    PlaceOrder,
    Rejection,
    Settlement,
    Stamp,
    Trade,
)
from crypton.domain.money import BPS, fee_ceil, mul_div
from crypton.domain.orders import uuid_bytes, uuid_text
from crypton.domain.sequencing import DEDUPE_WINDOW_MS, Inbound, Outbound

__all__ = ["BookMachine"]

# Compiled (``make mypyc``), a name imported from an interpreted module (``messages``,
# msgspec) is looked up in this module's dict at each use; a ``Final`` alias is a C
# static. The hot path builds and reads messages through these.
_astuple: Final = astuple
_BookCancel: Final = BookCancel
_Settlement: Final = Settlement
_Trade: Final = Trade

STP_REASON: Final = "self-trade prevented"

_Fields = tuple[Any, ...]
"""A book inbox message's fields (``msgspec.structs.astuple``), as its handler gets them:
read once, where the compiled core looks each field up by name."""
_PLACE_FIELDS = PlaceOrder.__struct_fields__


class BookMachine:
    """One market: ``apply`` inbox messages, then ``flush`` the order states they changed.

    Trades go to ``emit`` and the wallets' ``Settlement``s to ``send`` as they
    happen. An order's state record is built once per batch by ``flush``: its last
    state, with ``version`` counting every change, so a version names the same state
    however the log was batched (within one message an order changes at most once,
    so ``handle`` shows every version).
    """

    def __init__(self, market: Market) -> None:
        self.market = market
        # Read on every fill: kept on the machine, one attribute read each.
        self.scale = market.base.scale  # notional = mul_div(price, quantity, scale)
        self.symbol = market.symbol
        self.taker_fee_bps = market.taker_fee_bps
        self.maker_fee_bps = market.maker_fee_bps
        self.book = OrderBook()
        self.seq = 0  # inbox messages applied: the book's version
        self.trade_seq = 0
        self.clock = 0  # the largest command ``ts`` seen: message time, never the wall clock
        self.inbound: Inbound[BookOrder | BookCancel] = Inbound(forgets=True)
        self.outbound = Outbound()
        # Orders whose latest state is not yet emitted, each once (``pending``), by
        # identity: a stray duplicate id must not hide the state of the order it tried
        # to shadow.
        self.changed: list[RestingOrder] = []
        self.pending = False  # in a batch's list of machines to flush (``run_batch``)
        self.fees = 0  # both fees of the last fill (``_fill``)
        # Where ``warm``'s pass stopped on each side: the sort key of the last level it
        # reached (``BookSide.keys``), None before its first.
        self.warmed_bids: int | None = None
        self.warmed_asks: int | None = None

    def handle(self, msg: BookInbox) -> list[Message]:
        """Apply one inbox message and flush; return everything it causes, in order."""
        out: list[Message] = []
        self.apply(msg, out.append, out.append)
        self.flush(out.append)
        return out

    def apply(self, msg: BookInbox, send: Emit, emit: Emit) -> None:
        """Apply one inbox message: reports to the wallets go to ``send``, trades to ``emit``."""
        kind = type(msg)
        # (market, src, seq, order or order_id, hold or ts, prev, v), both kinds: every
        # field in one call, where the compiled core (``make mypyc``) looks each up by
        # name (``messages`` checks the order of the fields).
        fields = _astuple(msg)
        src: str = fields[1]
        seq: int = fields[2]
        prev: int = fields[5]
        ts: int = fields[4] if kind is _BookCancel else fields[3].ts
        inbound = self.inbound
        if ts > self.clock:
            self.clock = ts
            # Both maps swap generations together (at the same clock), checked here
            # rather than by two calls per message.
            if ts - inbound.applied.since >= DEDUPE_WINDOW_MS:
                inbound.tick(ts)
                self.outbound.last.tick(ts)
        # The in-line check of ``Inbound.accept``, inlined: once per order and cancel.
        applied = inbound.applied.current
        last = applied.get(src)
        if last is not None and not inbound.parked and prev <= last < seq:
            applied[src] = seq
            self.seq += 1
            _HANDLERS[kind](self, fields, send, emit)
            return
        for due in inbound.accept(src, seq, prev, msg, ts):
            self.seq += 1
            _HANDLERS[type(due)](self, _astuple(due), send, emit)

    def flush(self, emit: Emit) -> None:
        """Emit the latest state of every order that changed since the last flush (and
        leave the batch's list of machines to flush: ``pending``)."""
        self.pending = False
        for order in self.changed:
            order.pending = False
            emit(order.state())
        self.changed.clear()

    def depth(self, levels: int, ts: int) -> DepthState:
        """The aggregated top ``levels`` of each side as of this book's ``seq``."""
        bids, asks = self.book.depth(levels)
        return DepthState(market=self.market.symbol, seq=self.seq, bids=bids, asks=asks, ts=ts)

    # --- cancel --------------------------------------------------------------------

    def _cancel(self, fields: _Fields, send: Emit, emit: Emit) -> None:
        src: str  # declared: compared natively (compiled), where ``Any`` is not
        _market, src, _seq, order_id, ts, _prev, _v = fields  # a ``BookCancel``'s
        # Check the owner before taking the order out: removing first would let a
        # cancel naming someone else's order drop it from the book with its funds
        # held for ever.
        resting = self.book.orders.get(order_id)
        order = self.book.remove(order_id) if resting and resting.user_id == src else None
        if order is None:
            # Filled or expired while the cancel was on its way: say so, don't drop it.
            emit(
                Rejection(
                    user_id=src,
                    command="cancel_order",
                    ref=order_id,
                    reason="order is not open",
                    reason_code="order_not_open",
                    ts=ts,
                )
            )
            return
        self._close(order, CANCELED, "canceled by user", ts, send)

    # --- matching ------------------------------------------------------------------

    def _order(self, fields: _Fields, send: Emit, emit: Emit) -> None:
        taker = RestingOrder(fields[3], fields[4])  # a ``BookOrder``'s order and hold
        side = taker.side
        buying = side == "buy"
        opposite = "sell" if buying else "buy"
        book = self.book
        ts = taker.created_at
        if taker.order_id in book.orders:
            # Order ids are derived from (user, client_order_id), so this only happens
            # if something other than the wallet writes to the inbox; never let a second
            # order shadow the first, whose cancel would then find the wrong one.
            self._close(taker, REJECTED, "duplicate order id", ts, send)
            return
        if taker.post_only and self._crosses(side, taker.price):
            self._close(taker, REJECTED, "post-only order would take liquidity", ts, send)
            return
        time_in_force = taker.time_in_force
        if time_in_force == "FOK" and not self._fills_in_full(taker, opposite):
            self._close(taker, EXPIRED, "FOK: not enough liquidity to fill in full", ts, send)
            return
        by_funds = taker.quantity is None  # a market buy spending funds
        reason: str | None = None
        # What the fills of this message add up to, settled once at the end: the
        # taker's price improvement (a limit buy's refund) and the fees collected.
        refund = fees = 0
        # Locals for the loop: it runs once per fill and once more to stop.
        makers = book.asks if buying else book.bids
        # A machine integer, compared to each level's price natively (compiled): ``price or
        # 0`` was an object, and every comparison boxed the level's price for it.
        price = taker.price
        limited = price is not None
        limit: int = price if price is not None else 0
        while True:
            if not by_funds and taker.remaining == 0:
                break
            level = makers.best
            if level is None:
                reason = "no more liquidity"
                break
            if limited and (level.price > limit if buying else level.price < limit):
                break
            maker = level.queue[level.head]
            if not maker.live:
                maker = level.front()
            if maker.user_id == taker.user_id:
                if taker.stp != "expire_taker":
                    book.remove(maker.order_id)
                    self._close(maker, EXPIRED, STP_REASON, ts, send)
                if taker.stp != "expire_maker":
                    reason = STP_REASON
                    break
                continue
            if by_funds:
                quantity = self._affordable(taker, level.price, maker.remaining)
                if quantity == 0:  # what is left of the funds buys less than a step
                    if not taker.filled_quantity:
                        reason = "funds buy less than one quantity step"
                    break
            else:
                quantity = min(taker.remaining, maker.remaining)
            refund += self._fill(taker, maker, level, quantity, ts, send, emit)
            fees += self.fees

        closed = True
        if by_funds:
            status: OrderStatus = FILLED if taker.filled_quantity and reason is None else EXPIRED
            if status == FILLED:
                reason = None
        elif taker.remaining == 0:
            status, reason = FILLED, None
        elif reason == STP_REASON or taker.type == "market":
            status, reason = EXPIRED, reason or "no more liquidity"
        elif time_in_force != "GTC":
            status, reason = EXPIRED, f"{time_in_force}: unfilled remainder expired"
        else:
            book.rest(taker)
            status, reason, closed = (
                PARTIALLY_FILLED if taker.filled_quantity else OPEN,
                None,
                False,
            )
        self._state(taker, status, reason, ts)
        if closed or taker.filled_quantity:
            # The taker's fills, net: a buy paid value, fee and its improvement out of
            # the hold and gets the improvement back; a sell paid quantity.
            if buying:
                take, receive = taker.spent, taker.filled_quantity
            else:
                take, receive = taker.filled_quantity, taker.filled_funds - taker.fee
            self._settle(taker.user_id, taker.order_id, take, refund, receive, closed, ts, send)
        if fees:
            self._settle(FEE_ACCOUNT, "", 0, 0, fees, False, ts, send)

    def _crosses(self, side: str, price: int | None) -> bool:
        if side == "buy":
            ask = self.book.best_ask()
            return ask is not None and (price is None or price >= ask)
        bid = self.book.best_bid()
        return bid is not None and (price is None or price <= bid)

    def _fills_in_full(self, taker: RestingOrder, opposite: str) -> bool:
        """Whether matching now would fill ``taker`` completely (FOK), walking the
        book exactly as the matching loop would, self-trade prevention included."""
        need = taker.remaining
        limit, buying = taker.price, taker.side == "buy"
        for level in self.book.levels_from_best(opposite):
            if limit is not None and (level.price > limit if buying else level.price < limit):
                return False
            for maker in level.orders:
                if not maker.live:
                    continue
                if maker.user_id == taker.user_id:
                    if taker.stp != "expire_maker":
                        return False
                    continue
                need -= maker.remaining
                if need <= 0:
                    return True
        return False

    def _affordable(self, taker: RestingOrder, price: int, most: int) -> int:
        """The largest quantity (a multiple of the step, at most ``most``) a market buy
        can still pay for at ``price``, its taker fee included."""
        market = self.market
        budget = taker.hold - taker.spent
        bps = market.taker_fee_bps
        # value + ceil((fee_num + value * bps) / BPS) - fee <= budget, solved for value
        value = ((budget + taker.fee) * BPS - taker.fee_num) // (BPS + bps)
        quantity = min(value * market.base.scale // price, most)
        quantity -= quantity % market.step
        while quantity > 0:
            value = market.notional(price, quantity)
            fee = fee_ceil(taker.fee_num + value * bps) - taker.fee
            if value + fee <= budget:
                break
            quantity -= market.step
        return quantity

    def _fill(
        self,
        taker: RestingOrder,
        maker: RestingOrder,
        level: Level,
        quantity: int,
        ts: Stamp,
        send: Emit,
        emit: Emit,
    ) -> int:
        """Trade ``quantity`` between ``taker`` and ``maker`` (the front of ``level``) at
        the maker's price: the trade event, the maker's settlement and state. Returns the
        taker's price improvement (a limit buy's refund) and leaves both fees in
        ``self.fees``; the taker's own settlement waits for the end of its message."""
        price = level.price
        value = mul_div(price, quantity, self.scale)  # market.notional
        taker_fee = taker.charge(quantity, value, self.taker_fee_bps)
        maker_fee = maker.charge(quantity, value, self.maker_fee_bps)
        self.fees = taker_fee + maker_fee
        level.quantity -= quantity  # OrderBook.fill_front, inlined
        level.packed = None
        closed = maker.remaining == 0
        if closed:
            level.pop_front()
            self.book.unlink(level, maker)
        release = 0
        if taker.side == "buy":
            limit = taker.price
            if limit is not None:  # a limit buy held its own price: refund the gain
                release = mul_div(limit, quantity, self.scale) - value
            taker.spent += value + taker_fee + release
            take, receive = quantity, value - maker_fee  # the maker sold
        else:
            take, receive = value + maker_fee, quantity  # the maker bought at its price
        self.trade_seq += 1
        emit(
            _Trade(  # positional, in field order: a third of the cost of keywords
                self.symbol,
                self.trade_seq,
                price,
                quantity,
                value,  # notional
                taker.side,
                maker.order_id,
                taker.order_id,
                maker.user_id,
                taker.user_id,
                maker_fee,
                taker_fee,
                release,  # buyer_release
                ts,  # time
            )
        )
        maker.version += 1  # ``_state``, inlined
        maker.status = FILLED if closed else PARTIALLY_FILLED
        maker.updated_at = ts
        if not maker.pending:
            maker.pending = True
            self.changed.append(maker)
        self._settle(maker.user_id, maker.order_id, take, 0, receive, closed, ts, send)
        return release

    def _settle(
        self,
        user: str,
        order_id: str,
        take: int,
        refund: int,
        receive: int,
        closed: bool,
        ts: Stamp,
        send: Emit,
    ) -> None:
        """Send ``user``'s wallet a ``Settlement``, numbered on its link (``Outbound.link``,
        inlined: a wallet's previous number is in the current generation unless its
        user was quiet for a while)."""
        outbound = self.outbound
        seq = outbound.count = outbound.count + 1
        last = outbound.last
        prev = last.current.get(user)
        if prev is None:
            prev = last.previous.pop(user, 0)
        last.current[user] = seq
        # (user_id, src, seq, prev, order_id, take, refund, receive, closed, ts)
        send(_Settlement(user, self.symbol, seq, prev, order_id, take, refund, receive, closed, ts))

    def _close(
        self,
        order: RestingOrder,
        status: OrderStatus,
        reason: str | None,
        ts: Stamp,
        send: Emit,
    ) -> None:
        """Close an order with no fill in this message (cancel, expiry, refusal), and
        tell its wallet to release what the order still holds."""
        self._state(order, status, reason, ts)
        self._settle(order.user_id, order.order_id, 0, 0, 0, True, ts, send)

    def _state(
        self, order: RestingOrder, status: OrderStatus, reason: str | None, ts: Stamp
    ) -> None:
        """A new state of ``order``, published at the next ``flush``."""
        order.version += 1
        order.status = status
        order.reason = reason
        order.updated_at = ts
        if not order.pending:
            order.pending = True
            self.changed.append(order)

    # --- recovery ------------------------------------------------------------------

    def snapshot(self) -> tuple[Any, ...]:
        """A compact copy for Bytewax recovery: counters, then each side's levels from
        the best, each ``(price, clock, [order, ...])`` in time priority.

        An order is a flat row of what is not known otherwise (``_pack_order``): the
        market, side, price, type and the usual defaults are the book's and the
        level's, ``remaining`` is ``quantity - filled_quantity``, a UUID-shaped order
        id is 16 raw bytes and ``ts`` is counted back from the level's ``clock``. An
        order that does not fit that shape keeps its whole command in the row's last
        field.

        A level is packed (msgpack, as ``msgspec.Raw``) when first snapshotted and
        again only after it changed (``Level.packed``): an epoch's snapshot packs the
        levels that epoch touched, and copies the bytes of the others.
        """
        book, clock, symbol = self.book, self.clock, self.market.symbol
        sides = []
        for side in ("buy", "sell"):
            levels = []
            for level in book.levels_from_best(side):
                packed = level.packed
                if packed is None:
                    packed = _pack_level(level, clock, symbol)
                levels.append(packed)
            sides.append(levels)
        return (
            symbol,
            self.seq,
            self.trade_seq,
            clock,
            self.inbound.snapshot(),
            self.outbound.snapshot(),
            tuple(sides),
        )

    def warm(self, orders: int) -> bool:
        """Pack ahead what ``snapshot`` would pack, a slice at a time: the levels changed
        since they were last packed, about ``orders`` resting orders' worth a call (one
        level at least), each side from its worst price towards its best, carrying on
        where the last call stopped. True once a pass has reached both sides' best (and
        the next call starts a new pass): ``snapshot`` then packs only what changed
        since, the levels at the touch, where a base of the whole book packed in one go
        held the flow's only thread for 57 ms (``bench_pipeline``, 100,000 orders).
        """
        clock, symbol, book = self.clock, self.symbol, self.book
        for side in (book.bids, book.asks):
            buying = side.buying
            last = self.warmed_bids if buying else self.warmed_asks
            keys, levels = side.keys, side.levels
            start = 0 if last is None else bisect_right(keys, last)
            for key in keys[start:]:
                level = levels[key if buying else -key]
                if level.packed is None:
                    if orders <= 0:
                        return False
                    _pack_level(level, clock, symbol)
                    orders -= level.live
                if buying:
                    self.warmed_bids = key
                else:
                    self.warmed_asks = key
        self.warmed_bids = self.warmed_asks = None
        return True

    @classmethod
    def restore(cls, snapshot: tuple[Any, ...], market: Market) -> BookMachine:
        _symbol, seq, trade_seq, clock, inbound, outbound, sides = snapshot
        machine = cls(market)
        machine.seq, machine.trade_seq, machine.clock = seq, trade_seq, clock
        machine.inbound = Inbound.restore(inbound, forgets=True)
        machine.outbound = Outbound.restore(outbound)
        book = machine.book
        if isinstance(sides, list):  # written before the short rows: one row per order
            for row in sides:
                book.rest(_unpack_whole(row))
            return machine
        for side, levels in zip(("buy", "sell"), sides, strict=True):
            for packed in levels:
                # A Raw: a snapshot not through msgpack yet. Two fields: a level written
                # before levels had their own clock, counted back from the book's.
                level: tuple[Any, ...] = (
                    _decode_level(packed) if isinstance(packed, msgspec.Raw) else packed
                )
                price, base, rows = level if len(level) == 3 else (level[0], clock, level[1])
                for row in rows:
                    book.rest(_unpack_order(row, side, price, base, market.symbol))
        return machine


_encode = msgspec.msgpack.Encoder().encode
_decode_level = msgspec.msgpack.Decoder(tuple[int, int, list[Any]]).decode


def _pack_level(level: Level, clock: int, symbol: str) -> msgspec.Raw:
    """A level's live orders packed (``BookMachine.snapshot``), kept as ``level.packed``
    until the level changes."""
    rows = [_pack_order(o, clock, symbol) for o in level.orders if o.live]
    packed = level.packed = msgspec.Raw(_encode((level.price, clock, rows)))
    return packed


def _fits(order: RestingOrder, symbol: str) -> bool:
    """Whether a resting order is what ``_pack_order``'s short row assumes. Read from the
    order's own copy of its terms: a field of the command costs the compiled core a
    lookup by name each (``snapshot()`` of the books ``loadtest.bench_core`` leaves,
    17,333 resting orders, every level packed: 32 ms reading the command, 19 ms not)."""
    quantity = order.quantity
    return (
        order.market == symbol
        and order.type == "limit"
        and order.funds is None
        and order.time_in_force == "GTC"  # PlaceOrder's defaults: the other ones never rest
        and not order.post_only
        and order.stp == "expire_taker"
        and quantity is not None
        and order.remaining == quantity - order.filled_quantity
    )


def _unpack_whole(row: Any) -> RestingOrder:
    """A resting order as snapshots before the short rows held it: the whole command."""
    values, hold, remaining, spent, filled_q, filled_f, fee, fee_num, version = row
    cmd = PlaceOrder(**dict(zip(_PLACE_FIELDS, values, strict=True)))
    order = RestingOrder(cmd, hold)
    order.remaining, order.spent = remaining, spent
    order.filled_quantity, order.filled_funds = filled_q, filled_f
    order.fee, order.fee_num, order.version = fee, fee_num, version
    order.status = PARTIALLY_FILLED if filled_q else OPEN
    return order


def _pack_order(order: RestingOrder, clock: int, symbol: str) -> tuple[Any, ...]:
    """One resting order as a flat row for ``BookMachine.snapshot``:
    ``(user_id, order_id, client_order_id, quantity, clock - ts, hold, filled_quantity,
    spent, filled_funds, fee, fee_num, version, full)``, where ``order_id`` is 16 bytes
    if UUID-shaped, and ``full`` is None, or the whole command for an order that does
    not fit the short form (then the row's own command fields are not read)."""
    fits = _fits(order, symbol)
    oid = order.order_id
    return (
        order.user_id,
        (uuid_bytes(oid) or oid) if fits else oid,
        order.client_order_id,
        order.quantity if fits else order.remaining,
        clock - order.created_at,
        order.hold,
        order.filled_quantity,
        order.spent,
        order.filled_funds,
        order.fee,
        order.fee_num,
        order.version,
        None if fits else _astuple(order.cmd),
    )


def _unpack_order(row: Any, side: str, price: int, clock: int, symbol: str) -> RestingOrder:
    (user_id, oid, client_oid, quantity, age, hold,
     filled_q, spent, filled_f, fee, fee_num, version, full) = row  # fmt: skip
    if full is None:
        cmd = PlaceOrder(
            user_id=user_id,
            order_id=oid if isinstance(oid, str) else uuid_text(oid),
            client_order_id=client_oid,
            market=symbol,
            side=side,  # type: ignore[arg-type]
            type="limit",
            price=price,
            quantity=quantity,
            ts=clock - age,
        )
        remaining = quantity - filled_q
    else:
        cmd = PlaceOrder(**dict(zip(_PLACE_FIELDS, full, strict=True)))
        remaining = quantity
    order = RestingOrder(cmd, hold)
    order.remaining, order.spent = remaining, spent
    order.filled_quantity, order.filled_funds = filled_q, filled_f
    order.fee, order.fee_num, order.version = fee, fee_num, version
    order.status = PARTIALLY_FILLED if filled_q else OPEN  # all a resting order can be
    return order


_Handler = Callable[[BookMachine, _Fields, Emit, Emit], None]
_HANDLERS: Final[dict[type[Message], _Handler]] = {
    BookOrder: BookMachine._order,
    BookCancel: BookMachine._cancel,
}
