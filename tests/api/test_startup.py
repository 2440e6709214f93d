"""The read model rebuilds from the log at every start, and compaction leaves the
active segments whole: start-up must stay fast on long topics. Measured here on N order records
(CRYPTON_STARTUP_RECORDS, default 200k) plus trades and balances."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crypton.config import Settings
from loadtest.bench_api import write_state_log

from .support import start_api, wait_until_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = int(os.environ.get("CRYPTON_STARTUP_RECORDS", "200000"))


def test_startup_on_a_long_log(own_settings: Settings, tmp_path: Path) -> None:
    settings = own_settings
    start = time.monotonic()
    write_state_log(settings, RECORDS)
    produced = time.monotonic() - start
    server = start_api(settings, tmp_path / "logs", wait_ready=False)
    try:
        ready = wait_until_ready(server, timeout=120)
        with server.client() as client:
            detail = client.get("/ready").json()["detail"]
            metrics = client.get("/metrics").text
        print(
            f"\nread model: {RECORDS} order records (+{RECORDS // 20} trades, +{RECORDS // 20} "
            f"balances) produced in {produced:.1f}s; API ready {ready:.2f}s after launch "
            f"(read model {detail['startup_ms']} ms after its start)"
        )
        [read] = [
            float(line.rpartition(" ")[2])
            for line in metrics.splitlines()
            if line.startswith("crypton_api_readmodel_records_total{") and "orders" in line
        ]
        assert read == RECORDS
        assert ready < 60
    finally:
        server.stop()
