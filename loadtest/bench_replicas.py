"""Scale-out through the front door: orders over HTTP with one dataflow process and one
API replica, then two of each, on the same Kafka cluster.

    python -m loadtest.bench_replicas [--nodes 3] [--seconds 20] [--clients 8]

For each topology it starts the exchange as an operator would (``crypton up --nodes N
--dataflow-processes K --api-replicas K``, 16 partitions, in a temporary directory,
on 127.0.0.1), creates and funds ``--users`` traders through the admin API, then has
``--clients`` threads per replica place limit orders (spread over the listed
markets, crossing now and then) for ``--seconds``. It prints the orders the API
acknowledged per second (202, written to Kafka with ``acks=all``), their latency, and
the orders per second that reached a state record on the orders topic (the dataflow
kept up), then the ratio of two of each over one. Everything stops by itself.

``bench_scale`` measures the dataflow processes alone, fed through the log; this one
adds the API replicas and the HTTP clients, all sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from crypton import topics
from crypton.client import ApiError, Client
from crypton.config import Settings
from crypton.kafka import consume_now, consumer_config
from crypton.process import free_ports, settings_env
from loadtest import report
from loadtest.scale_measure import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token"
PARTITIONS = 16
CREDIT = {"BTC": "1000", "ETH": "10000", "USDT": "100000000"}
# (market, mid price, quantity): every order is valid under the packaged market rules.
BOOKS = (("BTC-USDT", 50_000, "0.001"), ("ETH-USDT", 3_000, "0.01"))


def _say(line: str) -> None:
    print(line, flush=True)


class _States(threading.Thread):
    """Reads the orders topic from its end at start: when each order's first state lands."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            consumer_config(settings, **{"group.id": "bench-replicas", "fetch.wait.max.ms": 500})
        )
        name = topics.topic_name(topics.ORDERS, settings.topic_prefix)
        self.consumer.assign([TopicPartition(name, p, OFFSET_END) for p in range(PARTITIONS)])
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for record in consume_now(self.consumer, 5000, 0.1):
                if record.error() is None:
                    self.seen.setdefault((record.key() or b"").decode(), time.monotonic())
        self.consumer.close()


