"""Benchmark of the whole pipeline: broker + dataflow, measured from the outside.

    python -m loadtest.bench_pipeline --broker kafka|tansu [--orders N]

Starts an embedded broker on a free loopback port and, on it:

1. the baseline: a trivial Bytewax loop A -> keyed step -> B -> keyed step -> C
   with the stock connectors (``loadtest/baseline_flow.py``), fed N items;
2. the exchange dataflow, fed N orders (a mix that trades) at full speed, then
   a paced phase at ``--rate`` orders/s.

It reports sustained orders/s until every order's final state is on the
state topics, as a ratio of the baseline's items/s; the latency from a
command's timestamp to its order's first state record and to its first
trade (p50/p99); the CPU the broker and the dataflow used; and, from the
dataflow's own metrics, what each phase's epoch closes cost (the steps'
``snapshot()`` time, the state handed to the recovery store and the bases
written to Kafka). Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.cimpl import NewTopic

from crypton import schema, topics
from crypton.broker import EmbeddedBroker
from crypton.cli import ensure_recovery_store
from crypton.config import Settings, load_markets
from crypton.domain.messages import Credit, Message, PlaceOrder, Side
from crypton.kafka import admin as kafka_admin
from crypton.kafka import consume_now, consumer_config, producer_config
from crypton.process import Child, free_port, free_ports, settings_env
from loadtest import report
from loadtest.scale_measure import histogram_quantile, metric_sums, metrics_text

ROOT = Path(__file__).resolve().parents[1]
USERS = 200
PARTITIONS = 4


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _say(line: str) -> None:
    print(line, flush=True)


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds used so far by ``pid`` and all its descendants."""
    if pid is None:
        return 0.0
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack.extend(children.get(current, []))
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


class _Cpu:
    """CPU used by the named processes (and this bench) since it was made, and how busy
    the whole machine was: on two cores the broker, the flow and the bench's own
    producer and reader share it."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = pids
        self.start = {name: _tree_cpu(pid) for name, pid in pids.items()}
        self.own = time.process_time()
        self.machine = _machine_busy()
        self.t0 = time.monotonic()

    def report(self) -> str:
        wall = time.monotonic() - self.t0
        used = {n: (_tree_cpu(p) - self.start[n]) / wall * 100 for n, p in self.pids.items()}
        used["bench"] = (time.process_time() - self.own) / wall * 100
        busy, total = _machine_busy()
        machine = (busy - self.machine[0]) / max(total - self.machine[1], 1e-9) * 100
        parts = [f"{name} {pct:.0f}% of a core" for name, pct in used.items()]
        return ", ".join(parts) + f"; machine {machine:.0f}% busy"


def _orders(count: int, rng: random.Random, start: int) -> list[PlaceOrder]:
    """A mix around a mid price: two thirds rest near the touch, a third crosses."""
    markets = load_markets()
    orders = []
    for i in range(count):
        symbol = "BTC-USDT" if rng.random() < 0.6 else "ETH-USDT"
        market = markets.market(symbol)
        mid = (50_000 if symbol == "BTC-USDT" else 3_000) * market.quote.scale // market.tick
        side: Side = "buy" if rng.random() < 0.5 else "sell"
        crossing = rng.random() < 0.33
        offset = rng.randint(0, 15) * (1 if crossing else -1) * (1 if side == "buy" else -1)
        orders.append(
            PlaceOrder(
                user_id=f"user{rng.randrange(USERS)}",
                order_id=f"o{start + i}",
                client_order_id=f"c{start + i}",
                market=symbol,
                side=side,
                type="limit",
                price=(mid + offset) * market.tick,
                quantity=rng.randint(1, 20) * market.min_quantity,
                time_in_force="IOC" if crossing and rng.random() < 0.5 else "GTC",
                ts=0,
            )
        )
    return orders


_NEW = b'"status":"NEW"'


class _TradeSeen(msgspec.Struct):
    """The one field of a trade the watcher needs: decoding only that keeps the bench's
    own reading (which shares the machine) from weighing on the exchange."""

    taker_order_id: str


class _Watcher(threading.Thread):
    """Reads the orders and trades topics; notes when each order's states and trades land."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            consumer_config(settings, **{"group.id": "bench-watch", "fetch.wait.max.ms": 10})
        )
        names = [
            topics.topic_name(t, settings.topic_prefix)
            for t in (topics.ORDERS, topics.TRADES, topics.TRANSFERS)
        ]
        self.consumer.assign([TopicPartition(n, p, 0) for n in names for p in range(PARTITIONS)])
        self.first_state: dict[str, int] = {}
        self.final: dict[str, int] = {}
        self.first_trade: dict[str, int] = {}
        self.transfers = 0
        self.stop = threading.Event()
        self._trades = msgspec.json.Decoder(_TradeSeen).decode

    def run(self) -> None:
        while not self.stop.is_set():
            # Each record as soon as it arrives: a batch consume waits for 5,000 or
            # the whole timeout, and would stamp early records up to 100 ms late.
            for record in consume_now(self.consumer, 5000, 0.1):
                if record.error():
                    continue
                now = _now_ms()
                topic, value = record.topic() or "", record.value() or b""
                if topic.endswith(topics.ORDERS):
                    # Keyed by order id; only NEW or not matters here, and msgspec writes
                    # it as exactly this: no decode per record (the watcher shares the
                    # two cores with what it measures).
                    order_id = (record.key() or b"").decode()
                    self.first_state.setdefault(order_id, now)
                    if _NEW not in value:
                        self.final.setdefault(order_id, now)
                elif topic.endswith(topics.TRADES):
                    trade = self._trades(value)
                    self.first_trade.setdefault(trade.taker_order_id, now)
                else:
                    self.transfers += 1
        self.consumer.close()

    def wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = 0.0
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not finish in {timeout:.0f} s")
            if time.monotonic() - last > 5:
                _say(f"    ... {what}: {len(self.final)} orders final")
                last = time.monotonic()
            time.sleep(0.02)


