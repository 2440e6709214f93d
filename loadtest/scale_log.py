"""The state and the load of ``bench_scale``, written to the log as the API would write
them (same partitioner and codecs), and a watcher of what the dataflow decided."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from crypton import schema, topics
from crypton.config import Settings, load_markets, packaged_markets_text
from crypton.domain.markets import Markets
from crypton.domain.messages import Credit, Message, PlaceOrder, Side
from crypton.kafka import consume_now, consumer_config, producer_config

__all__ = [
    "MARKET",
    "TRADERS",
    "Watcher",
    "Writer",
    "fund",
    "now_ms",
    "resting_orders",
    "stamp",
    "trading_orders",
    "write_markets",
    "write_order_history",
]

TRADERS = 200
MARKET = "BTC-USDT"

_LISTING = """
[markets.{symbol}]
tick = "0.01"
step = "0.0001"
min_quantity = "0.0001"
min_notional = "5"
maker_fee_bps = 10
taker_fee_bps = 20
"""


def write_markets(path: Path, count: int) -> tuple[str, ...]:
    """A markets file with ``count`` markets quoted in USDT (at least the packaged ones):
    the packaged file, then listings ``M1-USDT``, ``M2-USDT``... like BTC-USDT, each with
    its own base asset. Returns the USDT markets' symbols, BTC-USDT first."""
    text = packaged_markets_text()
    packaged = [m.symbol for m in load_markets() if m.quote.code == "USDT"]
    extra = [f"M{n}" for n in range(1, count - len(packaged) + 1)]
    assets = "".join(f"{asset} = 8\n" for asset in extra)
    text = text.replace("[assets]\n", "[assets]\n" + assets, 1)
    text += "".join(_LISTING.format(symbol=f"{asset}-USDT") for asset in extra)
    path.write_text(text)
    symbols = [m.symbol for m in load_markets(path) if m.quote.code == "USDT"]
    return (MARKET, *(s for s in symbols if s != MARKET))


def _say(line: str) -> None:
    print(line, flush=True)


def now_ms() -> int:
    """Wall-clock milliseconds, as the API stamps commands."""
    return time.time_ns() // 1_000_000


class Writer:
    """Commands to the wallet inbox with the exchange's partitioner and codecs."""

    def __init__(self, settings: Settings) -> None:
        self.encode = schema.record_encoder(settings.topic_prefix)
        self.producer = Producer(producer_config(settings, **{"linger.ms": 5}))

    def send(self, messages: Iterable[Message]) -> int:
        sent = 0
        for message in messages:
            topic, key, value = self.encode(message)
            while True:
                try:
                    self.producer.produce(topic, value, key)
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.producer.poll(0)
            sent += 1
        return sent

    def flush(self) -> None:
        if self.producer.flush(120) != 0:
            raise SystemExit("bench_scale: the broker did not acknowledge every command")