def _cpu_by_kind(root: int) -> dict[str, float]:
    """CPU seconds so far of each kind of child of ``crypton up`` (with their own
    children), and of this process (the HTTP clients)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])
        except (OSError, IndexError):
            continue  # gone meanwhile
    used = {"kafka": 0.0, "dataflow": 0.0, "api": 0.0, "clients": cpu_seconds(os.getpid())}
    for pid in parents:
        child = pid  # the ancestor of pid that is a child of root, if any
        while parents.get(child) not in (root, None, 0, 1):
            child = parents[child]
        if parents.get(child) != root:
            continue
        try:
            line = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        kind = "dataflow" if b"bytewax.run" in line else "api" if b"uvicorn" in line else "kafka"
        used[kind] += cpu_seconds(pid)
    return used


class _Up:
    """``crypton up`` in a child process, its output in a file."""

    def __init__(self, settings: Settings, processes: int, nodes: int, logs: Path) -> None:
        self.settings = settings
        self.out = logs / f"up-{processes}.out"
        env = settings_env(settings) | {
            "CRYPTON_ADMIN_TOKEN": TOKEN,
            "CRYPTON_RATE_LIMIT": "0",
            "CRYPTON_DATAFLOW_METRICS_PORT": str(free_ports(processes)),
        }
        argv = [
            sys.executable, "-m", "crypton.cli", "up", "--nodes", str(nodes),
            "--dataflow-processes", str(processes), "--api-replicas", str(processes),
        ]  # fmt: skip
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.urls = [f"http://127.0.0.1:{settings.api_port + i}" for i in range(processes)]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops everything" not in self.out.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"crypton up exited ({self.proc.returncode}); see {self.out}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"crypton up not ready in {timeout:.0f} s; see {self.out}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def _traders(url: str, count: int, run: str) -> list[str]:
    """``count`` funded users (their API keys), made through the admin API."""
    keys = []
    with Client(url, TOKEN) as admin:
        for i in range(count):
            user = admin.create_user(f"bench-{run}-{i}")
            keys.append(user.api_key)
            for asset, amount in CREDIT.items():
                admin.credit(user.user_id, asset, amount, f"fund-{asset}", wait=True)
    return keys


def _trade(url: str, key: str, index: int, deadline: float, out: dict[str, Any]) -> None:
    """Place orders until ``deadline``: buys and sells around the mid, one in five crossing."""
    acked: list[str] = []
    latencies: list[float] = []
    errors = 0
    n = 0
    with Client(url, key) as client:
        while time.monotonic() < deadline:
            market, mid, quantity = BOOKS[(index + n) % len(BOOKS)]
            side: Literal["buy", "sell"] = "buy" if n % 2 else "sell"
            away = 0 if n % 5 == 0 else 1 + n % 7  # a crossing order now and then
            price = mid - away if side == "buy" else mid + away
            began = time.perf_counter()
            try:
                placed = client.place_order(market, side, price=str(price), quantity=quantity)
            except (ApiError, httpx.HTTPError):
                errors += 1
            else:
                latencies.append(time.perf_counter() - began)
                acked.append(placed.order_id)
            n += 1
    with out["lock"]:
        out["acked"].extend(acked)
        out["latencies"].extend(latencies)
        out["errors"] += errors


def run_topology(
    processes: int, nodes: int, users: int, clients: int, seconds: float, data: Path
) -> dict[str, Any]:
    root = data / f"k{processes}"
    (root / "logs").mkdir(parents=True)
    settings = Settings(
        data_dir=root / "data",
        kafka_port=free_ports(2 * nodes),
        nodes=nodes,
        api_port=free_ports(processes),
        partitions=PARTITIONS,
    )
    plural = "es" if processes > 1 else ""
    label = f"{processes} dataflow process{plural}, {processes} API replica{plural[1:]}"
    _say(f"{label}: crypton up --nodes {nodes} (logs in {root / 'logs'})")
    up = _Up(settings, processes, nodes, root / "logs")
    try:
        began = time.monotonic()
        up.wait_ready(300)
        _say(f"  up after {time.monotonic() - began:.1f} s; {users} traders being funded")
        keys = _traders(up.urls[0], users, f"k{processes}")
        watcher = _States(settings)
        watcher.start()
        time.sleep(1.0)  # the watcher is at the orders topic's end before the first order
        out: dict[str, Any] = {"lock": threading.Lock(), "acked": [], "latencies": [], "errors": 0}
        cpu_before = _cpu_by_kind(up.proc.pid)
        start = time.monotonic()
        deadline = start + seconds
        threads = [
            threading.Thread(
                target=_trade,
                args=(up.urls[i % processes], keys[i % len(keys)], i, deadline, out),
                daemon=True,
            )
            for i in range(clients * processes)
        ]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
            if time.monotonic() < deadline:
                _say(f"    ... {time.monotonic() - start:.0f}/{seconds:.0f} s")
        for thread in threads:
            thread.join()
        sent_s = time.monotonic() - start
        cpu = {
            kind: (spent - cpu_before[kind]) / sent_s
            for kind, spent in _cpu_by_kind(up.proc.pid).items()
        }
        acked: list[str] = out["acked"]
        wait_until = time.monotonic() + 120
        while time.monotonic() < wait_until and sum(i in watcher.seen for i in acked) < len(acked):
            time.sleep(0.2)
        watcher.stop.set()
        stated = [watcher.seen[i] for i in acked if i in watcher.seen]
        last = max(stated, default=start)
        result = {
            "acked_per_s": len(acked) / sent_s,
            "stated_per_s": len(stated) / max(1e-9, last - start),
            "acked": len(acked),
            "stated": len(stated),
            "errors": out["errors"],
            "ack_p50_ms": 1000 * report.percentile(out["latencies"], 0.5),
            "ack_p99_ms": 1000 * report.percentile(out["latencies"], 0.99),
            "cores": cpu,
        }
        _say(
            f"  {label}: {result['acked_per_s']:,.0f} orders/s acknowledged"
            f" (p50 {result['ack_p50_ms']:.1f} ms, p99 {result['ack_p99_ms']:.1f} ms,"
            f" {result['errors']} errors), {result['stated_per_s']:,.0f} orders/s to a state"
            f" record ({result['stated']:,} of {result['acked']:,})"
        )
        _say(
            "    cores busy while trading: "
            + ", ".join(f"{kind} {share:.2f}" for kind, share in cpu.items())
            + f" (of {os.cpu_count()})"
        )
        return result
    finally:
        up.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="Kafka nodes (3: replicated)")
    parser.add_argument("--users", type=int, default=32, help="traders")
    parser.add_argument("--clients", type=int, default=8, help="client threads per replica")
    parser.add_argument("--seconds", type=float, default=20, help="trading per topology")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="crypton-bench-replicas-"))
    _say(f"bench_replicas: {args.nodes} Kafka node(s), data in {data}")
    results: dict[str, Any] = {}
    try:
        for processes in (1, 2):
            results[str(processes)] = run_topology(
                processes, args.nodes, args.users, args.clients, args.seconds, data
            )
    except (RuntimeError, ApiError, httpx.HTTPError) as exc:
        print(f"bench_replicas: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    for what in ("acked_per_s", "stated_per_s"):
        results[f"ratio_{what}"] = results["2"][what] / max(1e-9, results["1"][what])
    _say(
        f"  ratio: two of each / one of each = {results['ratio_acked_per_s']:.2f} acknowledged,"
        f" {results['ratio_stated_per_s']:.2f} to a state record"
        f" ({os.cpu_count()} cores shared with Kafka and these clients)"
    )
    report.write_json(args.out, "bench_replicas", results, nodes=args.nodes, seconds=args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