class _Sender:
    """Writes commands as the API does (keyed records on the wallet inbox), as cheaply as
    it can: the bench shares the two cores with what it measures. One encoder for the run
    and a ``poll`` every ``_POLL_EVERY`` records: it built the encoder for each order
    (3 us, timeit) and polled after each, and the bench used 45% of a core where it now
    uses about a third."""

    def __init__(self, producer: Producer, settings: Settings) -> None:
        self.producer = producer
        self.encode = schema.record_encoder(settings.topic_prefix)
        self.unpolled = 0

    def send(self, messages: Sequence[Message]) -> None:
        producer, encode = self.producer, self.encode
        for message in messages:
            topic, key, value = encode(message)
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
        self.unpolled += len(messages)
        if self.unpolled >= _POLL_EVERY:
            self.unpolled = 0
            producer.poll(0)

    def stamped(self, orders: list[PlaceOrder]) -> list[Message]:
        """Send each order stamped with the time it is handed to the producer, as the API
        stamps a command."""
        stamped: list[Message] = []
        for order in orders:
            one = msgspec.structs.replace(order, ts=_now_ms())
            self.send((one,))
            stamped.append(one)
        return stamped


_POLL_EVERY = 256
"""Records between two ``poll`` calls of the bench's producer (only failures report)."""


