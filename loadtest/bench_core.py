"""Benchmark of the pure exchange core: commands per second through ``Exchange.submit``.

Replays a fixed, seeded mix of commands on BTC-USDT and ETH-USDT from 1,000
pre-funded users (the credits are not timed): about 55% limit orders that rest
(priced on their own side of a fixed mid), 25% orders that cross (IOC limits
through the mid, market buys by funds and market sells) and 20% cancels of
orders placed earlier, drawn from a bounded set of recent resting orders. All
commands are built before the clock starts. They run twice, each time in a
fresh exchange: in batches of ``--batch`` (1,000) through
``Exchange.submit_batch``, as the dataflow feeds the core, for throughput;
then one at a time, for the latency of one command. Each call is timed with
``time.perf_counter_ns``. At the end every invariant is checked
(``crypton.domain.invariants.exchange_problems``); the exit status is 1 if
any fails.

    python -m loadtest.bench_core                  # 1,000,000 commands, seed 1
    python -m loadtest.bench_core --commands 200000 --profile
    make mypyc && python -m loadtest.bench_core   # the core compiled (make unmypyc undoes it)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crypton.config import load_markets
from crypton.domain import matching
from crypton.domain.exchange import Exchange
from crypton.domain.invariants import exchange_problems
from crypton.domain.markets import Market
from crypton.domain.messages import (
    TERMINAL,
    CancelOrder,
    Credit,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Trade,
    WalletInbox,
)
from crypton.runtime import tune_gc
from loadtest import report

MARKETS = ("BTC-USDT", "ETH-USDT")
MIDS = {"BTC-USDT": "50000", "ETH-USDT": "2500"}
USERS = 1_000
# Generous: nobody should run out of funds in a million commands, so that the
# mix stays what it says (amounts in whole units of each asset).
FUNDING = {"USDT": 10**9, "BTC": 10**5, "ETH": 10**6}
CANCEL_POOL = 20_000  # cancels pick from this many of the most recent open resting orders
PROGRESS_EVERY = 200_000


class _LivePool:
    """The most recent ``capacity`` resting orders still open: O(1) add, remove and draw."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[tuple[str, str]] = []  # (user, order id)
        self.index: dict[str, int] = {}
        self.age: deque[str] = deque()

    def add(self, user: str, order_id: str) -> None:
        self.index[order_id] = len(self.items)
        self.items.append((user, order_id))
        self.age.append(order_id)
        while len(self.index) > self.capacity:
            self.discard(self.age.popleft())

    def discard(self, order_id: str) -> None:
        position = self.index.pop(order_id, None)
        if position is None:
            return
        last = self.items.pop()
        if last[1] != order_id:
            self.items[position] = last
            self.index[last[1]] = position

    def draw(self, rng: random.Random) -> tuple[str, str]:
        user, order_id = self.items[rng.randrange(len(self.items))]
        self.discard(order_id)
        return user, order_id


def build_commands(
    count: int, seed: int, users: int = USERS
) -> tuple[list[WalletInbox], list[Credit]]:
    """The funding credits and ``count`` seeded commands (the same for the same arguments).

    A shadow exchange runs alongside so that cancels name orders that are
    still resting when the cancel arrives: the timed run replays the same
    commands in a fresh exchange, which is deterministic, so they still are.
    """
    markets = load_markets()
    rng = random.Random(seed)
    user_ids = [f"user{i:04d}" for i in range(users)]
    credits = [
        Credit(
            user_id=user,
            asset=asset,
            amount=amount * markets.asset(asset).scale,
            transfer_id=f"fund-{asset}",
            ts=0,
        )
        for user in user_ids
        for asset, amount in FUNDING.items()
    ]
    shadow = Exchange(markets)
    for credit in credits:
        shadow.submit(credit)
    specs = {symbol: markets.market(symbol) for symbol in MARKETS}
    mids = {s: int(MIDS[s]) * specs[s].quote.scale for s in MARKETS}
    pool = _LivePool(CANCEL_POOL)
    commands: list[WalletInbox] = []
    for n in range(count):
        ts = 1_700_000_000_000 + n
        roll = rng.random()
        command: WalletInbox
        if roll < 0.20 and pool.items:
            user, order_id = pool.draw(rng)
            command = CancelOrder(user_id=user, order_id=order_id, ts=ts)
        else:
            symbol = MARKETS[rng.random() < 0.4]  # 60% BTC-USDT, 40% ETH-USDT
            market, mid = specs[symbol], mids[symbol]
            user = user_ids[rng.randrange(users)]
            side = "buy" if rng.random() < 0.5 else "sell"
            common = {
                "user_id": user, "order_id": f"{user}-{n}", "client_order_id": str(n),
                "market": symbol, "side": side, "ts": ts,
            }  # fmt: skip
            if roll < 0.75:
                # Rest on our own side of the mid, 1 to 400 ticks away, denser near it.
                ticks = 1 + int(rng.expovariate(1 / 60)) % 400
                price = mid - ticks * market.tick if side == "buy" else mid + ticks * market.tick
                quantity = _quantity(rng, market, price, 1, 40)
                command = PlaceOrder(type="limit", price=price, quantity=quantity, **common)  # type: ignore[arg-type]
            else:
                command = _crossing(rng, market, mid, common)
        commands.append(command)
        for message in shadow.submit(command):
            if type(message) is OrderState:
                if message.status == "OPEN":
                    pool.add(message.user_id, message.order_id)
                elif message.status in TERMINAL:
                    pool.discard(message.order_id)
        if (n + 1) % PROGRESS_EVERY == 0:
            print(f"  built {n + 1:>9,} commands", file=sys.stderr)
    return commands, credits


