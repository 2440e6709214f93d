"""``crypton monitor``: a real Prometheus watching the running exchange, with dashboards.

It runs the machine's ``prometheus`` (Debian: ``apt-get install prometheus``) in the
foreground with a configuration written into the data directory: it scrapes the
API's ``/metrics`` and the dataflow's (``crypton up`` serves them on 127.0.0.1:9100),
loads the alert rules of ``monitoring/alerts.yml`` and serves the console
dashboards of ``monitoring/consoles/`` at ``/consoles/crypton.html``. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from crypton.broker import BrokerError, port_in_use
from crypton.config import Settings
from crypton.process import Child

__all__ = ["DATAFLOW_METRICS_PORT", "main", "monitoring_dir", "prometheus_config", "wait_http"]

DATAFLOW_METRICS_PORT = 9100
"""Where ``crypton up`` serves the dataflow's metrics unless told otherwise."""
CONSOLE = "/consoles/crypton.html"


class MonitorError(RuntimeError):
    """Something the user can fix: a missing binary or directory, a busy port."""


def monitoring_dir() -> Path:
    """``monitoring/`` of this checkout (or ``CRYPTON_MONITORING_DIR``)."""
    path = Path(
        os.environ.get("CRYPTON_MONITORING_DIR") or Path(__file__).parents[1] / "monitoring"
    )
    if not (path / "alerts.yml").is_file() or not (path / "consoles").is_dir():
        raise MonitorError(
            f"no alert rules and consoles in {path}: set CRYPTON_MONITORING_DIR to the "
            "project's monitoring/ directory"
        )
    return path.absolute()


def dataflow_target() -> str:
    port = os.environ.get("CRYPTON_DATAFLOW_METRICS_PORT") or str(DATAFLOW_METRICS_PORT)
    return f"127.0.0.1:{port}"


def prometheus_config(api: str, dataflow: str, rules: Path, interval: str = "5s") -> dict[str, Any]:
    """The configuration: both jobs named as in ``monitoring/prometheus.yml`` (the
    alert rules select jobs by those names). ``api`` and ``dataflow`` are
    comma-separated ``host:port`` lists (replicas, processes of one dataflow)."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "crypton-api", "static_configs": [{"targets": api.split(",")}]},
            {
                "job_name": "crypton-dataflow",
                "static_configs": [{"targets": dataflow.split(",")}],
            },
        ],
    }


def wait_http(
    url: str,
    timeout: float,
    child: Child | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """Whether ``url`` answers 200 within ``timeout`` seconds; gives up early if
    ``child`` exits or ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (child is not None and child.poll() is not None) or (stop and stop.is_set()):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crypton monitor", description=__doc__)
    parser.add_argument("--port", type=int, default=9090, help="Prometheus port (default 9090)")
    parser.add_argument(
        "--api",
        default=f"{settings.api_host}:{settings.api_port}",
        help="the APIs to scrape, host:port[,host:port...] (default from CRYPTON_API_HOST/PORT)",
    )
    parser.add_argument(
        "--dataflow",
        default=dataflow_target(),
        help="the dataflow processes' metrics, host:port[,host:port...] (default 127.0.0.1:"
        "$CRYPTON_DATAFLOW_METRICS_PORT or 9100)",
    )
    parser.add_argument("--interval", default="5s", help="scrape interval (default 5s)")
    parser.add_argument(
        "--retention", default="2d", help="how long Prometheus keeps samples (default 2d)"
    )
    return parser


def main(settings: Settings, argv: Sequence[str] = ()) -> int:
    args = _parser(settings).parse_args(list(argv))
    try:
        return _run(settings, args)
    except MonitorError as exc:
        print(f"crypton: error: {exc}", file=sys.stderr, flush=True)
        return 2


def _run(settings: Settings, args: argparse.Namespace) -> int:
    binary = shutil.which("prometheus")
    if binary is None:
        raise MonitorError("prometheus is not installed: apt-get install -y prometheus")
    try:
        taken = port_in_use("127.0.0.1", args.port)
    except BrokerError as exc:
        raise MonitorError(str(exc)) from None
    if taken:
        # Checked first: another Prometheus there would answer the readiness probe for
        # ours, which then exits unable to bind.
        raise MonitorError(
            f"port {args.port} on 127.0.0.1 is already in use"
            " (another Prometheus? choose a port with --port)"
        )
    monitoring = monitoring_dir()
    home = (settings.data_dir / "prometheus").absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    # JSON is YAML: no YAML library needed at run time.
    body = prometheus_config(args.api, args.dataflow, monitoring / "alerts.yml", args.interval)
    config.write_text(json.dumps(body, indent=2) + "\n", "utf-8")
    url = f"http://127.0.0.1:{args.port}"
    argv = [
        binary,
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{args.port}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--storage.tsdb.retention.time={args.retention}",
        f"--web.console.templates={monitoring / 'consoles'}",
        f"--web.console.libraries={monitoring / 'consoles' / 'lib'}",
        "--log.level=warn",
    ]
    log_path = settings.data_dir.absolute() / "logs" / "prometheus.log"
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    child = Child("prometheus", argv, log_path, env=dict(os.environ)).start()
    try:
        if not wait_http(f"{url}/-/ready", 60, child, stop):
            if stop.is_set():
                return 0
            raise MonitorError(f"Prometheus did not start (log: {log_path})")
        print(f"Prometheus is up at {url}, scraping the API at {args.api} and the dataflow "
              f"at {args.dataflow}", flush=True)  # fmt: skip
        print(f"  dashboards:  {url}{CONSOLE}", flush=True)
        print(f"  alerts:      {url}/alerts    targets: {url}/targets", flush=True)
        print(f"  config:      {config}\n  log:         {log_path}", flush=True)
        print("Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            code = child.poll()
            if code is not None:
                raise MonitorError(f"Prometheus exited with code {code} (log: {log_path})")
    finally:
        child.stop(grace=10)
    return 0
