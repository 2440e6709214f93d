"""The supervisor restarts what dies (with capped backoff) and stops all in reverse order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crypton.process import Child
from crypton.supervisor import Supervisor, Together

CRASH = [sys.executable, "-c", "raise SystemExit(3)"]
SLEEP = ["sleep", "60"]


def _supervise_for(supervisor: Supervisor, seconds: float) -> None:
    supervisor.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.01)


def test_a_dying_child_is_restarted_with_capped_backoff(tmp_path: Path) -> None:
    lines: list[str] = []
    crasher = Child("crasher", CRASH, tmp_path / "crasher.log")
    sleeper = Child("sleeper", SLEEP, tmp_path / "sleeper.log")
    supervisor = Supervisor(
        [sleeper, crasher], backoff=0.05, max_backoff=0.2, stable_after=60, say=lines.append
    )
    try:
        _supervise_for(supervisor, 1.5)
        assert supervisor.restarts("crasher") >= 4
        assert supervisor.restarts("sleeper") == 0
        delays = [line.split("restarting in ")[1].split("s ")[0] for line in lines if "in " in line]
        assert delays[:4] == ["0.05", "0.1", "0.2", "0.2"]  # doubled, then capped
        assert lines[0] == (
            f"crasher exited with code 3; restarting in 0.05s (log: {tmp_path / 'crasher.log'})"
        )
        assert sleeper.running
    finally:
        supervisor.stop_all()
    assert not sleeper.running


def test_backoff_resets_after_a_stable_run(tmp_path: Path) -> None:
    lines: list[str] = []
    crasher = Child("crasher", CRASH, tmp_path / "crasher.log")
    supervisor = Supervisor([crasher], backoff=0.05, stable_after=0, say=lines.append)
    _supervise_for(supervisor, 0.5)
    delays = {line.split("restarting in ")[1].split("s ")[0] for line in lines if "in " in line}
    assert delays == {"0.05"}


def test_a_start_that_fails_is_retried_not_fatal(tmp_path: Path) -> None:
    lines: list[str] = []
    missing = Child("missing", [str(tmp_path / "no-such-binary")], tmp_path / "m.log")
    supervisor = Supervisor([missing], backoff=0.05, say=lines.append)
    _supervise_for(supervisor, 0.3)
    assert lines[0].startswith("missing failed to start: ")
    assert len(lines) >= 2


SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path
    from crypton.process import Child
    from crypton.supervisor import Supervisor

    logs = Path(sys.argv[1])
    stubborn = ("import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "print('ignoring', flush=True); time.sleep(60)")
    first = Child("first", ["sleep", "60"], logs / "first.log")
    second = Child("second", [sys.executable, "-c", stubborn], logs / "second.log")
    supervisor = Supervisor([first, second], grace=0.5)
    supervisor.start()
    # The stubborn child says when its handler is in place (slow on a busy machine).
    while "ignoring" not in (logs / "second.log").read_text():
        time.sleep(0.02)
    print("pids", first.pid, second.pid, flush=True)
    supervisor.run(poll_interval=0.05)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_everything_in_reverse_order(tmp_path: Path, signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()[1:]]
    time.sleep(0.3)  # let the stubborn child install its handler
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == f"stopping (received {signal.Signals(signum).name})"
    assert lines[1].startswith("second stopped (code -9,")  # ignored SIGTERM: killed
    assert lines[2].startswith("first stopped (code -15,")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
]


def test_a_group_restarts_member_by_member_and_stops_together(tmp_path: Path) -> None:
    lines: list[str] = []
    nodes = [Child(f"node-{n}", STUBBORN, tmp_path / f"node-{n}.log") for n in (1, 2, 3)]
    app = Child("app", SLEEP, tmp_path / "app.log")
    supervisor = Supervisor([nodes, app], backoff=0.05, grace=1.0, say=lines.append)
    try:
        _supervise_for(supervisor, 0.3)
        nodes[1].signal(signal.SIGKILL)
        nodes[1].wait(5)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.01)
        assert [supervisor.restarts(n.name) for n in nodes] == [0, 1, 0]
        assert all(n.running for n in nodes)
        time.sleep(0.3)  # let the restarted node install its handler
    finally:
        began = time.monotonic()
        supervisor.stop_all()
        took = time.monotonic() - began
    # Three nodes that ignore SIGTERM cost one grace period, not three.
    assert took < 2.5, took
    stopped = [line.split()[0] for line in lines if " stopped (code" in line]
    assert stopped[0] == "app" and sorted(stopped[1:]) == ["node-1", "node-2", "node-3"]
    assert not any(n.running for n in nodes)


def test_processes_together_restart_as_one(tmp_path: Path) -> None:
    lines: list[str] = []
    crasher = Child(
        "flow-1", [sys.executable, "-c", "import time; time.sleep(0.3)"], tmp_path / "1.log"
    )
    sleeper = Child("flow-0", SLEEP, tmp_path / "0.log")
    cluster = Together("dataflow", [sleeper, crasher])
    supervisor = Supervisor([cluster], backoff=0.05, stable_after=60, say=lines.append)
    try:
        supervisor.start()
        first = sleeper.pid
        deadline = time.monotonic() + 5
        while supervisor.restarts("dataflow") < 1 and time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.01)
        # One member ended: the other was stopped and both started again.
        assert supervisor.restarts("dataflow") >= 1
        assert sleeper.running and sleeper.pid != first
        assert lines[0].startswith(
            f"dataflow exited with code 0; restarting in 0.05s (log: {tmp_path / '1.log'}"
        )
    finally:
        supervisor.stop_all()
    assert not sleeper.running and not crasher.running
