"""The wallet state machine: one user's funds, keyed by user id.

It reads the wallet inbox (commands from the API, reports from the books) and
decides: it validates orders and holds their funds before any book sees them,
settles trades, releases what a closed order no longer needs, and applies
credits and debits. It is the only writer of a user's balances.

Funds are released only when the book reports the order closed (``Release``),
never on the cancel request itself, so a cancel can never release twice.

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

from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

from crypton.domain.idwindow import DIGEST_PRIME, IdWindow, id_digest
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
    PlaceOrder,
    Rejection,
    Release,
    Settle,
    Trade,
    TransferState,
    WalletInbox,
)
from crypton.domain.money import MAX_UNITS, to_text
from crypton.domain.orders import Problem, check, hold_for, order_state
from crypton.domain.sequencing import DEDUPE_WINDOW_MS, Inbound, Outbound

__all__ = ["WALLET_HANDLERS", "InvariantBreach", "WalletMachine"]


class InvariantBreach(Exception):  # noqa: N818 (public name, kept; Exception so mypyc compiles it)
    """A report that contradicts the wallet's state: a bug, never a user error."""


class _Hold:
    """What an open order still holds: asset, amount, and where it trades."""

    __slots__ = ("amount", "asset", "market")

    def __init__(self, market: str, asset: str, amount: int) -> None:
        self.market = market
        self.asset = asset
        self.amount = amount


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
        # asset -> [available, held]; a new asset starts at [0, 0]
        self.balances: defaultdict[str, list[int]] = defaultdict(_zero_row)
        self.holds: dict[str, _Hold] = {}  # open order id -> what it holds
        # Ids of the user's recent orders and transfers (dedupe), and the user's clock.
        self.orders_seen = IdWindow()
        self.transfers_seen = IdWindow()
        self.clock = 0
        self.version = 0  # balance changes so far
        self.changed_at: int | None = None  # time of the last change not yet flushed
        self.inbound: Inbound[Settle | Release] = Inbound()
        self.outbound = Outbound()
        # Looked up on every order and trade: kept at hand rather than through ``markets``.
        self.assets_of = markets.assets_of
        self.reserved = user_id.startswith("_")

    # --- queries -----------------------------------------------------------------

    def balance(self, asset: str) -> tuple[int, int]:
        """(available, held) of ``asset``."""
        row = self.balances.get(asset)
        return (row[0], row[1]) if row else (0, 0)

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
        """Emit the balances record if they changed since the last flush."""
        ts = self.changed_at
        if ts is None:
            return
        self.changed_at = None
        emit(
            BalanceState(  # (user_id, version, balances, ts)
                self.user_id,
                self.version,
                {a: Balance(row[0], row[1]) for a, row in self.balances.items()},
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

    def _tick(self, ts: int) -> None:
        """A command's time: move the user's clock (and the window) forward."""
        if ts > self.clock:
            self.clock = ts
            # Both windows swap generations together, at the same clock.
            if self.orders_seen.tick(ts):
                self.transfers_seen.tick(ts)

    def _on_settle(self, msg: Settle, send: Emit, emit: Emit) -> None:
        # The in-line check of ``Inbound.accept``, inlined: this runs for every trade
        # on each of its two or three wallets. A wallet never forgets a market, so its
        # whole ``applied`` map is the current generation.
        inbound = self.inbound
        applied = inbound.applied.current
        src = msg.src
        seq = msg.seq
        last = applied.get(src)
        if inbound.parked or last is None or not msg.prev <= last < seq:
            self._catch_up(msg)
            return
        applied[src] = seq
        trade = msg.trade
        self._settle(trade)
        self.version += 1
        self.changed_at = trade.time

    def _on_release(self, msg: Release, send: Emit, emit: Emit) -> None:
        inbound = self.inbound
        applied = inbound.applied.current
        src = msg.src
        seq = msg.seq
        last = applied.get(src)
        if inbound.parked or last is None or not msg.prev <= last < seq:
            self._catch_up(msg)
            return
        applied[src] = seq
        if self._release(msg.order_id):
            self.version += 1
            self.changed_at = msg.ts

    def _catch_up(self, msg: Settle | Release) -> None:
        """A report out of line: apply whatever is now due, in sequence order."""
        for due in self.inbound.accept(msg.src, msg.seq, msg.prev, msg):
            if type(due) is Settle:
                self._settle(due.trade)
                self._changed(due.trade.time)
            elif self._release(due.order_id):  # type: ignore[union-attr]
                self._changed(due.ts)  # type: ignore[union-attr]

    def _place(self, cmd: PlaceOrder, send: Emit, emit: Emit) -> None:
        # ``_admit`` (and ``_tick``), inlined: once per order.
        ts, order_id, seen = cmd.ts, cmd.order_id, self.orders_seen
        if ts > self.clock:
            self.clock = ts
            if ts - seen.since >= DEDUPE_WINDOW_MS:
                seen.tick(ts)
                self.transfers_seen.tick(ts)
        digest = int.from_bytes(b"\x01" + order_id.encode(), "big") % DIGEST_PRIME  # id_digest
        if digest in seen.current or digest in seen.previous:
            return  # a retry of an order we already have (or a collision: see ``_admit``)
        if ts < seen.horizon:
            emit(self._stale("place_order", order_id, ts))
            return
        seen.current.add(digest)
        seen.added.append(digest)
        if self.reserved:
            # Reserved accounts never trade: the fee account settles a trade by
            # collecting its fees only, so an order of its own would create or
            # destroy funds when it fills.
            emit(_rejected(cmd, Problem("reserved_account", "reserved account")))
            return
        market = self.markets.markets.get(cmd.market)
        if market is None:
            emit(_rejected(cmd, Problem("unknown_market", f"unknown market {cmd.market}")))
            return
        problem = check(market, cmd)
        if problem:
            emit(_rejected(cmd, problem))
            return
        asset, amount = hold_for(market, cmd)
        row = self.balances[asset]
        if row[0] < amount:
            precision = self.markets.asset(asset).precision
            reason = (
                f"insufficient {asset}: available {to_text(row[0], precision)}, "
                f"needed {to_text(amount, precision)}"
            )
            emit(_rejected(cmd, Problem("insufficient_funds", reason)))
            return
        row[0] -= amount
        row[1] += amount
        self.holds[cmd.order_id] = _Hold(cmd.market, asset, amount)
        self.version += 1
        self.changed_at = cmd.ts
        emit(order_state(cmd, NEW, None, version=1, updated_at=cmd.ts))
        # ``Outbound.link``, inlined; a wallet never forgets a market, so its links are
        # all in the current generation.
        outbound = self.outbound
        seq = outbound.count = outbound.count + 1
        links = outbound.last.current
        prev = links.get(cmd.market, 0)
        links[cmd.market] = seq
        # (market, src, seq, order, hold, prev): positional, as every message of the hot path
        send(BookOrder(cmd.market, self.user_id, seq, cmd, amount, prev))

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
        elif not 0 < cmd.amount <= MAX_UNITS:
            problem = Problem("out_of_range", "amount must be positive", "amount")
        else:
            row = self.balances[cmd.asset]
            if direction == "credit":
                if row[0] + row[1] + cmd.amount > MAX_UNITS:
                    problem = Problem("balance_limit", "balance would exceed the largest amount")
                else:
                    row[0] += cmd.amount
            elif row[0] < cmd.amount:
                precision = self.markets.asset(cmd.asset).precision
                reason = (
                    f"insufficient {cmd.asset}: available {to_text(row[0], precision)}, "
                    f"requested {to_text(cmd.amount, precision)}"
                )
                problem = Problem("insufficient_funds", reason, "amount")
            else:
                row[0] -= cmd.amount
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

    def _settle(self, trade: Trade) -> None:
        base, quote = self.assets_of[trade.market]
        user_id = self.user_id
        balances = self.balances
        if user_id == FEE_ACCOUNT:
            balances[quote][0] += trade.maker_fee + trade.taker_fee
            return
        if user_id == trade.taker_user_id:
            buying, order_id, fee = trade.taker_side == "buy", trade.taker_order_id, trade.taker_fee
            release = trade.buyer_release
        elif user_id == trade.maker_user_id:
            buying, order_id, fee = trade.taker_side != "buy", trade.maker_order_id, trade.maker_fee
            release = 0
        else:
            raise InvariantBreach(f"trade {trade.market}#{trade.seq} is not {user_id}'s")
        hold = self.holds.get(order_id)
        if hold is None:
            raise InvariantBreach(f"trade {trade.market}#{trade.seq}: order {order_id} not open")
        if buying:
            # Pay value and fee from the hold; hand back price improvement at once.
            self._take_hold(hold, quote, trade.notional + fee + release)
            balances[quote][0] += release
            balances[base][0] += trade.quantity
        else:
            self._take_hold(hold, base, trade.quantity)
            balances[quote][0] += trade.notional - fee

    def _take_hold(self, hold: _Hold, asset: str, amount: int) -> None:
        row = self.balances[asset]
        if hold.asset != asset or amount > hold.amount or amount > row[1]:
            raise InvariantBreach(
                f"{self.user_id}: settling {amount} {asset} exceeds the hold of {hold.amount}"
            )
        hold.amount -= amount
        row[1] -= amount

    def _release(self, order_id: str) -> int:
        """Free what the closed order still holds; return the amount."""
        hold = self.holds.pop(order_id, None)
        if hold is None:
            raise InvariantBreach(f"{self.user_id}: release of {order_id}, which holds nothing")
        row = self.balances[hold.asset]
        row[1] -= hold.amount
        row[0] += hold.amount
        return hold.amount

    # --- recovery ------------------------------------------------------------------

    def snapshot(self) -> tuple[Any, ...]:
        """A compact, immutable copy of the state for Bytewax recovery. The dedupe
        window is its clock and, for orders and for transfers, two ``bytes`` of 8-byte
        digests (``IdWindow.snapshot``), current generation first: a hot wallet's
        snapshot is its open orders plus 8 bytes an id of at most two windows."""
        return (
            self.user_id,
            {asset: (row[0], row[1]) for asset, row in self.balances.items()},
            {oid: (h.market, h.asset, h.amount) for oid, h in self.holds.items()},
            (self.clock, self.orders_seen.snapshot(), self.transfers_seen.snapshot()),
            self.version,
            self.inbound.snapshot(),
            self.outbound.snapshot(),
        )  # fmt: skip

    @classmethod
    def restore(cls, snapshot: tuple[Any, ...], markets: Markets) -> WalletMachine:
        user_id, balances, holds, window, version, inbound, outbound = snapshot
        wallet = cls(user_id, markets)
        wallet.balances.update((asset, [a, h]) for asset, (a, h) in balances.items())
        wallet.holds = {oid: _Hold(*spec) for oid, spec in holds.items()}
        wallet.clock, orders, transfers = window
        wallet.orders_seen = IdWindow.restore(orders)
        wallet.transfers_seen = IdWindow.restore(transfers)
        wallet.version = version
        wallet.inbound = Inbound.restore(inbound)
        wallet.outbound = Outbound.restore(outbound)
        return wallet


_Handler = Callable[[WalletMachine, Any, Emit, Emit], None]
WALLET_HANDLERS: dict[type[Message], _Handler] = {
    PlaceOrder: WalletMachine._place,
    CancelOrder: WalletMachine._cancel,
    CancelAll: WalletMachine._cancel_all,
    Credit: WalletMachine._credit,
    Debit: WalletMachine._debit,
    Settle: WalletMachine._on_settle,
    Release: WalletMachine._on_release,
}
"""What ``WalletMachine.apply`` does with each inbox type; ``Exchange`` dispatches through it."""


def _zero_row() -> list[int]:
    return [0, 0]


def _rejected(cmd: PlaceOrder, problem: Problem) -> OrderState:
    """The wallet's refusal of an order: version 1, REJECTED, with the problem's code."""
    return order_state(
        cmd, REJECTED, problem.reason, version=1, updated_at=cmd.ts, reason_code=problem.code
    )
