"""`crypton demo` plays its session against a running exchange and the log stays clean."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from crypton.config import Settings
from crypton.process import Child, settings_env
from tests.api.support import ADMIN_TOKEN, ApiServer
from tests.dataflows.kafka_support import start_dataflow, wait_clean_audit

pytestmark = pytest.mark.integration


def test_demo_trades_and_the_audit_is_clean(
    settings: Settings, spawn: Callable[..., Child], api_server: ApiServer
) -> None:
    start_dataflow(spawn, settings)
    env = settings_env(settings) | {"CRYPTON_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "crypton.cli", "demo", "--url", api_server.url],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "latest trades:" in out
    assert "#1 " in out and "#3 " in out, out  # the crossing buy and the market buy traded
    assert "alice:" in out and "bob:" in out
    # What is printed after the cancels shows them: alice's asks left the book and her
    # wallet holds nothing (2 BTC less the 0.8997 bob bought).
    assert out.count("-> CANCELED") == 2, out
    assert "asks []" in out, out
    assert "alice: BTC 1.1003 (+0 held)" in out, out
    report = wait_clean_audit(settings)
    assert report.clean, "\n".join(report.lines)


def test_demo_without_an_api_is_one_error_line(settings: Settings) -> None:
    env = settings_env(settings) | {"CRYPTON_ADMIN_TOKEN": "x"}
    done = subprocess.run(
        [sys.executable, "-m", "crypton.cli", "demo", "--url", "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("crypton: error:"), done.stderr
