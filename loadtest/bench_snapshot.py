"""What one epoch's snapshot costs the wallet step, and what idle wallets cost in memory.

    python -m loadtest.bench_snapshot [--users 300000] [--changed 10] [--epochs 20]

Builds ``--users`` funded wallets through the real ``WalletLogic`` and the builder
Bytewax calls (one logic per user, ``LIVE_MACHINES`` of them kept decoded), closes
an epoch over all of them, then runs ``--epochs`` epochs in which ``--changed``
users receive a credit. An epoch close does what Bytewax does: ``snapshot()`` of
each key awoken in the epoch, then ``pickle.dumps`` of each result on its way to
the recovery store. It prints the stall (p50/p99 over the epochs) and the bytes
written per epoch, then the resident memory of the same users restored from their
packed state (a restarted process: every wallet idle, none decoded), per user,
and what decoding ``LIVE_MACHINES`` of them again adds.

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

from crypton import schema
from crypton.config import load_markets
from crypton.domain.messages import Credit
from dataflows.exchange import LIVE_MACHINES, WalletLogic, _Steps


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--live", type=int, default=LIVE_MACHINES)
    args = parser.parse_args(argv)
    markets = load_markets()
    steps = _Steps("wallet", markets, schema.record_encoder(), args.live)
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
    restored_steps = _Steps("wallet", markets, schema.record_encoder(), args.live)
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


if __name__ == "__main__":
    main()
