"""The wallet state machine: one user's funds, keyed by user id.

It reads the wallet inbox (commands from the API, reports from the books) and
decides: it validates orders and holds their funds before any book sees them,
settles trades, releases what a closed order no longer needs, and applies
credits and debits. It is the only writer of a user's balances.

Funds are released only when the book reports the order closed (a ``Settlement``
with ``closed``), never on the cancel request itself, so a cancel can never
release twice. What a fill moves is computed by the book, from the trade, in the
step that makes it; the wallet applies it against the order's hold, checking that
it never takes more than the hold.

Bounded dedupe. A wallet remembers the order ids and transfer ids of its
user's recent commands only: an ``IdWindow`` (``crypton.domain.idwindow``, the
two generations of ``crypton.domain.sequencing.Recent`` holding a 64-bit digest
of each id) keeps an id for one to two ``DEDUPE_WINDOW_MS`` (W, ten minutes) of
the wallet's clock, the largest ``ts`` of its user's commands (message time, never
the wall clock; reports from the books do not move it, so another user's clock
can never age this user's commands). A place, credit or debit whose ``ts`` is
older than every id the window may have forgotten (``IdWindow.horizon``, at
least W behind the clock) is *stale*: refused with a ``Rejection``
(``reason_code="stale"``), never with an order or transfer record, which would
replace the original's in the compacted topic. A repeat of a command is thus
either still in the window (ignored) or stale (refused): never applied twice.
A wallet's state is its balances, its open orders, the window, and one
sequence entry per market.

An order id the window has forgotten while its order is still open (a resting
order older than the window) is checked against the open orders themselves: a
place naming it is refused with a ``Rejection`` (``duplicate_order_id``), again
never with an order record, and the open order keeps its hold.

A request retried from outside the window is harmless too: the API derives the
order id from (user, client_order_id) and answers an order whose record it
already has (or a 409 for other terms) instead of writing the command again,
and a transfer likewise by (user, transfer_id).

>>> from crypton.config import load_markets
>>> wallet = WalletMachine("alice", load_markets())
>>> out = wallet.handle(Credit(user_id="alice", asset="USDT", amount=100, transfer_id="t1", ts=1))
>>> wallet.balance("USDT")
(100, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

from msgspec.structs import astuple

from crypton.domain.idwindow import IdWindow, id_digest
from crypton.domain.markets import Markets
from crypton.domain.messages import (
    FEE_ACCOUNT,
    NEW,
    REJECTED,
    Balance,
    BalanceState,
    BookCancel,
    BookOrder,
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    Emit,
    Message,
    OrderState,
    OrderType,
    PlaceOrder,
    Rejection,
    Settlement,
    Side,
    Stamp,
    TimeInForce,
    TransferState,
    WalletInbox,
)
from crypton.domain.money import in_range, to_text
from crypton.domain.orders import (
    Problem,
    check_terms,
    hold_amount,
    order_state,
    uuid_bytes,
    uuid_text,
)
from crypton.domain.sequencing import DEDUPE_WINDOW_MS, Inbound, Outbound

__all__ = ["WALLET_HANDLERS", "Funds", "InvariantBreach", "WalletMachine"]

# Compiled (``make mypyc``), a name imported from an interpreted module (``messages``,
# msgspec) is looked up in this module's dict at each use; a ``Final`` alias is a C
# static. The hot path builds and reads messages through these.
_astuple: Final = astuple
_BalanceState: Final = BalanceState
_Balance: Final = Balance
_BookOrder: Final = BookOrder
_OrderState: Final = OrderState


class InvariantBreach(Exception):  # noqa: N818 (public name, kept; Exception so mypyc compiles it)
    """A report that contradicts the wallet's state: a bug, never a user error."""


