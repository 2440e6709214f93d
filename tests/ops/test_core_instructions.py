"""``loadtest.core_instructions``: a count under valgrind, or one clear line saying why not."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crypton.domain import matching

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None if path is None else {"PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "loadtest.core_instructions", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_without_valgrind_it_says_so_in_one_line(tmp_path: Path) -> None:
    run = _run("--commands", "100", path=str(tmp_path))  # a PATH with nothing on it
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: valgrind not found (apt-get install valgrind)"
    ]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_it_counts_the_compiled_core_or_says_it_is_not_compiled() -> None:
    run = _run("--commands", "300")
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
