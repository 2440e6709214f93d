"""loadtest/locustfile.py: refuses remote hosts, and runs clean against the real exchange.

The integration test runs locust headless for 10 s with a few users against a
real API and the real dataflow on the session's broker, and asserts that locust
counted requests of every kind and no failure.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crypton.config import Settings
from tests.api.support import ADMIN_TOKEN, ApiServer
from tests.conftest import Spawn
from tests.dataflows.kafka_support import start_dataflow

ROOT = Path(__file__).parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def _locust(host: str, tmp_path: Path, *args: str, timeout: float = 40) -> tuple[int, str]:
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--only-summary", "--loglevel", "WARNING", *args,
    ]  # fmt: skip
    env = {**os.environ, "CRYPTON_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    "host", ["http://example.com:8000", "http://10.0.0.1:8000", "ftp://127.0.0.1:21"]
)
def test_a_host_other_than_loopback_is_refused(host: str, tmp_path: Path) -> None:
    code, output = _locust(host, tmp_path, "-u", "1", "-r", "1", "-t", "2s")
    assert code != 0
    assert "refusing to load" in output, output[-2000:]


@pytest.mark.integration
def test_locust_runs_without_failures(
    api_server: ApiServer, settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    start_dataflow(spawn, settings)
    code, output = _locust(
        api_server.url, tmp_path, "-u", "6", "-r", "6", "-t", "10s",
        "--accounts", "4", "--csv", str(tmp_path / "run"),
    )  # fmt: skip
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows.pop("Aggregated")
    assert int(total["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    assert code == 0, output[-3000:]
    # A busy machine answers slowly (hundreds of ms while the dataflow starts): the
    # count is a floor that proves the run did work, not a throughput target.
    assert int(total["Request Count"]) > 10
    # Both user classes ran: trading and public market data.
    assert {"/v1/orders [place]", "/v1/balances", "/v1/markets/{m}/trades"} <= set(rows)
