"""Start-up on a long log: the first start folds every record into the view file; a
restart resumes from the file's offsets and reads nothing it already folded, so it is ready
in a time that follows what changed since, not the length of the log. Measured here on N
order records (CRYPTON_STARTUP_RECORDS, default 200k) plus trades and balances; the full
scale (1M users, 10M orders) is ``python -m loadtest.bench_readmodel``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crypton import topics
from crypton.config import Settings
from loadtest.bench_api import write_state_log

from .support import ApiServer, start_api, wait_until_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = int(os.environ.get("CRYPTON_STARTUP_RECORDS", "200000"))


def _orders_read(server: ApiServer) -> float:
    orders = topics.topic_name(topics.ORDERS, server.settings.topic_prefix)
    with server.client() as client:
        metrics = client.get("/metrics").text
    found = [
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("crypton_api_readmodel_records_total{") and f'"{orders}"' in line
    ]
    return found[0] if found else 0.0


def _start(settings: Settings, logs: Path) -> tuple[ApiServer, float, int]:
    server = start_api(settings, logs, wait_ready=False)
    ready = wait_until_ready(server, timeout=120)
    with server.client() as client:
        detail = client.get("/ready").json()["detail"]
    return server, ready, detail["startup_ms"]


def test_startup_on_a_long_log(own_settings: Settings, tmp_path: Path) -> None:
    settings = own_settings
    start = time.monotonic()
    write_state_log(settings, RECORDS)
    produced = time.monotonic() - start
    server, cold, cold_ms = _start(settings, tmp_path / "logs")
    try:
        assert _orders_read(server) == RECORDS
        with server.client() as client:
            ticker = client.get("/v1/markets/BTC-USDT/trades?limit=1").json()
    finally:
        server.stop()
    server, warm, warm_ms = _start(settings, tmp_path / "logs")
    try:
        print(
            f"\nread model: {RECORDS} order records (+{RECORDS // 20} trades, +{RECORDS // 20} "
            f"balances) produced in {produced:.1f}s; first start ready {cold:.2f}s after launch "
            f"(read model {cold_ms} ms), restart ready {warm:.2f}s ({warm_ms} ms)"
        )
        assert _orders_read(server) == 0  # everything came from the view file
        with server.client() as client:
            assert client.get("/v1/markets/BTC-USDT/trades?limit=1").json() == ticker
        assert cold < 120 and warm < 30
    finally:
        server.stop()
