"""Benchmark of the API's own costs: acknowledged writes and read-model start-up.

    python -m loadtest.bench_api [--broker kafka|tansu] [--orders 2000] [--records 200000]

Starts an embedded broker and the API (uvicorn) on free loopback ports in a
temporary directory, then prints:

- ``api ack``: latency of ``POST /v1/orders`` answered 202 once the broker has
  acknowledged the command (``acks=all``), one client, sequential requests;
- ``read model``: seconds from the API's launch until ``/ready`` after ``--records``
  order records (plus trades and balances) were written to the state topics.

No dataflow runs: the orders are written to the wallet inbox and stay there.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer

from crypton import codec, topics
from crypton.broker import EmbeddedBroker
from crypton.cli import api_command
from crypton.config import Settings
from crypton.domain.messages import Balance, BalanceState, OrderState, OrderStatus, Trade
from crypton.kafka import producer_config
from crypton.process import Child, free_port, free_ports, settings_env
from loadtest import report

TOKEN = "bench-admin-token"


def _say(line: str) -> None:
    print(line, flush=True)


def start_api(
    settings: Settings, logs: Path, *, timeout: float = 300, bench: str = "bench_api"
) -> tuple[Child, str, float]:
    """Launch the API without rate limits; return it, its URL and the seconds until
    ``/ready`` answered 200 (``bench`` names the benchmark in errors)."""
    # One client measured back to back: the API's per-key rate limit would only add 429s.
    env = settings_env(settings) | {"CRYPTON_ADMIN_TOKEN": TOKEN, "CRYPTON_RATE_LIMIT": "0"}
    port = free_port()
    child = Child(
        "api", [*api_command(Settings(api_port=port)), "--log-level", "warning"],
        logs / f"api-{port}.log", env=env,
    ).start()  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=2) as client:
        while True:
            if child.poll() is not None:
                raise SystemExit(f"{bench}: the API exited: {child.tail(3)}")
            try:
                if client.get("/ready").status_code == 200:
                    return child, url, time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout:
                child.stop(5)
                raise SystemExit(f"{bench}: the API was not ready within {timeout:g} s")
            time.sleep(0.02)


def _ack_latency(url: str, orders: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=30) as admin:
        admin.headers["Authorization"] = f"Bearer {TOKEN}"
        made = admin.post("/v1/admin/users", json={"user_id": "bench"})
        made.raise_for_status()
        key = made.json()["api_key"]
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        for i in range(orders + 100):
            body = {
                "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1000",
                "quantity": "0.1", "client_order_id": f"b{i}",
            }  # fmt: skip
            began = time.perf_counter()
            response = client.post("/v1/orders", json=body)
            took = time.perf_counter() - began
            if response.status_code != 202:
                raise SystemExit(
                    f"bench_api: order answered {response.status_code}: {response.text}"
                )
            if i >= 100:  # the first hundred warm the connection and the producer
                latencies.append(took)
            if i and i % 500 == 0:
                _say(f"  {i} orders sent")
    return latencies


def write_state_log(settings: Settings, records: int) -> None:
    """Write ``records`` order records to the state topics as the dataflow would (each
    order OPEN then FILLED, 1,000 users), plus a trade and a balance every tenth order:
    the log a restarted API's read model folds. Also used by ``tests/api/test_startup.py``.
    """
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    orders = topics.topic_name(topics.ORDERS, settings.topic_prefix)
    trades = topics.topic_name(topics.TRADES, settings.topic_prefix)
    balances = topics.topic_name(topics.BALANCES, settings.topic_prefix)

    def send(topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.05)

    for i in range(records // 2):
        user = f"user{i % 1000}"
        oid = f"order-{i}"
        steps: tuple[tuple[int, OrderStatus], ...] = ((1, "OPEN"), (2, "FILLED"))
        for version, status in steps:
            state = OrderState(
                order_id=oid, user_id=user, client_order_id=f"c-{oid}", market="BTC-USDT",
                side="buy", type="limit", price=100, quantity=1, funds=None,
                time_in_force="GTC", post_only=False, stp="expire_taker", status=status,
                created_at=i, updated_at=i + version, version=version,
            )  # fmt: skip
            send(orders, oid, codec.encode(state))
        if i % 10 == 0:
            seq = i // 10 + 1
            executed = Trade(
                market="BTC-USDT", seq=seq, price=100, quantity=1, notional=0,
                taker_side="buy", maker_order_id="m", taker_order_id="t",
                maker_user_id="alice", taker_user_id="bob", maker_fee=1, taker_fee=2,
                buyer_release=0, time=i * 100,
            )  # fmt: skip
            send(trades, "BTC-USDT", codec.encode(executed))
            state_of_user = BalanceState(
                user_id=user, version=i + 1, balances={"BTC": Balance(i, 0)}, ts=i
            )
            send(balances, user, codec.encode(state_of_user))
        if i and i % 50_000 == 0:
            _say(f"  {2 * i} order records written")
    if producer.flush(120) != 0:
        raise SystemExit("bench_api: the broker did not acknowledge every record")


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_api", description=__doc__)
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="crypton-bench-api-"))
    settings = Settings(
        data_dir=data, broker=args.broker, kafka_port=free_ports(2), topic_prefix="bench."
    )
    broker = EmbeddedBroker(settings, say=_say)
    api: Child | None = None
    try:
        broker.start().wait_ready(120)
        _say(f"bench_api on {broker.ready_line()}")
        topics.ensure_topics(settings)
        api, url, _ = start_api(settings, data / "logs")
        latencies = _ack_latency(url, args.orders)
        _say(
            f"api ack ({args.broker}): {len(latencies)} orders, p50 {_ms(latencies, 0.5):.1f} ms,"
            f" p99 {_ms(latencies, 0.99):.1f} ms, mean {1000 * statistics.fmean(latencies):.1f} ms"
        )
        api.stop(5)
        _say(f"writing {args.records} order records to the state topics")
        write_state_log(settings, args.records)
        api, url, ready = start_api(settings, data / "logs")
        _say(
            f"read model ({args.broker}): ready {ready:.2f}s after launch"
            f" over {args.records} order records"
        )
        results = {
            "ack_ms": {q: _ms(latencies, f) for q, f in (("p50", 0.5), ("p99", 0.99))},
            "ack_mean_ms": 1000 * statistics.fmean(latencies),
            "readmodel_ready_s": ready,
            "ack_latencies_ms": sorted(1000 * x for x in latencies),
        }
        params = {"orders": args.orders, "records": args.records}
        report.write_json(
            args.out,
            "bench_api",
            results,
            broker=report.broker_label(args.broker),
            parameters=params,
        )
        if args.plot:
            _plot(results, args.broker, args.out)
        return 0
    finally:
        if api is not None:
            api.stop(5)
        broker.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def _plot(results: dict[str, Any], broker: str, out: Path) -> None:
    """CDF of the acknowledged-write latency of ``POST /v1/orders``."""
    plt = report.plotting()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = report.cdf(results["ack_latencies_ms"])
    ax.plot(
        xs,
        ys,
        label=f"p50 {results['ack_ms']['p50']:.1f} ms, p99 {results['ack_ms']['p99']:.1f} ms",
    )
    ax.set(xlabel="POST /v1/orders until 202 (ms)", ylabel="fraction of requests", xscale="log")
    ax.set_title(f"API acknowledged writes ({broker}, acks=all)")
    ax.legend()
    report.footer(fig, report.broker_label(broker))
    report.save(fig, out, "bench_api")


if __name__ == "__main__":
    sys.exit(main())