class Funds:
    """What the user has of one asset: ``available`` to spend, and ``held`` for open
    orders. Changed in place (compiled, two machine integers, not a list of objects).

    >>> Funds(5, 2)
    Funds(available=5, held=2)
    """

    __slots__ = ("available", "held")

    def __init__(self, available: int = 0, held: int = 0) -> None:
        self.available = available
        self.held = held

    def __repr__(self) -> str:
        return f"Funds(available={self.available}, held={self.held})"


class _Hold:
    """What an open order still holds (asset, amount), where it trades, and the asset
    its fills pay it in (the market's other one)."""

    __slots__ = ("amount", "asset", "market", "receives")

    def __init__(self, market: str, asset: str, amount: int, receives: str) -> None:
        self.market = market
        self.asset = asset
        self.amount = amount
        self.receives = receives


class WalletMachine:
    """One user's wallet: ``apply`` messages, then ``flush`` the state they changed.

    ``apply`` hands messages for the books to ``send`` and events (order
    placed or rejected, transfer outcomes, rejected cancels) to ``emit`` as
    they happen. The balances record is the user's whole state, so it is
    built once per batch: ``flush`` emits it if anything changed since the
    last flush, with ``version`` counting every change (not every record), so
    the same version always names the same balances however the log was
    batched. ``handle`` is ``apply`` and ``flush`` for one message.
    """

    def __init__(self, user_id: str, markets: Markets) -> None:
        self.user_id = user_id
        self.markets = markets
        # asset -> its funds; an asset appears at its first change (``funds``)
        self.balances: dict[str, Funds] = {}
        self.holds: dict[str, _Hold] = {}  # open order id -> what it holds
        # Ids of the user's recent orders and transfers (dedupe), and the user's clock.
        self.orders_seen = IdWindow()
        self.transfers_seen = IdWindow()
        self.clock = 0
        self.version = 0  # balance changes so far
        self.changed_at: int | None = None  # time of the last change not yet flushed
        self.pending = False  # in a batch's list of machines to flush (``run_batch``)
        self.inbound: Inbound[Settlement] = Inbound()
        self.outbound = Outbound()
        # Looked up on every order and trade: kept at hand rather than through ``markets``.
        self.assets_of = markets.assets_of
        self.rules = markets.markets
        self.reserved = user_id.startswith("_")

    # --- queries -----------------------------------------------------------------

    def balance(self, asset: str) -> tuple[int, int]:
        """(available, held) of ``asset``."""
        funds = self.balances.get(asset)
        return (funds.available, funds.held) if funds else (0, 0)

    def funds(self, asset: str) -> Funds:
        """The funds of ``asset``, to change in place (new ones if it has none yet)."""
        funds = self.balances.get(asset)
        if funds is None:
            funds = self.balances[asset] = Funds()
        return funds

    # --- the machine ---------------------------------------------------------------

    def handle(self, msg: WalletInbox) -> list[Message]:
        """Apply one inbox message and flush; return everything it causes, in order.

        >>> from crypton.config import load_markets
        >>> w = WalletMachine("bob", load_markets())
        >>> [type(m).__name__ for m in w.handle(
        ...     Credit(user_id="bob", asset="BTC", amount=5, transfer_id="t", ts=0))]
        ['TransferState', 'BalanceState']
        """
        out: list[Message] = []
        self.apply(msg, out.append, out.append)
        self.flush(out.append)
        return out

    def apply(self, msg: WalletInbox, send: Emit, emit: Emit) -> None:
        """Apply one inbox message: requests to the books go to ``send``, events to ``emit``."""
        WALLET_HANDLERS[type(msg)](self, msg, send, emit)

    def flush(self, emit: Emit) -> None:
        """Emit the balances record if they changed since the last flush (and leave the
        batch's list of machines to flush: ``pending``)."""
        self.pending = False
        ts = self.changed_at
        if ts is None:
            return
        self.changed_at = None
        emit(
            _BalanceState(  # (user_id, version, balances, ts)
                self.user_id,
                self.version,
                {a: _Balance(f.available, f.held) for a, f in self.balances.items()},
                ts,
            )
        )

    def _changed(self, ts: int) -> None:
        self.version += 1
        self.changed_at = ts

    def _admit(self, seen: IdWindow, key: str, ts: int, command: str, emit: Emit) -> bool:
        """Whether the command ``key`` is new: a repeat inside the window is ignored, a
        stale command refused (see the module docstring); a new one is remembered."""
        self._tick(ts)
        digest = id_digest(key)
        if seen.has(digest):
            # A retry of a command we already have: the original stands. (Or, about
            # once in 2**64 / len(seen) commands, another id of the same digest: see
            # ``crypton.domain.idwindow``.)
            return False
        if ts < seen.horizon:
            emit(self._stale(command, key, ts))
            return False
        seen.put(digest)
        return True

    def _stale(self, command: str, ref: str, ts: int) -> Rejection:
        return Rejection(
            user_id=self.user_id,
            command=command,
            ref=ref,
            reason="stale: older than the dedupe window, so it may repeat a command "
            "already decided",
            reason_code="stale",
            ts=ts,
        )

    def _open_already(self, order_id: str, ts: int) -> Rejection:
        return Rejection(
            user_id=self.user_id,
            command="place_order",
            ref=order_id,
            reason="duplicate order id: an order with this id is open",
            reason_code="duplicate_order_id",
            ts=ts,
        )

    def _tick(self, ts: int) -> None:
        """A command's time: move the user's clock (and the window) forward."""
        if ts > self.clock:
            self.clock = ts
            # Both windows swap generations together, at the same clock.
            if self.orders_seen.tick(ts):
                self.transfers_seen.tick(ts)

    def _on_settlement(self, msg: Settlement, send: Emit, emit: Emit) -> None:
        # Every field once, in one call (as ``_place``).
        src: str
        seq: int
        prev: int
        order_id: str
        take: int
        refund: int
        receive: int
        closed: bool
        ts: int
        _user, src, seq, prev, order_id, take, refund, receive, closed, ts, _v = _astuple(msg)
        # The in-line check of ``Inbound.accept``, inlined: this runs for nearly every
        # order a book touches. A wallet never forgets a market, so its whole
        # ``applied`` map is the current generation.
        inbound = self.inbound
        applied = inbound.applied.current
        last = applied.get(src)
        if inbound.parked or last is None or not prev <= last < seq:
            # Out of line: apply whatever is now due, in sequence order.
            for due in inbound.accept(src, seq, prev, msg):
                _u, src, _s, _p, order_id, take, refund, receive, closed, ts, _v = _astuple(due)
                self._settle(order_id, take, refund, receive, closed, ts, src)
            return
        applied[src] = seq
        self._settle(order_id, take, refund, receive, closed, ts, src)

    def _place(self, cmd: PlaceOrder, send: Emit, emit: Emit) -> None:
        # Every field once, in one call: reading them one by one costs the compiled core
        # (``make mypyc``) a lookup by name each. Declared, so that it works on them typed.
        user_id: str
        order_id: str
        symbol: str
        side: Side
        kind: OrderType
        price: int | None
        quantity: int | None
        funds: int | None
        time_in_force: TimeInForce
        post_only: bool
        # The time twice: ``ts`` as a machine integer to compare, ``stamp`` for the
        # records (three here).
        stamp: Stamp
        ts: int
        (_v, user_id, order_id, client_order_id, symbol, side, kind, price, quantity, funds,
         time_in_force, post_only, stp, stamp) = _astuple(cmd)  # fmt: skip
        ts = stamp
        # ``_admit`` (and ``_tick``), inlined: once per order.
        seen = self.orders_seen
        if ts > self.clock:
            self.clock = ts
            if ts - seen.since >= DEDUPE_WINDOW_MS:
                seen.tick(ts)
                self.transfers_seen.tick(ts)
        digest = id_digest(order_id)
        if digest in seen.current or digest in seen.previous:
            return  # a retry of an order we already have (or a collision: see ``_admit``)
        if ts < seen.horizon:
            emit(self._stale("place_order", order_id, ts))
            return
        holds = self.holds
        if order_id in holds:
            # The id left the window while its order rests (a repeat sent more than a
            # window after the original): the original stands. Refused, not remembered,
            # and with no order record, which would replace the open order's.
            emit(self._open_already(order_id, ts))
            return
        seen.current.add(digest)
        seen.added.append(digest)
        if self.reserved:
            # Reserved accounts never trade: the fee account settles a trade by
            # collecting its fees only, so an order of its own would create or
            # destroy funds when it fills.
            emit(_rejected(cmd, Problem("reserved_account", "reserved account")))
            return
        market = self.rules.get(symbol)
        if market is None:
            emit(_rejected(cmd, Problem("unknown_market", f"unknown market {symbol}")))
            return
        problem = check_terms(market, side, kind, price, quantity, funds, time_in_force, post_only)
        if problem is not None:
            emit(_rejected(cmd, problem))
            return
        amount = hold_amount(market, side, price, quantity, funds)
        base, quote = market.base.code, market.quote.code
        asset, receives = (base, quote) if side == "sell" else (quote, base)
        have = self.balances.get(asset)  # ``funds``, inlined: once per order
        if have is None:
            have = self.balances[asset] = Funds()
        if have.available < amount:
            precision = self.markets.asset(asset).precision
            reason = (
                f"insufficient {asset}: available {to_text(have.available, precision)}, "
                f"needed {to_text(amount, precision)}"
            )
            emit(_rejected(cmd, Problem("insufficient_funds", reason)))
            return
        have.available -= amount
        have.held += amount
        holds[order_id] = _Hold(symbol, asset, amount, receives)
        self.version += 1
        self.changed_at = stamp
        # ``order_state(cmd, NEW, None, version=1, updated_at=ts)``, positional
        new = _OrderState(
            order_id, user_id, client_order_id, symbol, side, kind, price, quantity, funds,
            time_in_force, post_only, stp, NEW, stamp, stamp, 1,
        )  # fmt: skip
        emit(new)
        # ``Outbound.link``, inlined; a wallet never forgets a market, so its links are
        # all in the current generation.
        outbound = self.outbound
        seq = outbound.count = outbound.count + 1
        links = outbound.last.current
        prev = links.get(symbol, 0)
        links[symbol] = seq
        # (market, src, seq, order, hold, prev): positional, as every message of the hot path
        send(_BookOrder(symbol, user_id, seq, cmd, amount, prev))

    def _cancel(self, cmd: CancelOrder, send: Emit, emit: Emit) -> None:
        self._tick(cmd.ts)
        hold = self.holds.get(cmd.order_id)
        if hold is not None:
            send(self._book_cancel(hold.market, cmd.order_id, cmd.ts))
            return
        seen = cmd.order_id in self.orders_seen
        emit(
            Rejection(
                user_id=self.user_id,
                command="cancel_order",
                ref=cmd.order_id,
                # An order out of the window is "unknown" here; the API knows it by its record.
                reason="order is not open" if seen else "unknown order",
                reason_code="order_not_open" if seen else "unknown_order",
                ts=cmd.ts,
            )
        )

    def _cancel_all(self, cmd: CancelAll, send: Emit, emit: Emit) -> None:
        self._tick(cmd.ts)
        for order_id, hold in list(self.holds.items()):
            if cmd.market is None or hold.market == cmd.market:
                send(self._book_cancel(hold.market, order_id, cmd.ts))

    def _book_cancel(self, market: str, order_id: str, ts: int) -> BookCancel:
        outbound = self.outbound
        prev = outbound.link(market)
        return BookCancel(
            market=market,
            src=self.user_id,
            seq=outbound.count,
            order_id=order_id,
            ts=ts,
            prev=prev,
        )

    def _credit(self, cmd: Credit, send: Emit, emit: Emit) -> None:
        self._transfer(cmd, "credit", emit)

    def _debit(self, cmd: Debit, send: Emit, emit: Emit) -> None:
        self._transfer(cmd, "debit", emit)

    def _transfer(
        self, cmd: Credit | Debit, direction: Literal["credit", "debit"], emit: Emit
    ) -> None:
        key = cmd.transfer_id
        if not self._admit(self.transfers_seen, key, cmd.ts, direction, emit):
            return
        problem: Problem | None = None
        if self.user_id.startswith("_") and self.user_id != FEE_ACCOUNT:
            problem = Problem("reserved_account", "reserved account")
        elif cmd.asset not in self.markets.assets:
            problem = Problem("unknown_asset", f"unknown asset {cmd.asset}", "asset")
        elif not in_range(cmd.amount):
            problem = Problem("out_of_range", "amount must be positive", "amount")
        else:
            funds = self.funds(cmd.asset)
            if direction == "credit":
                if not in_range(funds.available + funds.held + cmd.amount):
                    problem = Problem("balance_limit", "balance would exceed the largest amount")
                else:
                    funds.available += cmd.amount
            elif funds.available < cmd.amount:
                precision = self.markets.asset(cmd.asset).precision
                reason = (
                    f"insufficient {cmd.asset}: available {to_text(funds.available, precision)}, "
                    f"requested {to_text(cmd.amount, precision)}"
                )
                problem = Problem("insufficient_funds", reason, "amount")
            else:
                funds.available -= cmd.amount
        if problem is None:
            self._changed(cmd.ts)
        emit(
            TransferState(
                user_id=self.user_id,
                transfer_id=key,
                direction=direction,
                asset=cmd.asset,
                amount=cmd.amount,
                status="REJECTED" if problem else "ACCEPTED",
                reason=problem.reason if problem else None,
                reason_code=problem.code if problem else None,
                ts=cmd.ts,
            )
        )

    def _settle(
        self,
        order_id: str,
        take: int,
        refund: int,
        receive: int,
        closed: bool,
        ts: int,
        src: str,
    ) -> None:
        """Apply what a book message (from ``src``) did to one of the user's orders: a
        ``Settlement``'s fields."""
        if take < 0 or refund < 0 or receive < 0:
            raise InvariantBreach(f"{self.user_id}: a negative settlement of {order_id!r}")
        if not order_id:
            if self.user_id != FEE_ACCOUNT:
                raise InvariantBreach(f"{self.user_id}: a fee collection from {src}")
            self.funds(self.assets_of[src][1]).available += receive
            self.version += 1
            self.changed_at = ts
            return
        hold = self.holds.get(order_id)
        if hold is None:
            raise InvariantBreach(f"{self.user_id}: settlement of {order_id}, which is not open")
        balances = self.balances
        funds = balances[hold.asset]  # the order holds it: it has funds
        if take:
            if take > hold.amount or take > funds.held or refund > take:
                raise InvariantBreach(
                    f"{self.user_id}: settling {take} {hold.asset} of {order_id} exceeds"
                    f" its hold of {hold.amount}"
                )
            hold.amount -= take
            funds.held -= take
            funds.available += refund
            gets = balances.get(hold.receives)  # ``funds``, inlined: once per settlement
            if gets is None:
                gets = balances[hold.receives] = Funds()
            gets.available += receive
        elif receive or refund:
            raise InvariantBreach(f"{self.user_id}: {order_id} receives with nothing taken")
        if closed:
            # The book closed the order: free what it still holds, once.
            del self.holds[order_id]
            rest = hold.amount
            funds.held -= rest
            funds.available += rest
            if not (take or rest):
                return  # closed with nothing left and nothing moved: no change
        self.version += 1
        self.changed_at = ts

    # --- recovery ------------------------------------------------------------------

    def snapshot(self) -> tuple[Any, ...]:
        """A compact, immutable copy of the state for Bytewax recovery. The dedupe
        window is its clock and, for orders and for transfers, two ``bytes`` of 8-byte
        digests (``IdWindow.snapshot``), current generation first: a hot wallet's
        snapshot is its open orders plus 8 bytes an id of at most two windows.

        The open orders' holds are ``(markets, rows)``: the markets they trade, each once,
        and a row ``(order_id, market's index, holds the base, amount)`` per order, the
        order id as 16 bytes when it is a UUID (the API's are): about 25 bytes an open
        order, where the market's and the asset's names and the id as text were 57."""
        return (
            self.user_id,
            {asset: (f.available, f.held) for asset, f in self.balances.items()},
            self._packed_holds(),
            (self.clock, self.orders_seen.snapshot(), self.transfers_seen.snapshot()),
            self.version,
            self.inbound.snapshot(),
            self.outbound.snapshot(),
        )  # fmt: skip

    def _packed_holds(self) -> tuple[list[str], list[tuple[str | bytes, int, bool, int]]]:
        names: dict[str, int] = {}
        rows: list[tuple[str | bytes, int, bool, int]] = []
        assets_of = self.assets_of
        for oid, hold in self.holds.items():
            market = hold.market
            index = names.get(market)
            if index is None:
                index = names[market] = len(names)
            base = hold.asset == assets_of[market][0]
            rows.append((uuid_bytes(oid) or oid, index, base, hold.amount))
        return list(names), rows

    @classmethod
    def restore(cls, snapshot: tuple[Any, ...], markets: Markets) -> WalletMachine:
        user_id, balances, holds, window, version, inbound, outbound = snapshot
        wallet = cls(user_id, markets)
        wallet.balances = {asset: Funds(a, h) for asset, (a, h) in balances.items()}
        if isinstance(holds, dict):  # before the packed holds: {id: (market, asset, amount)}
            wallet.holds = {
                oid: _restored_hold(market, markets.assets_of[market], asset, amount)
                for oid, (market, asset, amount) in holds.items()
            }
        else:
            names, rows = holds
            wallet.holds = {}
            for oid, index, holds_base, amount in rows:
                market = names[index]
                assets = markets.assets_of[market]
                order_id = oid if isinstance(oid, str) else uuid_text(oid)
                wallet.holds[order_id] = _restored_hold(
                    market, assets, assets[0] if holds_base else assets[1], amount
                )
        wallet.clock, orders, transfers = window
        wallet.orders_seen = IdWindow.restore(orders)
        wallet.transfers_seen = IdWindow.restore(transfers)
        wallet.version = version
        wallet.inbound = Inbound.restore(inbound)
        wallet.outbound = Outbound.restore(outbound)
        return wallet


_Handler = Callable[[WalletMachine, Any, Emit, Emit], None]
WALLET_HANDLERS: Final[dict[type[Message], _Handler]] = {
    PlaceOrder: WalletMachine._place,
    CancelOrder: WalletMachine._cancel,
    CancelAll: WalletMachine._cancel_all,
    Credit: WalletMachine._credit,
    Debit: WalletMachine._debit,
    Settlement: WalletMachine._on_settlement,
}
"""What ``WalletMachine.apply`` does with each inbox type; ``Exchange`` dispatches through it."""


def _restored_hold(market: str, assets: tuple[str, str], asset: str, amount: int) -> _Hold:
    """The hold of ``amount`` of ``asset`` for an order on ``market`` (its ``assets``, base
    then quote): it receives the other one."""
    base, quote = assets
    return _Hold(market, asset, amount, base if asset == quote else quote)


def _rejected(cmd: PlaceOrder, problem: Problem) -> OrderState:
    """The wallet's refusal of an order: version 1, REJECTED, with the problem's code."""
    return order_state(
        cmd, REJECTED, problem.reason, version=1, updated_at=cmd.ts, reason_code=problem.code
    )
