"""Helpers for tests that drive a command-line process and read what it prints."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crypton.config import Settings

SNAPSHOT_SECONDS = 2
"""The epoch interval of every exchange the tests run (the default is 10 s): the crash
and fault tests kill processes within seconds and must find epochs committed."""


def read_until(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """stdout of ``proc`` up to (at least) the first line containing ``text``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # raw reads: a buffered readline would hide lines from select
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"no {text!r} in {seen!r} (code {proc.poll()})")
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 65536).decode()
    return seen


@dataclass
class CryptonUp:
    """``crypton up`` in a child process; its stdout in ``out_path``."""

    settings: Settings
    proc: subprocess.Popen[bytes]
    out_path: Path

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float, after: int = 0) -> None:
        """Until ``text`` appears in the output past character ``after``."""
        deadline = time.monotonic() + timeout
        while text not in self.output()[after:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"crypton up exited ({self.proc.returncode}): {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s in: {self.output()[after:]}")
            time.sleep(0.2)

    def children(self) -> Iterator[tuple[int, bytes]]:
        """(pid, NUL-separated command line) of each running child of ``crypton up``."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if parent == self.proc.pid:
                yield int(entry.name), cmdline
