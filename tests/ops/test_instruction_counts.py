"""``loadtest.core_instructions`` and ``loadtest.flow_instructions``: a count under
valgrind, or one clear line saying why not; and the flow's parts, run over inboxes in
memory, go through both steps until nothing is left."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crypton import schema
from crypton.domain import matching
from loadtest import flow_instructions

ROOT = Path(__file__).resolve().parents[2]

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="valgrind is not installed"
)


def _run(module: str, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None if path is None else {"PATH": path}
    return subprocess.run(
        [sys.executable, "-m", f"loadtest.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "size"), [("core_instructions", "--commands"), ("flow_instructions", "--orders")]
)
def test_without_valgrind_it_says_so_in_one_line(module: str, size: str, tmp_path: Path) -> None:
    run = _run(module, size, "100", path=str(tmp_path))  # a PATH with nothing on it
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: valgrind not found (apt-get install valgrind)"
    ]


@needs_valgrind
def test_it_counts_the_compiled_core_or_says_it_is_not_compiled() -> None:
    run = _run("core_instructions", "--commands", "300")
    if matching.__file__.endswith(".so"):
        assert run.returncode == 0, run.stderr
        found = re.search(r"instructions +[\d,]+ in run_batch, ([\d,]+) a command", run.stdout)
        assert found is not None, run.stdout
        assert int(found.group(1).replace(",", "")) > 1000
    else:
        assert run.returncode == 1
        assert run.stderr.strip().splitlines()[-1] == (
            "error: nothing counted: the core is not compiled (make mypyc)"
        )


def test_the_orders_go_through_both_steps_until_nothing_is_left() -> None:
    flow = flow_instructions._run(300, 2024)
    logs = flow.wallet_logs + flow.book_logs
    assert all(log.taken == len(log.records) for log in logs)
    # Every order reached a book (held orders in batches) and came back settled.
    assert flow.sink.records[schema.BOOK_INBOX.name()] > 0
    assert flow.sink.records[schema.WALLET_INBOX.name()] > 0
    assert (
        sum(len(log.records) for log in flow.book_logs)
        == flow.sink.records[schema.BOOK_INBOX.name()]
    )
    # The state records wait in the producer's queue: at least each order's NEW.
    assert len(flow.sink._producer) > 300
    assert flow.calls > 0 and flow.emitted > 300


@needs_valgrind
def test_it_counts_the_flow_an_order() -> None:
    run = _run("flow_instructions", "--orders", "300")
    assert run.returncode == 0, run.stderr
    found = re.search(r"instructions +[\d,]+: ([\d,]+) an order", run.stdout)
    assert found is not None, run.stdout
    assert int(found.group(1).replace(",", "")) > 10_000