def _quantity(rng: random.Random, market: Market, price: int, low: int, high: int) -> int:
    """A quantity of ``low``..``high`` times the minimum that meets the minimum value."""
    steps_for_min = -(-market.min_notional * market.base.scale // (price * market.step))
    unit = max(market.min_quantity // market.step, steps_for_min, 1)
    return unit * rng.randint(low, high) * market.step


def _crossing(
    rng: random.Random, market: Market, mid: int, common: dict[str, object]
) -> PlaceOrder:
    """An order that takes liquidity: an IOC limit through the mid, or a market order."""
    side = common["side"]
    kind = rng.random()
    if kind < 0.6:
        ticks = rng.randint(1, 200)
        price = mid + ticks * market.tick if side == "buy" else mid - ticks * market.tick
        quantity = _quantity(rng, market, price, 1, 48)
        return PlaceOrder(
            type="limit",
            price=price,
            quantity=quantity,
            time_in_force="IOC",
            **common,  # type: ignore[arg-type]
        )
    if side == "buy":
        funds = market.notional(mid, _quantity(rng, market, mid, 1, 48))
        return PlaceOrder(type="market", funds=funds, time_in_force="IOC", **common)  # type: ignore[arg-type]
    quantity = _quantity(rng, market, mid, 1, 48)
    return PlaceOrder(type="market", quantity=quantity, time_in_force="IOC", **common)  # type: ignore[arg-type]


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """The value at ``fraction`` (0..1) of an ascending sequence, nearest rank."""
    index = min(len(sorted_values) - 1, max(0, int(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class _Tally:
    """What the outputs said: trades, cancels, rejections."""

    def __init__(self) -> None:
        self.trades = self.canceled = self.cancel_missed = self.rejected = 0

    def count(self, out: list[Message]) -> None:
        for message in out:
            kind = type(message)
            if kind is Trade:
                self.trades += 1
            elif kind is Rejection:
                self.cancel_missed += 1
            elif kind is OrderState:
                status = message.status  # type: ignore[attr-defined]
                if status == "CANCELED":
                    self.canceled += 1
                elif status == "REJECTED":
                    self.rejected += 1


def _funded(credits: list[Credit]) -> Exchange:
    exchange = Exchange(load_markets())
    for credit in credits:
        exchange.submit(credit)
    return exchange


def _timed(
    exchange: Exchange, commands: list[WalletInbox], batch: int, profiler: cProfile.Profile | None
) -> tuple[array[int], float, float, _Tally]:
    """Feed ``commands`` in batches of ``batch``; the time of each batch, wall and CPU."""
    # Everything built so far lives to the end: take it out of the collector's
    # view, as a long-running process would, so its pauses measure the work.
    gc.collect()
    gc.freeze()
    # And collect as the dataflow does (``crypton.runtime``).
    thresholds = gc.get_threshold()
    tune_gc()
    batches = [commands[i : i + batch] for i in range(0, len(commands), batch)]
    latencies = array("q", bytes(8 * len(batches)))
    tally = _Tally()
    submit, clock = exchange.submit_batch, time.perf_counter_ns
    done = 0
    if profiler:
        profiler.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    for i, chunk in enumerate(batches):
        t0 = clock()
        out = submit(chunk)
        latencies[i] = clock() - t0
        tally.count(out)
        done += len(chunk)
        if done // PROGRESS_EVERY != (done - len(chunk)) // PROGRESS_EVERY:
            elapsed = time.perf_counter() - wall
            print(
                f"  {done:>9,} commands  {elapsed:6.1f} s  {tally.trades:,} trades", file=sys.stderr
            )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profiler:
        profiler.disable()
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    return latencies, wall, cpu, tally


def _report(label: str, count: int, latencies: array[int], wall: float, cpu: float) -> None:
    ordered = sorted(latencies)
    print(f"{label:<19}{count / (sum(latencies) / 1e9):,.0f} commands/s in submit")
    print(
        f"                   {count / wall:,.0f} commands/s wall, "
        f"{count / cpu:,.0f} per CPU second (loop and counting included)"
    )
    unit = "command" if len(latencies) == count else "batch"
    print(
        f"latency per {unit:<8}"
        + "  ".join(
            f"p{label} {percentile(ordered, q) / 1000:.1f} us"
            for label, q in (("50", 0.5), ("99", 0.99), ("99.9", 0.999))
        )
        + f"  max {ordered[-1] / 1000:.0f} us"
    )


def run(
    count: int,
    seed: int,
    profile: bool,
    batch: int,
    results_dir: Path = report.DEFAULT_OUT,
    plot: bool = False,
) -> int:
    started = time.perf_counter()
    commands, credits = build_commands(count, seed)
    print(
        f"built {len(commands):,} commands for {USERS:,} users in "
        f"{time.perf_counter() - started:.1f} s (seed {seed})",
        file=sys.stderr,
    )
    net = {asset: 0 for asset in FUNDING}
    for credit in credits:
        net[credit.asset] += credit.amount

    profiler = cProfile.Profile() if profile else None
    print(f"commands           {len(commands):,} (seed {seed})")
    compiled = matching.__file__.endswith(".so")  # `make mypyc` builds extensions in place
    print(f"core               {'compiled with mypyc' if compiled else 'plain Python'}")
    # As the dataflow feeds the core: a consumer batch in, one record per changed
    # balance and order out.
    batched = _funded(credits)
    batch_latencies, batch_wall, batch_cpu, tally = _timed(batched, commands, batch, profiler)
    _report(f"batches of {batch:,}", len(commands), batch_latencies, batch_wall, batch_cpu)
    # One command at a time, each run to quiescence: the latency of one command.
    exchange = _funded(credits)
    latencies, wall, cpu, single = _timed(exchange, commands, 1, None)
    _report("batches of 1", len(commands), latencies, wall, cpu)

    print(f"trades             {single.trades:,} ({tally.trades:,} in batches)")
    print(
        f"cancels            {single.canceled:,} canceled, "
        f"{single.cancel_missed:,} rejected (order not open)"
    )
    print(f"orders rejected    {single.rejected:,}")
    for symbol in MARKETS:
        book = exchange.books[symbol].book
        print(
            f"book {symbol:<9}    {len(book):,} resting orders, "
            f"{len(book.prices['buy']):,} bid / {len(book.prices['sell']):,} ask levels, "
            f"best {book.best_bid()} / {book.best_ask()}"
        )
    if profiler:
        print(f"\nprofile (batches of {batch:,}): top 25 by tottime")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)

    checked = time.perf_counter()
    problems = exchange_problems(exchange, net) + exchange_problems(batched, net)
    print(f"invariants         {len(problems)} problems ({time.perf_counter() - checked:.1f} s)")
    for problem in problems[:20]:
        print(f"  {problem}")
    ordered = sorted(latencies)
    results = {
        "commands": len(commands),
        "seed": seed,
        "batch": batch,
        "commands_per_s_in_submit_batched": len(commands) / (sum(batch_latencies) / 1e9),
        "commands_per_s_cpu_batched": len(commands) / batch_cpu,
        "commands_per_s_in_submit": len(commands) / (sum(latencies) / 1e9),
        "commands_per_s_wall": len(commands) / wall,
        "latency_us": {
            f"p{label}": percentile(ordered, q) / 1000
            for label, q in (("50", 0.5), ("99", 0.99), ("99.9", 0.999), ("100", 1.0))
        },
        "trades": single.trades,
        "canceled": single.canceled,
        "rejected": single.rejected,
        "invariant_problems": len(problems),
        "mypyc": compiled,
    }
    report.write_json(results_dir, "bench_core", results)
    if plot:
        _plot(latencies, ordered, results, results_dir)
    return 1 if problems else 0


def _plot(
    latencies: Sequence[int], ordered: Sequence[int], results: dict[str, Any], out: Path
) -> None:
    """Commands/s per slice of the run, and the per-command latency CDF."""
    plt = report.plotting()
    fig, (rate, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    chunk = max(1, len(latencies) // 50)
    starts = range(0, len(latencies) - chunk + 1, chunk)
    rate.plot(
        [(i + chunk) / 1000 for i in starts],
        [chunk / (sum(latencies[i : i + chunk]) / 1e9) for i in starts],
    )
    rate.set(xlabel="commands (thousands)", ylabel="commands/s (in submit)", ylim=(0, None))
    rate.set_title(f"core: {results['commands_per_s_in_submit']:,.0f} commands/s overall")
    step = max(1, len(ordered) // 5000)
    xs = [v / 1000 for v in ordered[::step]]
    cdf.plot(xs, [(i * step + 1) / len(ordered) for i in range(len(xs))])
    cdf.set(xscale="log", xlabel="latency per command (µs)", ylabel="fraction of commands")
    for label, value in results["latency_us"].items():
        if label != "p100":
            cdf.axvline(value, color="0.6", linestyle=":")
            cdf.annotate(f"{label} {value:.0f} µs", (value, 0.05), rotation=90, fontsize=7)
    cdf.set_title("per-command latency CDF")
    report.footer(fig, f"{results['commands']:,} commands, seed {results['seed']}")
    report.save(fig, out, "bench_core")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 by tottime")
    parser.add_argument(
        "--batch", type=int, default=1_000, help="commands per batch, as the dataflow feeds them"
    )
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.commands <= 0 or args.batch <= 0:
        parser.error("--commands and --batch must be positive")
    return run(args.commands, args.seed, args.profile, args.batch, args.out, args.plot)


if __name__ == "__main__":
    sys.exit(main())
