"""monitoring/: Prometheus configuration, alert rules and the Grafana dashboard.

Unit tests check that every metric the rules and the dashboard query is one the
API or the dataflow exports (so renaming a metric breaks them) and that promtool
accepts the files. The integration test runs a real Prometheus (Debian package
``prometheus``) scraping a real API process and reads a request counter back
through Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import yaml

from api.metrics import Metrics
from crypton.process import free_port
from dataflows import metrics as dataflow_metrics
from tests.api.support import ApiServer
from tests.conftest import Spawn

ROOT = Path(__file__).parents[2]
MONITORING = ROOT / "monitoring"
_SERIES = re.compile(r"\bcrypton_[a-z0-9_]+\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def exported_series() -> set[str]:
    """Every series name the API and the dataflow can export."""
    # The dataflow's metrics live in the global registry (dataflows/metrics.py).
    assert dataflow_metrics.StepCounts is not None
    families = list(Metrics().registry.collect()) + [
        f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("crypton_dataflow")
    ]
    return {f.name + suffix for f in families for suffix in _SUFFIXES[f.type]}


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text("utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text("utf-8"))
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def unknown_series(exprs: list[str], known: set[str]) -> set[str]:
    return {name for expr in exprs for name in _SERIES.findall(expr)} - known


# --- unit ----------------------------------------------------------------------------------


def test_exported_series_are_found() -> None:
    known = exported_series()
    assert {"crypton_api_requests_total", "crypton_api_request_duration_seconds_bucket"} <= known
    assert {"crypton_dataflow_trades_total", "crypton_dataflow_dead_letters_total"} <= known


def test_alerts_query_only_exported_metrics() -> None:
    exprs = [rule["expr"] for rule in _alerts()]
    assert not unknown_series(exprs, exported_series())


def test_alerts_cover_the_failure_modes() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert {
        "CryptonApiHigh5xxRate",
        "CryptonProduceFailures",
        "CryptonReadModelLag",
        "CryptonDeadLettersIncreasing",
        "CryptonDataflowDown",
        "CryptonDataflowBaseFailures",
        "CryptonSseDrops",
    } <= names
    for rule in _alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_dashboard_panels_query_only_exported_metrics() -> None:
    exprs = _dashboard_exprs()
    assert not unknown_series(exprs, exported_series())
    joined = "\n".join(exprs)
    for needed in (
        'crypton_api_commands_total{command="place_order",',  # orders/s
        "crypton_dataflow_trades_total",
        "histogram_quantile(0.50",
        "histogram_quantile(0.99",
        "crypton_dataflow_command_state_seconds_bucket",
        "crypton_dataflow_consumer_lag",
        "crypton_api_request_duration_seconds_bucket",
        "crypton_api_readmodel_lag",
        "crypton_dataflow_dead_letters_total",
        "crypton_api_sse_clients",
    ):
        assert needed in joined, needed
    for expr in exprs:
        windows = re.findall(r"\brate\(\w+\{[^}]*\}\[([^\]]+)\]", expr)
        assert set(windows) <= {"$__rate_interval"}, expr
        assert 'instance=~"$instance"' in expr, expr


def test_dashboard_has_an_instance_variable_and_rate_intervals() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text("utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance"]["includeAll"] and variables["instance"]["type"] == "query"
    assert any("rate(" in e and "[$__rate_interval]" in e for e in _dashboard_exprs())


def _console_exprs() -> list[str]:
    page = (MONITORING / "consoles" / "crypton.html").read_text("utf-8")
    return [
        expr.strip()
        for attr in re.findall(r"data-expr='([^']*)'", page)
        for expr in attr.split(";")
    ]


def test_consoles_query_exported_metrics_as_the_dashboard_does() -> None:
    consoles = _console_exprs()
    assert len(consoles) >= 9
    assert not unknown_series(consoles, exported_series())
    grafana = {" ".join(e.split()) for e in _dashboard_exprs()}
    for expr in consoles:
        as_grafana = expr.replace("INSTANCE", 'instance=~"$instance"').replace(
            "[1m]", "[$__rate_interval]"
        )
        assert " ".join(as_grafana.split()) in grafana, expr


def test_a_renamed_metric_is_caught() -> None:
    exprs = [e.replace("crypton_api_readmodel_lag", "crypton_api_read_model_lag") for e in
             _dashboard_exprs()]  # fmt: skip
    assert unknown_series(exprs, exported_series()) == {"crypton_api_read_model_lag"}


def test_prometheus_scrapes_both_processes_on_loopback() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text("utf-8"))
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {"crypton-api": ["127.0.0.1:8000"], "crypton-dataflow": ["127.0.0.1:9100"]}
    assert config["rule_files"] == ["alerts.yml"]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: apt-get install -y prometheus")
    return subprocess.run(
        [promtool, *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_rules_and_config() -> None:
    rules = _promtool("check", "rules", str(MONITORING / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in rules.stdout
    config = _promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = (MONITORING / "alerts.yml").read_text("utf-8").replace("[5m]))", "[5m])", 1)
    path = tmp_path / "alerts.yml"
    path.write_text(broken)
    assert _promtool("check", "rules", str(path)).returncode != 0


# --- integration: a real Prometheus scraping a real API ------------------------------------


def _query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/query", params={"query": expr})
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.integration
def test_prometheus_scrapes_the_api(api_server: ApiServer, spawn: Spawn, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("the prometheus binary is missing: apt-get install -y prometheus")
    api_target = api_server.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "crypton-api", "static_configs": [{"targets": [api_target]}]}
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    child = spawn("prometheus", [
        prometheus, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--log.level=warn",
    ])  # fmt: skip

    with api_server.client() as api:
        for _ in range(5):
            assert api.get("/v1/markets").status_code == 200
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:
        while True:
            assert child.poll() is None, f"prometheus exited: {child.log_path.read_text()[-2000:]}"
            try:
                result = _query(
                    prom, 'sum(crypton_api_requests_total{route="/v1/markets",status="200"})'
                )
            except httpx.TransportError:
                result = []  # not listening yet
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503:
                    raise
                result = []  # listening, still loading its storage: "not ready"
            if result and float(result[0]["value"][1]) >= 5:
                break
            assert time.monotonic() < deadline, f"no scrape with 5 requests in 60 s: {result}"
            time.sleep(0.5)
        (up,) = _query(prom, 'up{job="crypton-api"}')
        assert up["value"][1] == "1"
        rules = prom.get("/api/v1/rules").json()["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) == len(_alerts())
        assert all(r["health"] != "err" for g in rules for r in g["rules"])
