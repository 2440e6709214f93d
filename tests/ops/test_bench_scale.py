"""The readings of ``loadtest.bench_scale``: Prometheus text summed over processes,
quantiles from buckets, the epoch stall from probe latencies, and /proc figures; and
the markets its throughput runs spread over."""

from __future__ import annotations

import os
import random
from pathlib import Path

from crypton.config import load_markets
from loadtest.bench_scale import stall
from loadtest.scale_log import trading_orders, write_markets
from loadtest.scale_measure import (
    cpu_seconds,
    dir_bytes,
    histogram_quantile,
    machine_busy,
    metric_sums,
    rss_mib,
    snapshot_metrics,
    written_bytes,
)

BYTEWAX = """\
# TYPE bytewax_snapshot_duration_seconds histogram
bytewax_snapshot_duration_seconds_bucket{step_id="crypton.wallet",worker_index="0",le="0.005"} 8
bytewax_snapshot_duration_seconds_bucket{step_id="crypton.wallet",worker_index="0",le="0.01"} 9
bytewax_snapshot_duration_seconds_bucket{step_id="crypton.wallet",worker_index="0",le="+Inf"} 10
bytewax_snapshot_duration_seconds_count{step_id="crypton.wallet",worker_index="0"} 10
bytewax_snapshot_duration_seconds_bucket{step_id="crypton.book",worker_index="0",le="+Inf"} 3
"""


def test_metric_sums_keep_buckets_apart_and_add_processes() -> None:
    other = BYTEWAX.replace('worker_index="0"', 'worker_index="1"')
    sums = metric_sums([BYTEWAX, other], "bytewax_snapshot", 'step_id="crypton.wallet"')
    name = "bytewax_snapshot_duration_seconds"
    assert sums[name + "_bucket{le=0.005}"] == 16
    assert sums[name + "_bucket{le=+Inf}"] == 20
    assert sums[name + "_count"] == 20
    assert histogram_quantile(sums, name, 0.5) == 0.005
    assert histogram_quantile(sums, name, 0.95) == float("inf")
    assert histogram_quantile({}, name, 0.5) is None


def test_crypton_snapshot_metrics_are_read_when_the_dataflow_serves_them() -> None:
    text = 'crypton_dataflow_snapshot_bytes_total{step="wallet"} 1.5e+06\nother_total 3\n'
    assert snapshot_metrics([text, "", text]) == {"crypton_dataflow_snapshot_bytes_total": 3e6}


def test_the_stall_of_an_epoch_is_its_slowest_probe_over_the_median() -> None:
    # Probes every 0.5 s for 6 s: 20 ms each, but one at 2.5 s waited 320 ms.
    sent = {f"p{i}": (1000 * i, i * 0.5) for i in range(12)}
    seen = {k: ms + (320 if k == "p5" else 20) for k, (ms, _) in sent.items()}
    result = stall(sent, seen, epoch_s=2)
    assert result["probe_latency_ms"]["p50"] == 20
    assert result["probe_latency_ms"]["max"] == 320
    assert result["epochs"] == 3
    assert result["epoch_stall_ms"] == {"p50": 0, "p99": 300}


def test_proc_readings_of_this_process(tmp_path: Path) -> None:
    assert rss_mib(os.getpid()) > 1
    assert written_bytes(os.getpid()) >= 0
    spent = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # some CPU time of this process
    assert cpu_seconds(os.getpid()) > spent
    assert cpu_seconds(None) == 0.0
    busy, total = machine_busy()
    assert 0 < busy <= total
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "b").write_bytes(b"x" * 20)
    assert dir_bytes(tmp_path) == 120
    assert dir_bytes(tmp_path / "absent") == 0


def test_the_flow_s_own_epoch_stall_histogram_is_read_with_the_snapshot_metrics() -> None:
    text = (
        'crypton_dataflow_epoch_stall_seconds_bucket{le="0.01"} 3.0\n'
        'crypton_dataflow_epoch_stall_seconds_bucket{le="0.1"} 4.0\n'
        'crypton_dataflow_epoch_stall_seconds_bucket{le="+Inf"} 4.0\n'
    )
    sums = snapshot_metrics([text])
    assert histogram_quantile(sums, "crypton_dataflow_epoch_stall_seconds", 0.5) == 0.01
    assert histogram_quantile(sums, "crypton_dataflow_epoch_stall_seconds", 0.99) == 0.1


def test_the_throughput_markets_are_a_valid_file_with_the_packaged_ones_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "markets.toml"
    symbols = write_markets(path, 16)
    assert len(symbols) == len(set(symbols)) == 16
    assert symbols[0] == "BTC-USDT" and {"ETH-USDT", "M1-USDT", "M14-USDT"} < set(symbols)
    markets = load_markets(path)
    assert {m.symbol for m in load_markets()} < {m.symbol for m in markets}
    orders = trading_orders(2_000, random.Random(1), "t", markets, symbols)
    assert {o.market for o in orders} == set(symbols)
    for order in orders:  # every order is valid on its market: tick and step
        market = markets.market(order.market)
        assert order.price % market.tick == 0 and order.quantity % market.step == 0