def bench_baseline(
    settings: Settings, items: int, logs: Path, broker_pid: int | None, tag: str = "baseline"
) -> float:
    names = {x: f"{tag}.{x}" for x in "abc"}
    admin = kafka_admin(settings)
    for future in admin.create_topics(
        [NewTopic(n, PARTITIONS, 1) for n in names.values()]
    ).values():
        future.result()
    # A created topic is not yet known to every listener: the flow's first metadata
    # request would fail with "unknown topic" (Kafka in KRaft mode).
    topics._wait_for_leaders(admin, list(names.values()), 30)
    env = settings_env(settings) | {f"BASELINE_{k.upper()}": v for k, v in names.items()}
    env["CRYPTON_KAFKA_BOOTSTRAP"] = settings.bootstrap_servers
    flow = Child(
        "baseline",
        [sys.executable, "-m", "bytewax.run", "loadtest.baseline_flow:flow"],
        logs / f"{tag}.log",
        env=env,
        cwd=ROOT,
    ).start()
    consumer = Consumer(consumer_config(settings, **{"group.id": "bench-baseline"}))
    consumer.assign([TopicPartition(names["c"], p, 0) for p in range(PARTITIONS)])
    producer = Producer(producer_config(settings))
    try:
        producer.produce(names["a"], b"warm-up", b"k0")
        producer.flush(10)
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 1:
            seen += sum(1 for r in consumer.consume(100, 0.2) if not r.error())
            if time.monotonic() > deadline:
                raise TimeoutError("the baseline flow never answered")
        cpu = _Cpu(broker=broker_pid, dataflow=flow.pid)
        start = time.monotonic()
        for i in range(items):
            producer.produce(names["a"], b"x" * 100, f"k{i % 1000}".encode())
            producer.poll(0)
        producer.flush(30)
        seen = 0
        while seen < items:
            # As the exchange's watcher reads: the last item counts when it arrives.
            seen += sum(1 for r in consume_now(consumer, 5000, 0.2) if not r.error())
            if time.monotonic() - start > 600:
                raise TimeoutError("the baseline did not finish in 600 s")
        elapsed = time.monotonic() - start
        rate = items / elapsed
        _say(
            f"  {tag}: {items} items A->B->C in {elapsed:.1f} s = {rate:,.0f} items/s"
            f" ({cpu.report()})"
        )
        return rate
    finally:
        consumer.close()
        flow.stop(grace=5)


def bench_exchange(
    settings: Settings,
    count: int,
    rate: int,
    seconds: int,
    logs: Path,
    broker_pid: int | None,
) -> dict[str, Any]:
    recovery = ensure_recovery_store(settings, 1)  # as `crypton dataflow` makes it
    metrics_port = free_port()
    flow = Child(
        "dataflow",
        [
            sys.executable,
            "-m",
            "bytewax.run",
            "dataflows.exchange:flow",
            "-r",
            str(recovery),
            "-s",
            str(settings.snapshot_seconds),
            "-b",
            "0",
        ],
        logs / "dataflow.log",
        env=settings_env(settings) | {"CRYPTON_DATAFLOW_METRICS_PORT": str(metrics_port)},
        cwd=ROOT,
    ).start()
    watcher = _Watcher(settings)
    watcher.start()
    sender = _Sender(Producer(producer_config(settings)), settings)
    producer = sender.producer
    rng = random.Random(2024)
    results: dict[str, Any] = {}
    try:
        funding = [
            Credit(user_id=f"user{u}", asset=a, amount=10**15, transfer_id=f"fund-{a}", ts=0)
            for u in range(USERS)
            for a in ("BTC", "ETH", "USDT")
        ]
        sender.send(funding)
        producer.flush(30)
        watcher.wait(lambda: watcher.transfers >= len(funding), 120, "funding")

        orders = _orders(count, rng, 0)
        cpu = _Cpu(broker=broker_pid, dataflow=flow.pid)
        closes = _Closes(metrics_port)
        start_ms = _now_ms()
        stamped = sender.stamped(orders)
        producer.flush(30)
        sent_s = (_now_ms() - start_ms) / 1000
        ids = [o.order_id for o in orders]
        watcher.wait(
            lambda: all(i in watcher.final for i in ids[-50:]) and len(watcher.final) >= count,
            900,
            "full speed",
        )
        end_ms = max(watcher.final[i] for i in ids)
        results["orders_per_s"] = count / ((end_ms - start_ms) / 1000)
        _say(
            f"  exchange, full speed: {count} orders final in {(end_ms - start_ms) / 1000:.1f} s"
            f" = {results['orders_per_s']:,.0f} orders/s, all sent in {sent_s:.1f} s"
            f" ({cpu.report()})"
        )
        full = _latency("full speed", stamped, watcher)
        results["full_speed"] = {k: v for k, v in full.items() if not k.endswith("_ms")}
        line, results["full_speed"]["closes"] = closes.report()
        _say(line)

        paced = _orders(rate * seconds, rng, count)
        sent: list[Message] = []
        cpu = _Cpu(broker=broker_pid, dataflow=flow.pid)
        closes = _Closes(metrics_port)
        begin = time.monotonic()
        for i, order in enumerate(paced):
            target = begin + i / rate
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            sent.extend(sender.stamped([order]))
        producer.flush(30)
        watcher.wait(lambda: all(o.order_id in watcher.final for o in paced), 300, "paced")
        _say(f"  exchange, paced at {rate}/s for {seconds} s ({cpu.report()})")
        results.update(_latency(f"paced {rate}/s", sent, watcher))
        line, results["paced_closes"] = closes.report()
        _say(line)
        return results
    finally:
        watcher.stop.set()
        flow.stop(grace=5)


