"""`crypton monitor`: a real Prometheus scraping a real API and dataflow, its console
dashboards drawn in Chromium (screenshot in docs/), and the metrics they need."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypton import monitor
from crypton.config import Settings
from crypton.monitor import prometheus_config
from crypton.process import free_port
from tests.api.support import ADMIN_TOKEN, ApiServer, create_user
from tests.browser import SHOTS, chromium_page
from tests.conftest import Spawn
from tests.dataflows.kafka_support import start_dataflow

MONITORING = Path(__file__).parents[2] / "monitoring"


def test_the_config_scrapes_both_jobs_with_the_rules() -> None:
    config = prometheus_config("127.0.0.1:8000", "127.0.0.1:9100", MONITORING / "alerts.yml")
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs == {"crypton-api": ["127.0.0.1:8000"], "crypton-dataflow": ["127.0.0.1:9100"]}
    assert config["rule_files"] == [str(MONITORING / "alerts.yml")]


def _query(prom: httpx.Client, expr: str) -> list[dict[str, Any]]:
    try:
        response = prom.get("/api/v1/query", params={"query": expr})
    except httpx.TransportError:
        return []
    if response.status_code != 200:
        return []
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def _trade(api: ApiServer, admin: httpx.Client, n: int) -> None:
    seller, buyer = create_user(admin), create_user(admin)
    for user, asset, amount in ((seller, "BTC", "1"), (buyer, "USDT", "100000")):
        admin.post(
            f"/v1/admin/users/{user.user_id}/credit?wait=true",
            json={"asset": asset, "amount": amount, "transfer_id": "m1"},
        ).raise_for_status()
    for i in range(n):
        for user, side in ((seller, "sell"), (buyer, "buy")):
            user.client.post(
                "/v1/orders",
                json={"market": "BTC-USDT", "side": side, "type": "limit",
                      "price": str(50000 + i), "quantity": "0.01"},
            ).raise_for_status()  # fmt: skip
        time.sleep(0.3)  # over several 1 s scrapes: a rate needs two different samples
    seller.close()
    buyer.close()


@pytest.mark.integration
def test_monitor_serves_dashboards_of_the_running_exchange(
    settings: Settings,
    spawn: Spawn,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is missing: apt-get install -y prometheus")
    dataflow_port, port = free_port(), free_port()
    monkeypatch.setenv("CRYPTON_DATAFLOW_METRICS_PORT", str(dataflow_port))
    start_dataflow(spawn, settings)
    monitor = spawn("monitor", [
        sys.executable, "-m", "crypton.cli", "monitor", "--port", str(port), "--interval", "1s",
        "--api", api_server.url.removeprefix("http://"),
    ], settings=settings)  # fmt: skip

    prom_url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=prom_url, timeout=5) as prom:

        def wait_for(needed: dict[str, str], seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while missing := [name for name, expr in needed.items() if not _query(prom, expr)]:
                assert monitor.poll() is None, monitor.log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, f"never seen in Prometheus: {missing}"
                time.sleep(0.5)

        wait_for({"api up": 'up{job="crypton-api"} == 1',
                  "dataflow up": 'up{job="crypton-dataflow"} == 1'}, 60)  # fmt: skip
        # Trade once Prometheus has seen the counters, so their rates are not zero.
        with api_server.client(ADMIN_TOKEN) as admin:
            _trade(api_server, admin, 10)
        wait_for({
            "orders/s": 'rate(crypton_api_commands_total{command="place_order"}[1m]) > 0',
            "trades": "crypton_dataflow_trades_total > 0",
            "command→state": "crypton_dataflow_command_state_seconds_count > 0",
            "consumer lag": "crypton_dataflow_consumer_lag",
            "api latency": "crypton_api_request_duration_seconds_count",
            "process metrics": 'process_cpu_seconds_total{job="crypton-api"}',
            "gc metrics": 'python_gc_collections_total{job="crypton-api"}',
        }, 30)  # fmt: skip
        lag = _query(prom, "crypton_dataflow_consumer_lag")
        assert {s["metric"]["partition"] for s in lag} >= {"0"}
        assert "Prometheus is up at" in monitor.log_path.read_text()

    with chromium_page(1440, 1180) as page:
        time.sleep(4)  # a few more samples: lines rather than points in the screenshot
        page.goto(f"{prom_url}/consoles/crypton.html")
        page.wait_for_selector("body[data-drawn]")
        orders = page.locator('.graph[data-title="Orders / s"]')
        assert int(orders.get_attribute("data-series") or 0) >= 1
        assert page.locator(".card .up").count() == 2
        for title in (
            "Trades / s",
            "Command → state latency",
            "Consumer lag per inbox partition (records)",
            "API latency p99 by route",
        ):
            graph = page.locator(f'.graph[data-title="{title}"]')
            assert int(graph.get_attribute("data-series") or 0) >= 1, title  # fmt: skip
        page.screenshot(path=str(SHOTS / "monitor.png"), full_page=True)


def test_without_prometheus_it_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert monitor.main(Settings(data_dir=tmp_path), []) == 2
    err = capsys.readouterr().err
    assert err == "crypton: error: prometheus is not installed: apt-get install -y prometheus\n"


def test_with_its_port_taken_it_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/prometheus")  # not run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert monitor.main(Settings(data_dir=tmp_path), ["--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"crypton: error: port {port} on 127.0.0.1 is already in use"
        " (another Prometheus? choose a port with --port)\n"
    )
