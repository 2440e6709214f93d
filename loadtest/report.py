"""What the benchmarks leave behind: results as JSON and, with ``--plot``, PNG plots.

Every result file names the machine and the broker it came from, so a figure in
``docs/benchmarks.md`` can always be traced to where it was measured. Plots use
matplotlib (a dev extra) with the Agg backend: no display needed.

    python -m loadtest.bench_core --out docs/benchmarks --plot
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_OUT",
    "add_arguments",
    "broker_label",
    "cdf",
    "footer",
    "machine",
    "percentile",
    "plotting",
    "save",
    "write_json",
]

DEFAULT_OUT = Path(__file__).parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out DIR`` and ``--plot``, the same for every benchmark."""
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where results (JSON) and plots (PNG) go (default {DEFAULT_OUT})",
    )
    parser.add_argument("--plot", action="store_true", help="also draw PNG plots (matplotlib)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine a result came from."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def broker_label(kind: str) -> str:
    """The broker a result came from, with its version."""
    from crypton.broker import KAFKA_VERSION  # noqa: PLC0415 - keeps bench_core broker-free

    return f"Apache Kafka {KAFKA_VERSION} (1 node, KRaft)" if kind == "kafka" else kind


def write_json(out: Path, name: str, results: dict[str, Any], **context: Any) -> Path:
    """``out/name.json``: the results with the machine, the time and ``context``
    (broker, parameters)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    body = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **context,
        "results": results,
    }
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n", "utf-8")
    print(f"results: {path}", file=sys.stderr, flush=True)
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; NaN if there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(sorted values, fraction at or below each)``: a CDF to plot.

    >>> cdf([3, 1, 2])
    ([1, 2, 3], [0.3333333333333333, 0.6666666666666666, 1.0])
    """
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def plotting() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or exit with how to install it."""
    try:
        import matplotlib  # noqa: PLC0415 - only --plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[dev]'") from None
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def footer(fig: Any, context: str) -> None:
    """The machine under every plot."""
    m = machine()
    fig.text(
        0.01, -0.03, f"{context} · {m['cpu']} · {m['cores']} cores · Python {m['python']}",
        fontsize=7, color="0.4",
    )  # fmt: skip


def save(fig: Any, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    print(f"plot: {path}", file=sys.stderr, flush=True)
    return path
