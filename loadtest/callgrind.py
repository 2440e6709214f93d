"""Run a module of ours under valgrind's callgrind and read how many instructions it
spent inside one function: what ``core_instructions`` and ``flow_instructions`` count.

Counts, unlike timings, do not move with a busy machine; ``PYTHONHASHSEED=0`` makes
the dicts probe alike from run to run, so two runs of one tree agree to a few hundred
thousandths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["CountFailed", "Counted", "count"]


class CountFailed(Exception):  # noqa: N818 (it is what it says)
    """Why nothing was counted, in one line, and the exit code that says so (2: no
    valgrind, 1: the run failed). A run that counted 0 (the function never ran) is the
    caller's to explain: it knows why."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.line = line
        self.code = code


@dataclass(frozen=True)
class Counted:
    instructions: int
    stderr: str
    """What the counted run printed there (its own lines, then valgrind's)."""


def count(what: str, module: str, inside: str, *args: str) -> Counted:
    """Instructions ``python -m module *args`` spent inside the C function ``inside``
    (``--toggle-collect``), under ``PYTHONHASHSEED=0``; ``what`` it counts, for the
    progress line."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise CountFailed("valgrind not found (apt-get install valgrind)", 2)
    print(f"counting {what} under valgrind ...", file=sys.stderr, flush=True)
    run = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
         f"--toggle-collect={inside}", sys.executable, "-m", module, *args],
        env=os.environ | {"PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
    if run.returncode != 0 or found is None:
        last = run.stderr.strip().splitlines()[-1:] or ["no output"]
        raise CountFailed(f"valgrind run failed: {last[0]}", 1)
    return Counted(int(found.group(1).replace(",", "")), run.stderr)
