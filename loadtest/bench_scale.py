"""Benchmark of state that grows with history: many idle users, a long order history.

    python -m loadtest.bench_scale [--users 50000] [--orders 200000] [--partitions 16]
    python -m loadtest.bench_scale --users 1000000 --orders 10000000   # the issue's size

Starts an embedded Kafka (``--nodes``, 1 by default; 3 as in production) on free
loopback ports in a temporary directory (removed at the end) and builds the state
through the core and the log, not over HTTP: every user is funded by a ``Credit``
written to the wallet inbox and applied by the real dataflow, a tenth of them get a
resting order far from the touch, and ``--orders`` lifetime orders are written to
the state topics as the API's read model would find them. Then it prints:

- **epoch stall**: a probe writes a 1-unit ``Credit`` every 20 ms and times it until
  its transfer record is on the state topic, while ~10 orders/s trade. Its latency is
  the flow's one thread plus two Kafka hops; a probe that arrives while an epoch's
  snapshot holds the thread waits for it. Per snapshot interval, the slowest probe
  minus the median probe is that epoch's stall: its p50/p99 over the epochs is printed,
  beside the raw probe latency. That is measured from outside, and cannot go below the
  spread of the probe's own latency (about 25 ms here: two Kafka hops, producers'
  5 ms linger, polling). Inside, the dataflow's ``crypton_dataflow_epoch_stall_seconds``
  times how long after it was due each inbox partition is polled again once its epoch
  closed (``dataflows/metrics.py``, ``EpochStall``): its p50/p99 are printed next to
  the probe's. The ``crypton_dataflow_snapshot_*`` metrics are printed too;
- **bytes written per minute** by the dataflow at ~10 orders/s with every idle user
  present: the growth of ``write_bytes`` in ``/proc/<pid>/io`` (what the process handed
  to the disk: the recovery store's SQLite WAL and the checkpoints that copy it into
  the database, and its log file), and the growth of the recovery directory's files (a
  lower bound: once checkpointed, SQLite writes its WAL file again from the start);
- **resident memory** (VmRSS) of the dataflow and of the API;
- **API ready time** after a restart: launch until ``/ready`` answers 200;
- **orders/s** to final state, one dataflow process and then two (``-i 0/1 -a``) on
  the same recovery store and the same load, each on one market (BTC-USDT) and then
  spread over ``--markets`` USDT markets (16; listings ``M1-USDT``... in the run's own
  markets file). A market's book is one machine on one worker, so one hot market is
  what a second process cannot split; markets (and users) are what it splits. Each
  process's share of the CPU and of the book messages is printed. On this 2-core
  machine the second process has no core of its own (Kafka, the first process and the
  load generator share both);
- **idle users woken after a restart** (``--wake``, 5,000): one credit each to users
  untouched since the build, at once, after the two processes started: each wakes a
  machine the restarted flow has not seen (its settled snapshot, or for a delta its
  base and inbox since, read from Kafka), timed until its transfer record.

Traffic goes only to 127.0.0.1. Results as JSON in ``--out`` (``loadtest/report.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crypton import topics
from crypton.broker import KAFKA_VERSION, EmbeddedBroker
from crypton.cli import api_command, dataflow_children, ensure_recovery_store
from crypton.config import Settings
from crypton.domain.messages import Credit, Message
from crypton.process import Child, free_port, free_ports, settings_env
from crypton.supervisor import Together
from dataflows.recovery import SETTLE_AFTER_EPOCHS
from loadtest import report
from loadtest.scale_log import (
    MARKET,
    TRADERS,
    Watcher,
    Writer,
    fund,
    now_ms,
    resting_orders,
    stamp,
    trading_orders,
    write_markets,
    write_order_history,
)
from loadtest.scale_measure import (
    EPOCH_STALL,
    cpu_seconds,
    dir_bytes,
    histogram_quantile,
    machine_busy,
    metric_sums,
    metrics_text,
    rss_mib,
    snapshot_metrics,
    written_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-scale-admin-token"
PROBE_EVERY_S = 0.020
BYTEWAX_SNAPSHOT = "bytewax_snapshot_duration_seconds"


def _say(line: str) -> None:
    print(line, flush=True)


class Exchange:
    """The broker, the dataflow (one or two processes) and API launches of one run."""

    def __init__(
        self,
        settings: Settings,
        logs: Path,
        bytewax_api: bool = False,
        recovery_partitions: int = 1,
    ) -> None:
        self.settings = settings
        self.logs = logs
        self.env = settings_env(settings) | {
            "CRYPTON_ADMIN_TOKEN": TOKEN,
            "CRYPTON_RATE_LIMIT": "0",
        }
        # Commands come straight from this benchmark, unsigned: nothing to enforce.
        self.env.pop("CRYPTON_API_SECRET", None)
        self.metrics_port = free_ports(2)
        # Bytewax's own server (its snapshot_duration_seconds histograms) binds every
        # interface, not only loopback: opt-in.
        self.bytewax_port = free_ports(2) if bytewax_api else None
        self.flows: list[Child] = []
        self.recovery = ensure_recovery_store(settings, recovery_partitions)

    def start_dataflow(self, processes: int) -> None:
        self.stop_dataflow()
        env = self.env | {
            "CRYPTON_DATAFLOW_METRICS_PORT": str(self.metrics_port),
            "CRYPTON_SINK_PARTS": str(processes),
        }
        self.flows = dataflow_children(self.settings, env, self.logs, processes=processes)
        for i, child in enumerate(self.flows):
            # In the temporary directory: Bytewax's API server writes dataflow.json there.
            child.cwd = self.settings.data_dir
            if self.bytewax_port is not None and child.env is not None:
                child.env["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
                child.env["BYTEWAX_DATAFLOW_API_PORT"] = str(self.bytewax_port + i)
            child.start()

    def stop_dataflow(self) -> None:
        if self.flows:  # a Timely cluster stops as one
            Together("dataflow", self.flows).stop(15)
        self.flows = []

    def bytewax_snapshots(self) -> dict[str, dict[str, float]]:
        """Bytewax's ``snapshot_duration_seconds`` of each keyed step, summed over the
        processes: the time of the step's ``snapshot()`` calls (not the pickling and
        the SQLite write that follow them on the same thread)."""
        if self.bytewax_port is None:
            return {}
        texts = [metrics_text(self.bytewax_port + i) for i in range(len(self.flows))]
        return {
            step: metric_sums(texts, BYTEWAX_SNAPSHOT, f'step_id="crypton.{step}"')
            for step in ("wallet", "book")
        }

    def check_dataflow(self) -> None:
        for child in self.flows:
            if child.poll() is not None:
                raise SystemExit(f"bench_scale: {child.name} exited: {child.tail(3)}")

    @property
    def flow_pids(self) -> list[int]:
        return [c.pid for c in self.flows if c.pid is not None]

    def flow_metrics(self) -> list[str]:
        return [metrics_text(self.metrics_port + i) for i in range(len(self.flows))]

    def launch_api(self) -> tuple[Child, float]:
        """Start an API and time it from launch to ``/ready`` answering 200."""
        port = free_port()
        argv = [*api_command(Settings(api_port=port)), "--log-level", "warning"]
        api = Child("api", argv, self.logs / "api.log", env=self.env, cwd=ROOT).start()
        began = time.monotonic()
        url = f"http://127.0.0.1:{port}/ready"
        while True:
            if api.poll() is not None:
                raise SystemExit(f"bench_scale: the API exited: {api.tail(3)}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return api, time.monotonic() - began
            if time.monotonic() - began > 900:
                raise SystemExit("bench_scale: the API was not ready within 900 s")
            time.sleep(0.02)


def build_state(ex: Exchange, users: int, resting: int, orders: int) -> dict[str, float]:
    writer, watcher = Writer(ex.settings), Watcher(ex.settings)
    took: dict[str, float] = {}
    try:
        began = time.monotonic()
        ts = now_ms()
        count = writer.send(fund((f"u{n}" for n in range(users)), {"USDT": 10**12}, ts))
        count += writer.send(
            fund((f"t{n}" for n in range(TRADERS)), {"USDT": 10**15, "BTC": 10**13}, ts)
        )
        writer.flush()
        _say(f"  {count:,} credits written to the wallet inbox; the dataflow applies them")
        watcher.wait(lambda: len(watcher.transfers) >= count, 3600, "funding")
        took["funding_s"] = time.monotonic() - began
        _say(f"  {users:,} idle users funded in {took['funding_s']:.1f} s")
        began = time.monotonic()
        writer.send(resting_orders(resting, now_ms()))
        writer.flush()
        watcher.wait(
            lambda: sum(k.startswith("rest-") for k in list(watcher.final)) >= resting,
            3600,
            "resting orders",
        )
        took["resting_s"] = time.monotonic() - began
        _say(f"  {resting:,} resting orders on the book in {took['resting_s']:.1f} s")
    finally:
        watcher.close()
    began = time.monotonic()
    _say(f"  writing {orders:,} lifetime orders to the state topics")
    write_order_history(ex.settings, orders)
    took["history_s"] = time.monotonic() - began
    return took


def settle(ex: Exchange, snapshot_seconds: float) -> dict[str, float]:
    """Wait until the recovery store has settled the build's snapshots (every key idle
    for ``SETTLE_AFTER_EPOCHS`` epochs moves out of Bytewax's table once: see
    ``dataflows.recovery``), so that the paced phase measures steady state; return what
    that one-off move wrote."""
    seconds = (SETTLE_AFTER_EPOCHS + 3) * snapshot_seconds
    _say(f"letting the recovery store settle the build's snapshots ({seconds:g} s)")
    pids = ex.flow_pids
    io0, began = sum(written_bytes(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    written = sum(written_bytes(p) for p in pids) - io0
    _say(f"  the dataflow wrote {written / 1e6:.1f} MB meanwhile, once (settling idle keys)")
    return {"seconds": time.monotonic() - began, "dataflow_write_bytes": written}


def trade_paced(ex: Exchange, rate: float, seconds: float, tag: str, probe: bool) -> dict[str, Any]:
    """``rate`` orders/s for ``seconds``; with ``probe``, a probe credit every 20 ms."""
    writer, watcher = Writer(ex.settings), Watcher(ex.settings)
    orders = trading_orders(int(rate * seconds) + 1, random.Random(tag), tag)
    sent_at: dict[str, tuple[int, float]] = {}
    pids = ex.flow_pids
    io0 = sum(written_bytes(p) for p in pids)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    dir0 = dir_bytes(ex.recovery)
    snap0 = snapshot_metrics(ex.flow_metrics())
    bytewax0 = ex.bytewax_snapshots()
    began = time.monotonic()
    next_order, n_probe, last_say = began, 0, began
    try:
        i = 0
        while (now := time.monotonic()) < began + seconds:
            if now >= next_order and i < len(orders):
                writer.send([stamp(orders[i])])
                i += 1
                next_order += 1 / rate
            if probe:
                ident = f"probe-{tag}-{n_probe}"
                writer.send([probe_credit(ident)])
                sent_at[ident + "@probe"] = (now_ms(), now - began)
                n_probe += 1
            if now - last_say > 10:
                _say(f"    ... {now - began:.0f}/{seconds:.0f} s, {i} orders sent")
                last_say = now
                ex.check_dataflow()
            time.sleep(max(0.0, min(next_order, now + PROBE_EVERY_S) - time.monotonic()))
        writer.flush()
        minutes = (time.monotonic() - began) / 60
        written = sum(written_bytes(p) for p in pids) - io0
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        grown = dir_bytes(ex.recovery) - dir0
        snap1 = snapshot_metrics(ex.flow_metrics())
        bytewax1 = ex.bytewax_snapshots()
        watcher.wait(lambda: all(k in watcher.transfers for k in sent_at), 60, "probes")
    finally:
        watcher.close()
    result: dict[str, Any] = {
        "orders_sent": i,
        "orders_per_s": i / (minutes * 60),
        "dataflow_write_bytes_per_min": written / minutes,
        "recovery_dir_growth_bytes_per_min": grown / minutes,
        "dataflow_cpu_share": cpu / (minutes * 60),
    }
    delta = {k: snap1.get(k, 0.0) - snap0.get(k, 0.0) for k in snap1}
    if "crypton_dataflow_snapshot_bytes_total" in delta:
        result["snapshot_bytes_per_min"] = delta["crypton_dataflow_snapshot_bytes_total"] / minutes
    # Large states written whole to Kafka (dataflows.bases): state bytes as well.
    result["base_bytes_per_min"] = delta.get("crypton_dataflow_base_bytes_total", 0.0) / minutes
    for name in {k.split("_bucket{", 1)[0] for k in delta if "_bucket{" in k}:
        result[f"{name}_p50"] = histogram_quantile(delta, name, 0.5)
        result[f"{name}_p99"] = histogram_quantile(delta, name, 0.99)
    for step, after in bytewax1.items():
        before = bytewax0.get(step, {})
        spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
        result[f"bytewax_{step}_snapshot_seconds"] = {
            "count": spent.get(BYTEWAX_SNAPSHOT + "_count", 0.0),
            "p50_bucket": histogram_quantile(spent, BYTEWAX_SNAPSHOT, 0.5),
            "p99_bucket": histogram_quantile(spent, BYTEWAX_SNAPSHOT, 0.99),
        }
    if probe:
        result |= stall(sent_at, watcher.transfers, ex.settings.snapshot_seconds)
    return result


def probe_credit(transfer_id: str) -> Credit:
    """The probe: one unit of USDT to the ``probe`` user, a transfer record when applied."""
    return Credit(user_id="probe", asset="USDT", amount=1, transfer_id=transfer_id, ts=now_ms())


def stall(
    sent_at: dict[str, tuple[int, float]], seen: dict[str, int], epoch_s: float
) -> dict[str, Any]:
    """Probe latencies and, per snapshot interval, the slowest probe's excess over the
    median probe: how long something (an epoch's snapshot) held the flow's thread."""
    latency = {k: seen[k] - ms for k, (ms, _) in sent_at.items() if k in seen}
    values = list(latency.values())
    median = statistics.median(values)
    worst: dict[int, float] = {}
    for key, (_, offset) in sent_at.items():
        if key in latency:
            epoch = int(offset // epoch_s)
            worst[epoch] = max(worst.get(epoch, 0.0), latency[key] - median)
    stalls = list(worst.values())
    return {
        "probes": len(values),
        "probe_latency_ms": {
            "p50": median,
            "p99": report.percentile(values, 0.99),
            "max": max(values),
        },
        "epoch_stall_ms": {
            "p50": report.percentile(stalls, 0.5),
            "p99": report.percentile(stalls, 0.99),
        },
        "epochs": len(stalls),
    }


def _timed(
    ex: Exchange,
    messages: Iterable[Message],
    landed: Callable[[Watcher], Mapping[str, int]],
    keys: Sequence[str],
    what: str,
) -> tuple[float, list[float]]:
    """Write ``messages`` at once and wait until every one of ``keys`` has landed
    (``landed``: the watcher's times by key): the seconds from the first write to the last
    landing, and each dataflow process's CPU seconds meanwhile."""
    writer, watcher = Writer(ex.settings), Watcher(ex.settings)
    pids = ex.flow_pids
    cpu0 = [cpu_seconds(p) for p in pids]
    try:
        began_ms = now_ms()
        writer.send(messages)
        writer.flush()
        seen = landed(watcher)

        def done() -> bool:
            ex.check_dataflow()
            return all(k in seen for k in keys)

        watcher.wait(done, 1800, what)
        last = max(seen[k] for k in keys)
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    finally:
        watcher.close()
    return max(0.001, (last - began_ms) / 1000), cpu


def full_speed(ex: Exchange, count: int, tag: str, symbols: Sequence[str]) -> dict[str, Any]:
    """Orders/s to final state for ``count`` trading orders on ``symbols`` written at
    once, with the dataflow processes' CPU time per 1,000 orders, how busy the machine's
    cores were meanwhile (what bounds a second process on a machine without a core for
    it), and each process's share of the CPU and of the book messages (a market's book
    lives on one process: Bytewax routes each key to one worker)."""
    orders = trading_orders(count, random.Random(tag), tag, ex.settings.markets(), symbols)
    books0 = [_book_messages(text) for text in ex.flow_metrics()]
    busy0, total0 = machine_busy()
    seconds, cpu = _timed(
        ex,
        (stamp(o) for o in orders),
        lambda watcher: watcher.final,
        [o.order_id for o in orders],
        f"{count} orders",
    )
    books = [_book_messages(text) - b for text, b in zip(ex.flow_metrics(), books0, strict=True)]
    busy, total = machine_busy()
    return {
        "orders_per_s": count / seconds,
        "dataflow_cpu_ms_per_1000_orders": 1e6 * sum(cpu) / count,
        "machine_busy": (busy - busy0) / max(1e-9, total - total0),
        "cpu_share": [c / max(1e-9, sum(cpu)) for c in cpu],
        "book_message_share": [b / max(1.0, sum(books)) for b in books],
    }


def _book_messages(text: str) -> float:
    return sum(metric_sums([text], "crypton_dataflow_messages", 'step="book"').values())


def _throughput_line(what: str, run: dict[str, Any]) -> str:
    line = (
        f"  {what}: {run['orders_per_s']:,.0f} orders/s to final state; dataflow CPU"
        f" {run['dataflow_cpu_ms_per_1000_orders']:.0f} ms per 1,000 orders, machine"
        f" {100 * run['machine_busy']:.0f}% busy"
    )
    if len(run["cpu_share"]) > 1:
        cpu = "/".join(f"{100 * c:.0f}" for c in run["cpu_share"])
        books = "/".join(f"{100 * b:.0f}" for b in run["book_message_share"])
        line += f"; per process: CPU {cpu}%, book messages {books}%"
    return line


def throughput(ex: Exchange, count: int, symbols: Sequence[str]) -> dict[str, Any]:
    """Orders/s with one dataflow process, then two (``-i 0/1 -a``), each trading one
    market and then all of ``symbols``: one market's book is one machine, so it is
    where two processes cannot help; the markets are how an exchange spreads."""
    loads = {"one_market": (MARKET,), "markets": tuple(symbols)}
    runs: dict[str, dict[str, Any]] = {}
    # The traders get the other markets' base assets only now: a wallet holding more
    # assets snapshots larger, and the phases before measure bytes with BTC and USDT.
    markets = ex.settings.markets()
    assets = {markets.market(s).base.code: 10**13 for s in symbols if s != MARKET}
    writer, watcher = Writer(ex.settings), Watcher(ex.settings)
    try:
        credits = writer.send(fund((f"t{n}" for n in range(TRADERS)), assets, now_ms()))
        writer.flush()
        watcher.wait(lambda: len(watcher.transfers) >= credits, 600, "funding the markets")
    finally:
        watcher.close()
    # Each measured run follows a warm-up of a tenth as many orders: after a restart
    # the first orders also pay for reading the book back (its base and the inbox
    # since), which is a restart's cost, not the processes' rate.
    warm = max(1, count // 10)
    for processes in (1, 2):
        if processes > 1:
            ex.start_dataflow(processes)
            _say(f"  {processes} processes (-i 0/1 -a ...) answer after {wait_flowing(ex):.1f} s")
        label = f"{processes} process{'es' * (processes > 1)}"
        for load, trading in loads.items():
            what = f"{len(trading)} market{'s' * (len(trading) > 1)}"
            _say(f"throughput: {count:,} orders at once on {what}, {label}")
            restarted = full_speed(ex, warm, f"{processes}-{load}-warm", trading)
            if processes > 1 and load == "one_market":
                _say(_throughput_line(f"  the first {warm:,} after the restart", restarted))
                runs["two_processes_first_after_restart"] = restarted
            run = runs[f"{load}_{processes}"] = full_speed(
                ex, count, f"{processes}-{load}", trading
            )
            _say(_throughput_line(f"{label}, {what}", run))
    results: dict[str, Any] = {"throughput": runs, "markets": list(symbols)}
    for load, trading in loads.items():
        one, two = runs[f"{load}_1"], runs[f"{load}_2"]
        ratio = two["orders_per_s"] / one["orders_per_s"]
        key = "orders_per_s" if load == "markets" else "orders_per_s_one_market"
        results[key] = {
            "one_process": one["orders_per_s"],
            "two_processes": two["orders_per_s"],
            "ratio": ratio,
        }
        _say(
            f"  {len(trading)} market{'s' * (len(trading) > 1)}: 2 processes / 1 ="
            f" {ratio:.2f} ({os.cpu_count()} cores shared with Kafka and this load generator)"
        )
    results["dataflow_rss_mib_two_processes"] = [rss_mib(p) for p in ex.flow_pids]
    return results


def wake(ex: Exchange, users: int, resting: int, count: int) -> dict[str, float]:
    """Idle users' first commands since the dataflow last started: ``count`` credits at
    once to users untouched since the build (not the ones with a resting order), timed
    until the last transfer record. Each wakes a machine the restarted processes have
    not seen: read back from the settled store, or, for a delta, its base and inbox
    since from Kafka (``dataflows.bases``): the cost a restart leaves to the first
    users who come back."""
    idle = range(resting, users)
    picked = random.Random("wake").sample(idle, min(count, len(idle)))
    ts = now_ms()
    credits = [
        Credit(user_id=f"u{n}", asset="USDT", amount=1, transfer_id=f"wake-{ts}", ts=ts)
        for n in picked
    ]
    _say(f"waking {len(credits):,} idle users after the restart (one credit each, at once)")
    seconds, cpu = _timed(
        ex,
        credits,
        lambda watcher: watcher.transfers,
        [f"{c.transfer_id}@{c.user_id}" for c in credits],
        f"{len(credits)} idle users' credits",
    )
    result = {
        "users": len(credits),
        "seconds": seconds,
        "users_per_s": len(credits) / seconds,
        "dataflow_cpu_ms_per_user": 1000 * sum(cpu) / len(credits),
    }
    _say(
        f"  {len(credits):,} idle users woken in {seconds:.1f} s ({result['users_per_s']:,.0f}/s;"
        f" dataflow CPU {result['dataflow_cpu_ms_per_user']:.2f} ms a user)"
    )
    return result


def wait_flowing(ex: Exchange, timeout: float = 300) -> float:
    """Until a credit goes through the (re)started dataflow; seconds it took."""
    writer, watcher = Writer(ex.settings), Watcher(ex.settings)
    began = time.monotonic()
    try:
        ident = f"warm-{now_ms()}"
        writer.send([probe_credit(ident)])
        writer.flush()

        def done() -> bool:
            ex.check_dataflow()
            return ident + "@probe" in watcher.transfers

        watcher.wait(done, timeout, "dataflow start")
    finally:
        watcher.close()
    return time.monotonic() - began


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    symbols = write_markets(data / "markets.toml", args.markets)
    settings = Settings(
        data_dir=data, kafka_port=free_ports(2 * args.nodes), nodes=args.nodes,
        topic_prefix="bench.", partitions=args.partitions,
        snapshot_seconds=args.snapshot_seconds, markets_file=data / "markets.toml",
    )  # fmt: skip
    logs = data / "logs"
    broker = EmbeddedBroker(settings, log_path=logs / "broker.log", say=_say)
    ex: Exchange | None = None
    api: Child | None = None
    results: dict[str, Any] = {}
    try:
        broker.start().wait_ready(120)
        _say(f"bench_scale on {broker.ready_line()}; data in {data}")
        topics.ensure_topics(settings)
        ex = Exchange(settings, logs, args.bytewax_metrics, args.recovery_partitions)
        ex.start_dataflow(1)
        _say(f"dataflow (1 process) answers after {wait_flowing(ex):.1f} s")
        _say(f"building the state: {args.users:,} users, {args.orders:,} lifetime orders")
        resting = args.users // 10  # users u0.. each rest one order; ``wake`` skips them
        results["build"] = build_state(ex, args.users, resting, args.orders)
        wait_flowing(ex)
        results["settle"] = settle(ex, args.snapshot_seconds)

        _say(f"trading {args.rate:g} orders/s for {args.seconds:g} s (bytes written)")
        paced = trade_paced(ex, args.rate, args.seconds, "paced", probe=False)
        results["paced"] = paced
        _say(
            f"  dataflow wrote {paced['dataflow_write_bytes_per_min'] / 1e6:.2f} MB/min"
            f" (/proc/<pid>/io write_bytes) at {paced['orders_per_s']:.1f} orders/s;"
            f" the recovery directory's files grew"
            f" {paced['recovery_dir_growth_bytes_per_min'] / 1e6:.2f} MB/min (a lower bound:"
            f" SQLite reuses its WAL file after a checkpoint); the dataflow used"
            f" {100 * paced['dataflow_cpu_share']:.1f}% of a core"
        )
        _say(
            f"  state written: snapshots {paced.get('snapshot_bytes_per_min', 0) / 1e6:.2f} MB/min"
            f" to the recovery store, bases {paced['base_bytes_per_min'] / 1e6:.2f} MB/min to"
            " Kafka (crypton_dataflow_snapshot_bytes, crypton_dataflow_base_bytes)"
        )
        _say(f"probing every {PROBE_EVERY_S * 1000:.0f} ms for {args.probe_seconds:g} s (stall)")
        probed = trade_paced(ex, args.rate, args.probe_seconds, "probed", probe=True)
        results["probe"] = probed
        _say(
            f"  epoch stall p50 {probed['epoch_stall_ms']['p50']:.0f} ms,"
            f" p99 {probed['epoch_stall_ms']['p99']:.0f} ms over {probed['epochs']} epochs"
            f" (slowest probe of each {args.snapshot_seconds:g} s interval minus the median);"
            f" probe command->transfer record p50 {probed['probe_latency_ms']['p50']:.0f} ms,"
            f" p99 {probed['probe_latency_ms']['p99']:.0f} ms,"
            f" max {probed['probe_latency_ms']['max']:.0f} ms"
        )
        p50, p99 = probed.get(f"{EPOCH_STALL}_p50"), probed.get(f"{EPOCH_STALL}_p99")
        if p50 is not None and p99 is not None:
            _say(
                f"  epoch stall inside the flow p50 <= {p50 * 1000:g} ms, p99 <= {p99 * 1000:g} ms"
                f" ({EPOCH_STALL}, bucket bounds: how long past due an inbox partition is"
                " polled after its epoch closed, while the flow finishes the epoch: the"
                " steps' snapshot(), the sink's flush, Bytewax's recovery write and"
                " commit; the probe figure above cannot resolve less than its own spread)"
            )
        for key, value in probed.items():
            if key.startswith(("crypton_dataflow_", "bytewax_")):
                _say(f"  {key} (dataflow metric): {value}")
        results["dataflow_rss_mib"] = [rss_mib(p) for p in ex.flow_pids]
        _say(f"  dataflow RSS {results['dataflow_rss_mib'][0]:.0f} MiB")

        _say("API: launch, then restart, each until /ready answers 200")
        api, first = ex.launch_api()
        api.stop(10)
        api, ready = ex.launch_api()
        time.sleep(2)
        results["api_ready_s"] = {"first": first, "restart": ready}
        results["api_rss_mib"] = rss_mib(api.pid)
        _say(
            f"  API ready {ready:.2f} s after a restart (first launch {first:.2f} s),"
            f" RSS {results['api_rss_mib']:.0f} MiB"
        )
        api.stop(10)
        api = None

        results |= throughput(ex, args.throughput_orders, symbols)
        if args.wake:
            results["wake"] = wake(ex, args.users, resting, args.wake)
        return results
    finally:
        if api is not None:
            api.stop(10)
        if ex is not None:
            ex.stop_dataflow()
        broker.stop(30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--users", type=int, default=50_000, help="idle funded users")
    parser.add_argument(
        "--orders", type=int, default=100_000, help="lifetime orders on the state topics"
    )
    parser.add_argument("--partitions", type=int, default=16, help="partitions per topic")
    parser.add_argument("--nodes", type=int, default=1, help="Kafka nodes (3: replicated)")
    parser.add_argument("--rate", type=float, default=10, help="paced orders/s")
    parser.add_argument("--seconds", type=float, default=60, help="paced phase (bytes/min)")
    parser.add_argument("--probe-seconds", type=float, default=30, help="probed phase (stall)")
    parser.add_argument(
        "--snapshot-seconds", type=int, default=Settings().snapshot_seconds, help="epoch interval"
    )
    parser.add_argument(
        "--recovery-partitions", type=int, default=1,
        help="partitions of the recovery store (1: what `crypton dataflow` makes)",
    )  # fmt: skip
    parser.add_argument(
        "--throughput-orders", type=int, default=100_000, help="orders per throughput run"
    )
    parser.add_argument(
        "--markets", type=int, default=16,
        help="USDT markets the throughput runs spread over (listings M1-USDT... are added"
        " to the run's own markets file); each load also runs on BTC-USDT alone",
    )  # fmt: skip
    parser.add_argument(
        "--bytewax-metrics", action="store_true",
        help="also read Bytewax's snapshot_duration_seconds (its server binds 0.0.0.0)",
    )  # fmt: skip
    parser.add_argument(
        "--wake",
        type=int,
        default=5_000,
        help="idle users' first commands after the restart, at the end (0: skip)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="crypton-bench-scale-"))
    try:
        results = run(args, data)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    params = {
        k: getattr(args, k)
        for k in ("users", "orders", "partitions", "nodes", "rate", "seconds", "probe_seconds",
                  "snapshot_seconds", "throughput_orders", "recovery_partitions", "markets")
    }  # fmt: skip
    nodes = f"{args.nodes} node{'s' * (args.nodes > 1)}"
    broker = f"Apache Kafka {KAFKA_VERSION} ({nodes}, KRaft)"
    report.write_json(args.out, "bench_scale", results, broker=broker, parameters=params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
