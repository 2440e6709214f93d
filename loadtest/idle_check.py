"""Idle check: what ``crypton up`` costs when nobody trades.

    python -m loadtest.idle_check [--seconds 30] [--limit 10] [--nodes 1]

Starts ``crypton up`` (Apache Kafka, dataflow, API) on free loopback ports in a
temporary data directory, runs ``crypton demo`` against it, lets it settle, then
measures the CPU time of every process of the exchange over ``--seconds`` and
prints it as a percentage of one core, per process and in all. Exits 1 when the
total is above ``--limit`` percent (the issue's bound: 10% of one core), 2 when
the exchange does not come up. Stops everything and removes its directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from crypton.config import Settings
from crypton.process import free_port, free_ports, settings_env, wait_for_port


def _say(line: str) -> None:
    print(line, flush=True)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_seconds(processes: Sequence[psutil.Process]) -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for process in processes:
        try:
            times = process.cpu_times()
            out[process.pid] = (_label(process), times.user + times.system)
        except psutil.NoSuchProcess:
            continue
    return out


def _label(process: psutil.Process) -> str:
    try:
        cmdline = " ".join(process.cmdline())
    except psutil.Error:
        return str(process.name())
    for needle, name in (
        ("kafka.Kafka", "kafka broker"),
        ("bytewax.run", "dataflow"),
        ("uvicorn", "api"),
        ("crypton.cli up", "supervisor"),
        ("crypton up", "supervisor"),
    ):
        if needle in cmdline:
            return name
    return str(process.name())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.idle_check", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    parser.add_argument("--settle", type=float, default=10.0, help="wait after the demo")
    parser.add_argument("--limit", type=float, default=10.0, help="percent of one core allowed")
    parser.add_argument("--nodes", type=int, default=1, help="Kafka nodes")
    args = parser.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="crypton-idle-"))
    settings = Settings(
        data_dir=data,
        kafka_port=free_ports(2 * args.nodes),
        nodes=args.nodes,
        api_port=free_port(),
        topic_prefix="idle.",
    )
    env = settings_env(settings)
    log = open(data / "up.log", "wb")  # noqa: SIM115 - closed in finally
    up = subprocess.Popen(
        [sys.executable, "-m", "crypton.cli", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _say(f"idle_check: crypton up ({args.nodes} Kafka node(s)), data in {data}")
        if not wait_for_port(settings.api_host, settings.api_port, 180):
            _say(f"idle_check: the API did not open its port (log: {data / 'up.log'})")
            return 2
        deadline = time.monotonic() + 120
        while "is up" not in (data / "up.log").read_text(errors="replace"):
            if time.monotonic() > deadline or up.poll() is not None:
                _say(f"idle_check: crypton up did not come up (log: {data / 'up.log'})")
                return 2
            time.sleep(0.5)
        _say("idle_check: running crypton demo")
        demo = subprocess.run(
            [sys.executable, "-m", "crypton.cli", "demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if demo.returncode != 0:
            _say(f"idle_check: crypton demo failed: {demo.stderr.strip()[-300:]}")
            return 2
        _say(f"idle_check: demo done; settling {args.settle:g}s, then measuring {args.seconds:g}s")
        time.sleep(args.settle)
        root = psutil.Process(up.pid)
        before = _cpu_seconds(_tree(root))
        started = time.monotonic()
        time.sleep(args.seconds)
        after = _cpu_seconds(_tree(root))
        elapsed = time.monotonic() - started
        per_name: dict[str, float] = {}
        for pid, (name, seconds) in after.items():
            used = seconds - before.get(pid, (name, 0.0))[1]
            per_name[name] = per_name.get(name, 0.0) + used
        total = 100 * sum(per_name.values()) / elapsed
        for name, used in sorted(per_name.items(), key=lambda item: -item[1]):
            _say(f"  {name:14} {100 * used / elapsed:5.1f}% of one core")
        verdict = "ok" if total <= args.limit else "TOO HIGH"
        _say(
            f"idle cpu: {total:.1f}% of one core, all processes (limit {args.limit:g}%): {verdict}"
        )
        return 0 if total <= args.limit else 1
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
