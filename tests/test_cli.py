"""The ``crypton`` command: parsing, process command lines, one-line errors, ``up``."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import types
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from crypton import cli
from crypton.config import Settings
from crypton.process import free_port, free_ports, settings_env
from tests.processes import read_until


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crypton.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CRYPTON_PARTITIONS", "many"), ("CRYPTON_PARTITIONS", "0"), ("CRYPTON_BROKER", "noida")],
)
@pytest.mark.parametrize("command", ["topics", "broker", "up"])
def test_a_bad_setting_is_one_error_line(command: str, variable: str, value: str) -> None:
    done = _run(command, env={**os.environ, variable: value})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"crypton: error: {variable}=")
    assert "Traceback" not in done.stderr


def test_extra_arguments_pass_through_to_the_dataflow_and_the_api() -> None:
    parse = cli.build_parser().parse_known_args
    assert parse(["dataflow", "-w", "2"])[1] == ["-w", "2"]
    assert parse(["api", "--kafka-timeout", "3", "--log-level", "debug"])[1] == [
        "--log-level",
        "debug",
    ]


def test_unknown_options_of_our_own_commands_are_refused() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["topics", "--bogus"])
    assert exit_.value.code == 2


def test_process_command_lines(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, snapshot_seconds=7, api_host="0.0.0.0", api_port=8123)
    flow = cli.dataflow_command(settings, ["-w", "2"])
    assert flow[1:] == [
        "-m", "bytewax.run", "dataflows.exchange:flow",
        "-r", str(tmp_path / "recovery"), "-s", "7", "-b", "0", "-w", "2",
    ]  # fmt: skip
    api = cli.api_command(settings)
    assert api[1:] == [
        "-m", "uvicorn", "api.app:create_app", "--factory",
        "--http", "api._server:HeaderTimeoutH11Protocol", "--host", "0.0.0.0", "--port", "8123",
        "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip


def test_admin_token_is_created_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRYPTON_ADMIN_TOKEN", raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    token = cli.ensure_admin_token(settings)
    path = tmp_path / "data" / "admin-token"
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli.ensure_admin_token(settings) == token
    monkeypatch.setenv("CRYPTON_ADMIN_TOKEN", "from-env")
    assert cli.ensure_admin_token(settings) == "from-env"


def test_recovery_store_is_initialised_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = cli.ensure_recovery_store(settings)
    files = sorted(p.name for p in store.iterdir())
    assert files  # bytewax created its partition files
    mtimes = [p.stat().st_mtime_ns for p in store.iterdir()]
    assert cli.ensure_recovery_store(settings) == store
    assert [p.stat().st_mtime_ns for p in store.iterdir()] == mtimes


def test_demo_and_audit_dispatch_to_the_lead_modules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[Settings, list[str]]] = []

    def fake_main(settings: Settings, args: list[str]) -> int:
        calls.append((settings, args))
        return 5

    monkeypatch.setitem(sys.modules, "crypton.audit", types.SimpleNamespace(main=fake_main))
    monkeypatch.setenv("CRYPTON_PARTITIONS", "6")
    assert cli.main(["audit", "--strict"]) == 5
    assert calls == [(Settings.from_env(), ["--strict"])]
    assert calls[0][0].partitions == 6


def _children(pid: int) -> dict[str, int]:
    """Child processes of ``pid`` by the module or binary they run."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat_fields[1]) == pid:
            words = [w.decode() for w in cmdline]
            name = "dataflow" if "bytewax.run" in words else "api" if "uvicorn" in words else "?"
            found[name] = int(entry.name)
    return found