_CLOSES = (
    "crypton_dataflow_epoch_snapshot_seconds",
    "crypton_dataflow_snapshot_bytes",
    "crypton_dataflow_base_bytes",
    "crypton_dataflow_idle_bases",
    "crypton_dataflow_idle_base_seconds",
)


class _Closes:
    """What the epoch closes of one phase cost, read from the dataflow's metrics."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        text = metrics_text(self.port)
        sums: dict[str, float] = {}
        for step in ("wallet", "book"):
            for prefix in _CLOSES:
                found = metric_sums([text], prefix, where=f'step="{step}"')
                sums |= {f"{step}:{name}": value for name, value in found.items()}
        return sums

    def report(self) -> tuple[str, dict[str, Any]]:
        after = self._read()
        delta = {k: v - self.before.get(k, 0.0) for k, v in after.items()}
        result: dict[str, Any] = {}
        parts = []
        for step in ("wallet", "book"):
            mine = {k.split(":", 1)[1]: v for k, v in delta.items() if k.startswith(step + ":")}
            closes = int(mine.get(_CLOSES[0] + "_count", 0))
            largest = histogram_quantile(mine, _CLOSES[0], 1.0) if closes else None
            median = histogram_quantile(mine, _CLOSES[0], 0.5) if closes else None
            result[step] = {
                "closes": closes,
                "snapshot_ms": 1000 * mine.get(_CLOSES[0] + "_sum", 0.0),
                "median_close_ms_at_most": None if median is None else 1000 * median,
                "largest_close_ms_at_most": None if largest is None else 1000 * largest,
                "snapshot_bytes": mine.get(_CLOSES[1] + "_total", 0.0),
                "base_bytes": mine.get(_CLOSES[2] + "_total", 0.0),
                "idle_bases": int(mine.get(_CLOSES[3] + "_total", 0.0)),
                "idle_base_ms": 1000 * mine.get(_CLOSES[4] + "_total", 0.0),
            }
            r = result[step]
            bound = (
                ""
                if largest is None or median is None
                else f", median <= {1000 * median:g} ms, largest <= {1000 * largest:g} ms"
            )
            parts.append(
                f"{step} {closes} in {r['snapshot_ms']:.0f} ms{bound},"
                f" {r['snapshot_bytes'] / 1e6:.2f} MB to the store,"
                f" {r['base_bytes'] / 1e6:.2f} MB of bases"
                f" ({r['idle_bases']} taken idle, in {r['idle_base_ms']:.0f} ms)"
            )
        return "    epoch closes (snapshot()): " + "; ".join(parts), result


def _latency(label: str, sent: list[Any], watcher: _Watcher) -> dict[str, Any]:
    first = [
        watcher.first_state[o.order_id] - o.ts for o in sent if o.order_id in watcher.first_state
    ]
    trade = [
        watcher.first_trade[o.order_id] - o.ts for o in sent if o.order_id in watcher.first_trade
    ]
    q = {
        f"{name}_p{round(100 * at)}": report.percentile(values, at)
        for name, values in (("first", first), ("trade", trade))
        for at in (0.5, 0.99)
    }
    _say(
        f"    latency {label}: first state p50 {q['first_p50']:.0f} ms,"
        f" p99 {q['first_p99']:.0f} ms; trade p50 {q['trade_p50']:.0f} ms,"
        f" p99 {q['trade_p99']:.0f} ms ({len(trade)} taker orders traded)"
    )
    return {
        **q,
        "first_state_ms": sorted(first),
        "trade_ms": sorted(trade),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    # 100,000: at 20,000 each phase lasted under two seconds on Kafka and measured the
    # pipeline's start (its first hops) more than its throughput.
    parser.add_argument("--orders", type=int, default=100_000, help="orders at full speed")
    parser.add_argument(
        "--baseline-items",
        type=int,
        default=None,
        help="items through the baseline loop (default: --orders)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="items through a first, untimed baseline loop, so both are timed on a warm broker",
    )
    parser.add_argument(
        "--snapshot-seconds",
        type=int,
        default=Settings().snapshot_seconds,
        help="the dataflow's epoch (default: CRYPTON_SNAPSHOT_SECONDS's default)",
    )
    parser.add_argument("--rate", type=int, default=500, help="paced orders/s")
    parser.add_argument("--seconds", type=int, default=10, help="paced phase length")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="crypton-bench-"))
    settings = Settings(
        data_dir=data,
        broker=args.broker,
        kafka_port=free_ports(2),
        topic_prefix="bench.",
        partitions=PARTITIONS,
        snapshot_seconds=args.snapshot_seconds,
    )
    _say(f"bench_pipeline on {args.broker} (127.0.0.1:{settings.kafka_port}), data in {data}")
    broker = EmbeddedBroker(settings, data / "logs" / "broker.log").start()
    try:
        broker.wait_ready(60)
        topics.ensure_topics(settings)
        logs = data / "logs"
        if args.warmup:
            bench_baseline(settings, args.warmup, logs, broker.pid, tag="warm-up")
        baseline = bench_baseline(settings, args.baseline_items or args.orders, logs, broker.pid)
        result = bench_exchange(settings, args.orders, args.rate, args.seconds, logs, broker.pid)
        _say(
            f"  ratio: exchange orders/s / baseline items/s = "
            f"{result['orders_per_s'] / baseline:.2f}"
        )
    finally:
        broker.stop(grace=5)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    result["baseline_items_per_s"] = baseline
    result["ratio"] = result["orders_per_s"] / baseline
    params = {
        "orders": args.orders,
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "snapshot_seconds": settings.snapshot_seconds,
    }
    report.write_json(
        args.out,
        "bench_pipeline",
        result,
        broker=report.broker_label(args.broker),
        parameters=params,
    )
    if args.plot:
        _plot(result, args.broker, args.rate, args.out)
    return 0


def _plot(result: dict[str, Any], broker: str, rate: int, out: Path) -> None:
    """The paced latency CDF, and the exchange's throughput beside the baseline loop's."""
    plt = report.plotting()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("first_state_ms", "command → first state"),
        ("trade_ms", "command → trade"),
    ):
        if result[key]:
            xs, ys = report.cdf(result[key])
            ax.plot(xs, ys, label=f"{label} (p99 {report.percentile(result[key], 0.99):.0f} ms)")
    ax.set(xlabel="latency (ms)", ylabel="fraction of orders", xscale="log")
    ax.set_title(f"pipeline latency paced at {rate} orders/s ({broker})")
    ax.legend()
    report.footer(fig, report.broker_label(broker))
    report.save(fig, out, "bench_pipeline_latency")

    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["baseline loop\n(items/s)", "exchange\n(orders/s to final state)"]
    values = [result["baseline_items_per_s"], result["orders_per_s"]]
    bars = ax.bar(names, values, color=["0.6", "#4e9af1"])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    ax.set(ylabel="per second")
    ax.set_title(f"throughput on {broker}: ratio {result['ratio']:.2f}")
    report.footer(fig, report.broker_label(broker))
    report.save(fig, out, "bench_pipeline_throughput")


if __name__ == "__main__":
    sys.exit(main())