class Watcher(threading.Thread):
    """Reads the orders and transfers topics from their ends at creation: when each
    order left NEW (rests, traded, rejected: the wallet and the book decided it), when
    each transfer was decided."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            consumer_config(settings, **{"group.id": "bench-scale", "fetch.wait.max.ms": 5})
        )
        assignment = []
        for logical in (topics.ORDERS, topics.TRANSFERS):
            name = topics.topic_name(logical, settings.topic_prefix)
            for p in range(settings.partitions):
                assignment.append(TopicPartition(name, p, self._end(name, p)))
        self.consumer.assign(assignment)
        self.final: dict[str, int] = {}
        self.transfers: dict[str, int] = {}
        self.stop = threading.Event()
        self.start()

    def _end(self, topic: str, partition: int) -> int:
        """The high watermark, asked again while a new topic has no leader yet."""
        deadline = time.monotonic() + 60
        while True:
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
                return int(high)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def run(self) -> None:
        orders = schema.ORDERS.decode
        transfers = schema.TRANSFERS.decode
        while not self.stop.is_set():
            # Stamped as each record arrives: consume(n, t) would hold it for up to t.
            for record in consume_now(self.consumer, 5000, 0.05):
                if record.error():
                    continue
                now = now_ms()
                value = record.value() or b""
                if (record.topic() or "").endswith(topics.ORDERS):
                    state = orders(value)
                    if state.status != "NEW":  # decided: resting, filled, rejected...
                        self.final.setdefault(state.order_id, now)
                else:
                    transfer = transfers(value)
                    self.transfers.setdefault(transfer.transfer_id + "@" + transfer.user_id, now)
        self.consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.join(10)

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit(f"bench_scale: {what} did not finish in {timeout:.0f} s")
            if time.monotonic() - last > 10:
                _say(f"    ... {what}: {len(self.transfers)} transfers, {len(self.final)} orders")
                last = time.monotonic()
            time.sleep(0.05)


def fund(users: Iterable[str], assets: dict[str, int], ts: int) -> Iterable[Credit]:
    for user in users:
        for asset, amount in assets.items():
            yield Credit(
                user_id=user, asset=asset, amount=amount, transfer_id=f"fund-{asset}", ts=ts
            )


def resting_orders(count: int, ts: int) -> list[PlaceOrder]:
    """One buy per idle user, far under the market (it rests, it never trades)."""
    market = load_markets().market(MARKET)
    low = 1_000 * market.quote.scale // market.tick  # ticks at 1,000 USDT; the market is 50,000
    return [
        PlaceOrder(
            user_id=f"u{n}",
            order_id=f"rest-{n}",
            client_order_id=f"rest-{n}",
            market=MARKET,
            side="buy",
            type="limit",
            price=(low + n % 5_000) * market.tick,
            quantity=market.min_quantity * 100,
            ts=ts,
        )
        for n in range(count)
    ]


def trading_orders(
    count: int,
    rng: random.Random,
    tag: str,
    markets: Markets | None = None,
    symbols: Sequence[str] = (MARKET,),
) -> list[PlaceOrder]:
    """Limit orders of the traders around 50,000: two thirds rest near the touch, a
    third cross (half of those IOC), as ``bench_pipeline`` sends; each on one of
    ``symbols`` drawn at random (all priced alike)."""
    specs = [(markets or load_markets()).market(symbol) for symbol in symbols]
    out = []
    for i in range(count):
        market = specs[rng.randrange(len(specs))] if len(specs) > 1 else specs[0]
        mid = 50_000 * market.quote.scale // market.tick
        side: Side = "buy" if rng.random() < 0.5 else "sell"
        crossing = rng.random() < 0.33
        offset = rng.randint(0, 15) * (1 if crossing else -1) * (1 if side == "buy" else -1)
        out.append(
            PlaceOrder(
                user_id=f"t{rng.randrange(TRADERS)}", order_id=f"{tag}-{i}",
                client_order_id=f"{tag}-{i}", market=market.symbol, side=side, type="limit",
                price=(mid + offset) * market.tick,
                quantity=rng.randint(1, 20) * market.min_quantity,
                time_in_force="IOC" if crossing and rng.random() < 0.5 else "GTC", ts=0,
            )
        )  # fmt: skip
    return out


def stamp(order: PlaceOrder) -> PlaceOrder:
    """The order with the time it is handed to the producer, as the API stamps it."""
    return msgspec.structs.replace(order, ts=now_ms())


def write_order_history(settings: Settings, orders: int) -> None:
    """``orders`` lifetime orders on the state topics, each OPEN then FILLED (with a trade
    and a balance every tenth), as the API's read model finds them after a restart.

    The writer is ``loadtest.bench_api.write_state_log`` (one writer of that log for the
    benchmarks and the start-up test); replace this function if its shape changes.
    """
    from loadtest.bench_api import write_state_log  # noqa: PLC0415 - only this phase

    write_state_log(settings, 2 * orders)


# --- the phases ------------------------------------------------------------------------------
