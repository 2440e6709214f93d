"""``loadtest.bench_replicas`` splits the CPU of ``crypton up``'s process tree by kind:
each child (with its own children) counts as Kafka, dataflow or API by its command
line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from loadtest.bench_replicas import _cpu_by_kind

# Burns about half a CPU second, says so, then waits to be killed.
BUSY = """
import time
end = time.process_time() + 0.5
while time.process_time() < end:
    pass
print("done", flush=True)
time.sleep(60)
"""
# Stands for `crypton up`: a "dataflow" child whose own child does the work, and an
# idle "API" child.
ROOT = """
import subprocess, sys
busy, idle = sys.argv[1], "import time; time.sleep(60)"
spawner = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]])"
children = [
    subprocess.Popen([sys.executable, "-c", spawner, busy, "-m", "bytewax.run"]),
    subprocess.Popen([sys.executable, "-c", idle, "-m", "uvicorn"]),
]
for child in children:
    child.wait()
"""


def test_cpu_is_counted_under_the_kind_of_the_child_that_spent_it() -> None:
    root = subprocess.Popen(
        [sys.executable, "-c", ROOT, BUSY], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert root.stdout is not None
        assert root.stdout.readline().strip() == b"done"
        used = _cpu_by_kind(root.pid)
        assert used["dataflow"] >= 0.4, used
        assert used["api"] < 0.3 and used["kafka"] == 0, used
    finally:
        os.killpg(root.pid, signal.SIGKILL)  # the whole tree: its own process group
        root.wait()