def _up(
    data_dir: Path, broker_kind: str, metrics_port: int
) -> tuple[Settings, subprocess.Popen[str]]:
    """``crypton up`` on free ports of its own (the dataflow's metrics on ``metrics_port``)."""
    settings = Settings(
        data_dir=data_dir, broker=broker_kind, kafka_port=free_ports(2), api_port=free_port()
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "crypton.cli", "up", "--grace", "5"],
        env=settings_env(settings) | {"CRYPTON_DATAFLOW_METRICS_PORT": str(metrics_port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return settings, proc


@pytest.mark.integration
def test_up_runs_everything_restarts_the_dataflow_and_stops_cleanly(
    tmp_path: Path, broker_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRYPTON_ADMIN_TOKEN", raising=False)
    settings, proc = _up(tmp_path, broker_kind, free_port())
    try:
        out = read_until(proc, "Ctrl-C stops everything", 60)
        token = (tmp_path / "admin-token").read_text().strip()
        assert f"admin token:  {tmp_path / 'admin-token'}" in out
        assert token not in out  # it would end up in logs and CI output
        # "up" only once the API is ready and the dataflow answers on its metrics port.
        assert f"Crypton is up. API http://127.0.0.1:{settings.api_port} (docs at " in out
        assert f"{settings.api_port}/schema)" in out
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{settings.api_port}/", timeout=5)
        except urllib.error.HTTPError as answered:  # any HTTP answer: the server runs
            assert answered.code < 500

        os.kill(_children(proc.pid)["dataflow"], signal.SIGKILL)
        out = read_until(proc, "dataflow restarted", 20)
        assert "dataflow exited with code -9; restarting in 1s" in out

        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        order = [line.split()[0] for line in rest.splitlines() if " stopped (code" in line]
        assert order == ["api", "dataflow", "broker"]
        assert _children(proc.pid) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_recovery_store_gets_a_partition_per_process(tmp_path: Path) -> None:
    store = cli.ensure_recovery_store(Settings(data_dir=tmp_path), 2)
    assert sorted(p.name for p in store.glob("*.sqlite3")) == ["part-0.sqlite3", "part-1.sqlite3"]
    for part in store.glob("*.sqlite3"):  # small pages, still Bytewax's WAL store
        with closing(sqlite3.connect(part)) as db:
            assert db.execute("PRAGMA page_size").fetchone() == (cli.RECOVERY_PAGE_SIZE,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("SELECT part_index FROM parts").fetchone() is not None
    assert not list(tmp_path.glob(".recovery-*"))  # made aside, renamed into place
    # Made once: a later call with another count keeps the store as it is.
    cli.ensure_recovery_store(Settings(data_dir=tmp_path), 4)
    assert len(list(store.glob("*.sqlite3"))) == 2


def test_cluster_addresses_of_dataflow_options() -> None:
    peers = "127.0.0.1:2101;127.0.0.1:2102"
    assert cli._addresses(["-i", "1", "-a", peers]) == peers.split(";")
    assert cli._addresses([f"--addresses={peers}"]) == peers.split(";")
    assert cli._addresses(["-w", "2"]) == []
    assert cli.cluster_arguments(0, peers.split(";")) == ["-i", "0", "-a", peers]


def test_up_refuses_more_workers_than_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CRYPTON_PARTITIONS", "2")
    assert cli.main(["up", "--dataflow-processes", "2", "-w", "2"]) == 2
    assert "4 dataflow workers need at least as many partitions" in capsys.readouterr().err


def test_up_with_the_api_port_taken_is_one_error_line_and_starts_nothing(
    tmp_path: Path, broker_kind: str
) -> None:
    settings = Settings(data_dir=tmp_path, broker=broker_kind, kafka_port=free_ports(2))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run("up", env=settings_env(settings) | {"CRYPTON_API_PORT": str(port)})
    assert done.returncode == 2
    assert done.stderr == (
        f"crypton: error: port {port} on 127.0.0.1 is already in use"
        " (another `crypton up`? set CRYPTON_API_PORT to a free port)\n"
    )
    assert not (tmp_path / "kafka").exists()  # refused before the broker started


@pytest.mark.integration
def test_up_with_the_metrics_port_taken_says_so_and_comes_up(
    tmp_path: Path, broker_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRYPTON_ADMIN_TOKEN", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _, proc = _up(tmp_path, broker_kind, port)
        try:
            out = read_until(proc, "Ctrl-C stops everything", 60)
            assert f"port {port} is already in use: the dataflow serves no metrics" in out
            assert "Crypton is up." in out  # the API answered; the flow was not asked
            # At once: a signal between the start-up's last line and the supervisor's own
            # handlers stops everything too (it was lost, and `up` ran on, in 5 of 10 runs).
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
