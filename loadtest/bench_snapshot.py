"""What one epoch's snapshot costs the wallet step, and what idle wallets cost in memory.

    python -m loadtest.bench_snapshot [--users 300000] [--changed 10] [--epochs 20]
        [--book-orders 5000] [--book-changes 20]

Builds ``--users`` funded wallets through the real ``WalletLogic`` and the builder
Bytewax calls (one logic per user, ``LIVE_MACHINES`` of them kept decoded), closes
an epoch over all of them, then runs ``--epochs`` epochs in which ``--changed``
users receive a credit. An epoch close does what Bytewax does: ``snapshot()`` of
each key awoken in the epoch, then ``pickle.dumps`` of each result on its way to
the recovery store. It prints the stall (p50/p99 over the epochs) and the bytes
written per epoch, then the resident memory of the same users restored from their
packed state (a restarted process: every wallet idle, none decoded), per user,
and what decoding ``LIVE_MACHINES`` of them again adds.

Then the book step: a ``BookLogic`` holding ``--book-orders`` resting orders, and
``--epochs`` epochs in each of which ``--book-changes`` orders rest or are canceled
(20: 10 orders a second at the default 2-s epoch). It prints the epoch's snapshot and
pickle (p50/p99) with the book's levels packed as they changed (``Level.packed``) and
with every level packed again, as before that cache.

Main, one state key per partition, measured 10 ms of ``snapshot()`` + 105 ms of
pickle and 15 MB per epoch at 300,000 wallets and 10 changed.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Literal

from crypton import schema
from crypton.config import load_markets
from crypton.domain.messages import BookCancel, BookOrder, Credit, PlaceOrder
from dataflows.exchange import LIVE_MACHINES, BookLogic, WalletLogic, _Steps


def _credit(user: str, transfer: str) -> Credit:
    return Credit(user_id=user, asset="USDT", amount=10**6, transfer_id=transfer, ts=1)


def _epoch(awoken: list[WalletLogic]) -> tuple[float, float, int]:
    """(snapshot seconds, pickle seconds, bytes) of one epoch close over ``awoken``."""
    began = time.perf_counter()
    states = [logic.snapshot() for logic in awoken]
    snapped = time.perf_counter()
    written = [pickle.dumps(state) for state in states]
    pickled = time.perf_counter()
    return snapped - began, pickled - snapped, sum(len(w) for w in written)


def _book_phase(orders: int, changes: int, epochs: int) -> None:
    """Epoch closes of a book of ``orders`` resting orders, ``changes`` each."""
    markets = load_markets()
    market = markets.market("BTC-USDT")
    steps = _Steps("book", markets, schema.record_routes(), LIVE_MACHINES, 50)
    logic = BookLogic(steps.here(), None)
    mid, seq = 50_000 * market.quote.scale, 0

    def order(n: int) -> BookOrder:
        nonlocal seq
        seq += 1
        side: Literal["buy", "sell"] = "buy" if n % 2 else "sell"
        ticks = 1 + n * 7919 % 500  # 500 levels a side, never crossing
        price = mid - ticks * market.tick if side == "buy" else mid + ticks * market.tick
        cmd = PlaceOrder(user_id="maker", order_id=f"m{n}", client_order_id=f"c{n}",
                         market=market.symbol, side=side, type="limit", price=price,
                         quantity=market.min_quantity * 10, ts=n)  # fmt: skip
        return BookOrder(market.symbol, "maker", seq, cmd, 1, seq - 1)

    logic.on_batch([[(n, order(n)) for n in range(orders)]])
    logic.snapshot()
    # What was built lives on: out of the collector's sight, as in a long-running flow,
    # so that the figures are the snapshot's and not a collection's.
    gc.collect()
    gc.freeze()
    cached, cold, sizes = [], [], []
    n = orders
    for _ in range(epochs):
        batch: list[BookOrder | BookCancel] = []
        for i in range(changes):
            if i % 2:
                seq += 1
                victim = f"m{n - orders + i}"
                batch.append(BookCancel(market.symbol, "maker", seq, victim, n, seq - 1))
            else:
                batch.append(order(n))
            n += 1
        logic.on_batch([[(n + k, m) for k, m in enumerate(batch)]])
        began = time.perf_counter()
        size = len(pickle.dumps(logic.snapshot()))
        cached.append(time.perf_counter() - began)
        sizes.append(size)
        book = logic.machine.book  # every level packed again: the cost before the cache
        for side in ("buy", "sell"):
            for level in book.levels_from_best(side):
                level.packed = None
        logic.stale = True
        began = time.perf_counter()
        pickle.dumps(logic.snapshot())
        cold.append(time.perf_counter() - began)
    qc = statistics.quantiles([s * 1000 for s in cached], n=100)
    qa = statistics.quantiles([s * 1000 for s in cold], n=100)
    print(
        f"book of {len(logic.machine.book):,} resting orders, {changes} changes an epoch:"
        f" snapshot + pickle p50 {qc[49]:.2f} ms, p99 {qc[98]:.2f} ms with its levels packed"
        f" as they changed (every level packed again: p50 {qa[49]:.2f} ms, p99"
        f" {qa[98]:.2f} ms); {statistics.mean(sizes):,.0f} bytes per epoch (the whole book)"
    )
    gc.unfreeze()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--live", type=int, default=LIVE_MACHINES)
    parser.add_argument("--book-orders", type=int, default=5_000)
    parser.add_argument("--book-changes", type=int, default=20)
    args = parser.parse_args(argv)
    markets = load_markets()
    steps = _Steps("wallet", markets, schema.record_routes(), args.live)
    build: Callable[[bytes | None], WalletLogic] = lambda packed: WalletLogic(  # noqa: E731
        steps.here(), packed
    )
    users = [f"user-{i:07d}" for i in range(args.users)]

    began = time.perf_counter()
    logics = {user: build(None) for user in users}
    for offset, (user, logic) in enumerate(logics.items()):
        logic.on_batch([[(offset, _credit(user, "fund"))]])
    first, pickled, size = _epoch(list(logics.values()))
    print(
        f"built {args.users:,} wallets in {time.perf_counter() - began:.1f} s"
        f" ({args.live:,} kept decoded); first epoch over all of them:"
        f" snapshot {first * 1000:.0f} ms + pickle {pickled * 1000:.0f} ms, {size / 1e6:.1f} MB"
    )

    stalls, snaps, bytes_written = [], [], []
    step = max(1, args.users // args.changed)
    for epoch in range(args.epochs):
        awoken = [logics[users[(epoch + i * step) % args.users]] for i in range(args.changed)]
        for i, logic in enumerate(awoken):
            logic.on_batch([[(i, _credit(users[(epoch + i * step) % args.users], f"e{epoch}"))]])
        snapped, pickled, size = _epoch(awoken)
        snaps.append(snapped)
        stalls.append(snapped + pickled)
        bytes_written.append(size)
    q = statistics.quantiles([s * 1000 for s in stalls], n=100)
    print(
        f"epoch with {args.changed} of {args.users:,} wallets changed: stall p50 {q[49]:.3f} ms,"
        f" p99 {q[98]:.3f} ms (snapshot() p50 {statistics.median(snaps) * 1000:.3f} ms),"
        f" {statistics.mean(bytes_written):,.0f} bytes written per epoch"
        f" (main: 10 ms + 105 ms pickle, 15 MB)"
    )

    # The same users restored, as Bytewax rebuilds them after a restart: each logic
    # gets its packed state and stays packed until its next message. Python's own
    # allocations are counted (tracemalloc), not pages the allocator kept from before.
    blob = pickle.dumps([logic.snapshot() for logic in logics.values()])
    del logics
    gc.collect()
    restored_steps = _Steps("wallet", markets, schema.record_routes(), args.live)
    tracemalloc.start()
    restored = [WalletLogic(restored_steps.here(), state) for state in pickle.loads(blob)]
    idle, _ = tracemalloc.get_traced_memory()
    print(
        f"{len(restored):,} idle wallets restored (packed only): {idle / 1e6:.0f} MB,"
        f" {idle / len(restored):.0f} bytes per idle user"
        " (logic object + packed state; Bytewax adds its key map)"
    )
    sample = restored[: min(len(restored), args.live)]
    for offset, logic in enumerate(sample):
        logic.on_batch([[(offset, _credit(users[offset], "wake"))]])
        logic.snapshot()
    live, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{len(sample):,} of them decoded again (live): {(live - idle) / len(sample):,.0f}"
        " bytes more per live wallet"
    )
    _book_phase(args.book_orders, args.book_changes, args.epochs)


if __name__ == "__main__":
    main()
