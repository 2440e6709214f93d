"""Benchmark of the API's read model at scale: cold build, restart, memory, read latency.

    python -m loadtest.bench_readmodel [--users 100000] [--orders 1000000] [--broker kafka]

Starts an embedded broker in a temporary directory, writes straight to the state
topics (pre-encoded with ``crypton.schema``'s encoders, no HTTP, no dataflow) a
balance for each of ``--users`` users and ``--orders`` lifetime orders (each its
final record; one in a hundred still open), a trade every tenth order, then
starts the API (uvicorn) three times and prints:

- ``cold build``: launch until ``/ready`` with no view file (the whole log folded);
- ``restart``: launch until ``/ready`` on the view the previous run left;
- ``rss``: the API's resident memory once ready after the restart;
- ``GET /v1/orders/{id}`` of an order from the start of the log, and
  ``GET /v1/balances``: p50 and p99 over ``--requests`` sequential requests.

The defaults run in about three minutes on a 2-core machine; the goal is
``--users 1000000 --orders 10000000``: restart ready <= 5 s, <= 2 GB resident.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer

from crypton import schema, topics
from crypton.broker import EmbeddedBroker
from crypton.config import Settings
from crypton.domain.messages import Balance, BalanceState, OrderState, OrderStatus, Trade
from crypton.kafka import producer_config
from crypton.process import Child, free_ports
from loadtest import report
from loadtest.bench_api import TOKEN, _ms, _say, start_api

BENCH_USER = "bench"
"""The user the latency is measured as: one order in a thousand is theirs."""
OPEN_EVERY = 100
TRADE_EVERY = 10
_T0 = 1_700_000_000_000


def write_scale_log(settings: Settings, users: int, orders: int) -> list[str]:
    """Write the balances of ``users`` users and ``orders`` lifetime orders (plus trades)
    to the state topics; return the ids of ``BENCH_USER``'s orders, oldest first."""
    producer = Producer(
        producer_config(
            settings,
            **{"linger.ms": 50, "batch.size": 1_000_000, "compression.type": "lz4"},
        )
    )
    encode = schema.record_encoder(settings.topic_prefix)

    def send(message: OrderState | BalanceState | Trade) -> None:
        topic, key, value = encode(message)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                return
            except BufferError:
                producer.poll(0.05)

    began = time.monotonic()
    for i in range(users):
        send(
            BalanceState(
                user_id=f"u{i}", version=1 + i % 7, ts=_T0,
                balances={"BTC": Balance(10**8 + i, 0), "USDT": Balance(10**10, i % 1000)},
            )
        )  # fmt: skip
        if i % 10_000 == 0:
            producer.poll(0)
    send(BalanceState(user_id=BENCH_USER, version=1, ts=_T0, balances={"BTC": Balance(1, 0)}))
    _say(f"  {users} balances in {time.monotonic() - began:.1f}s")
    mine: list[str] = []
    for i in range(orders):
        user = BENCH_USER if i % 1000 == 0 else f"u{i % max(users, 1)}"
        oid = f"o{i:09d}"
        if user == BENCH_USER:
            mine.append(oid)
        status: OrderStatus = "OPEN" if i % OPEN_EVERY == 1 else "FILLED"
        at = _T0 + i
        send(
            OrderState(
                oid, user, f"c{i}", "BTC-USDT", "buy" if i % 2 else "sell", "limit",
                100 + i % 50, 1000, None, "GTC", False, "expire_taker", status, at, at + 1,
                1 if status == "OPEN" else 3,
            )
        )  # fmt: skip
        if i % TRADE_EVERY == 0:
            send(
                Trade(
                    market="BTC-USDT", seq=i // TRADE_EVERY + 1, price=100 + i % 50,
                    quantity=1000, notional=(100 + i % 50) * 1000, taker_side="buy",
                    maker_order_id=oid, taker_order_id=f"o{i + 1:09d}",
                    maker_user_id=user, taker_user_id=f"u{(i + 1) % max(users, 1)}",
                    maker_fee=1, taker_fee=2, buyer_release=0,
                    # Spread over the last days, so candles and tickers have work.
                    time=int(time.time() * 1000) - (orders - i) * 10,
                )
            )  # fmt: skip
        if i % 10_000 == 0:
            producer.poll(0)
        if i and i % 1_000_000 == 0:
            _say(f"  {i} orders in {time.monotonic() - began:.1f}s")
    if producer.flush(600) != 0:
        raise SystemExit("bench_readmodel: the broker did not acknowledge every record")
    _say(f"  log written in {time.monotonic() - began:.1f}s")
    return mine


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn runs the app in-process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _latencies(url: str, key: str, path: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        for i in range(n + 50):
            began = time.perf_counter()
            response = client.get(path)
            took = time.perf_counter() - began
            if response.status_code != 200:
                raise SystemExit(f"bench_readmodel: {path} answered {response.status_code}")
            if i >= 50:
                out.append(took)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_readmodel", description=__doc__)
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds an API start may take to be ready"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="crypton-bench-readmodel-"))
    settings = Settings(
        data_dir=data, broker=args.broker, kafka_port=free_ports(2), topic_prefix="bench.",
        partitions=args.partitions,
    )  # fmt: skip
    broker = EmbeddedBroker(settings, say=_say)
    api: Child | None = None
    try:
        broker.start().wait_ready(120)
        _say(f"bench_readmodel on {broker.ready_line()}")
        topics.ensure_topics(settings)
        api, url, _ = start_api(settings, data / "logs", timeout=120, bench="bench_readmodel")
        with httpx.Client(base_url=url, timeout=30) as admin:
            admin.headers["Authorization"] = f"Bearer {TOKEN}"
            made = admin.post("/v1/admin/users", json={"user_id": BENCH_USER})
            made.raise_for_status()
            key = made.json()["api_key"]
        api.stop(5)
        _say(f"writing {args.users} balances and {args.orders} orders to the state topics")
        began = time.monotonic()
        mine = write_scale_log(settings, args.users, args.orders)
        produced = time.monotonic() - began
        shutil.rmtree(data / "readmodel")  # a cold build: no view yet
        api, url, cold = start_api(
            settings, data / "logs", timeout=args.timeout, bench="bench_readmodel"
        )
        _say(f"cold build: ready {cold:.2f}s after launch")
        api.stop(10)
        api, url, restart = start_api(
            settings, data / "logs", timeout=args.timeout, bench="bench_readmodel"
        )
        assert api.pid is not None
        rss = _rss_mib(api.pid)
        _say(f"restart: ready {restart:.2f}s after launch, rss {rss:.0f} MiB")
        old = _latencies(url, key, f"/v1/orders/{mine[0]}", args.requests)
        balances = _latencies(url, key, "/v1/balances", args.requests)
        view_bytes = sum(p.stat().st_size for p in (data / "readmodel").iterdir())
        results: dict[str, Any] = {
            "produce_s": produced,
            "cold_build_s": cold,
            "restart_ready_s": restart,
            "rss_mib": rss,
            "get_old_order_ms": {"p50": _ms(old, 0.5), "p99": _ms(old, 0.99)},
            "get_balances_ms": {"p50": _ms(balances, 0.5), "p99": _ms(balances, 0.99)},
            "view_bytes": view_bytes,
        }
        for name in ("get_old_order_ms", "get_balances_ms"):
            q = results[name]
            _say(f"{name}: p50 {q['p50']:.2f} ms, p99 {q['p99']:.2f} ms")
        _say(f"view file: {view_bytes / 2**20:.0f} MiB")
        params = {"users": args.users, "orders": args.orders, "partitions": args.partitions}
        report.write_json(
            args.out, "bench_readmodel", results, broker=report.broker_label(args.broker),
            parameters=params,
        )  # fmt: skip
        return 0
    finally:
        if api is not None:
            api.stop(5)
        broker.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
