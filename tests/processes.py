"""Helpers for tests that drive a command-line process and read what it prints."""

from __future__ import annotations

import os
import select
import subprocess
import time


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
