"""What the benchmarked processes use, read from the outside: ``/proc`` and their
Prometheus endpoints. Nothing here imports the code it measures."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "EPOCH_STALL",
    "cpu_seconds",
    "dir_bytes",
    "histogram_quantile",
    "machine_busy",
    "metric_sums",
    "metrics_text",
    "rss_mib",
    "snapshot_metrics",
    "written_bytes",
]


def rss_mib(pid: int | None) -> float:
    """Resident memory of ``pid`` (VmRSS) in MiB; NaN if it is gone."""
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def written_bytes(pid: int | None) -> int:
    """``write_bytes`` of ``/proc/<pid>/io``: bytes the process sent to the block layer."""
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of ``pid`` (``/proc/<pid>/stat``), 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command's closing parenthesis: utime and stime are fields 12 and 13.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def dir_bytes(path: Path) -> int:
    """Total size of the files in ``path`` (the recovery partitions and their WAL)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in path.iterdir():
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total


def metrics_text(port: int) -> str:
    """The dataflow's Prometheus text, or "" when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
            text: str = answer.read().decode()
            return text
    except OSError:
        return ""


def metric_sums(texts: Iterable[str], prefix: str, where: str = "") -> dict[str, float]:
    """Sums of every sample whose name starts with ``prefix`` (and whose line holds
    ``where``, e.g. a label) over labels and processes, buckets kept apart by ``le``;
    empty when no process exports such a metric."""
    sums: dict[str, float] = {}
    for text in texts:
        for line in text.splitlines():
            if not line.startswith(prefix) or where not in line:
                continue
            name, _, value = line.rpartition(" ")
            metric = name.split("{", 1)[0]
            if 'le="' in name:
                metric += "{le=" + name.split('le="', 1)[1].split('"', 1)[0] + "}"
            with contextlib.suppress(ValueError):
                sums[metric] = sums.get(metric, 0.0) + float(value)
    return sums


EPOCH_STALL = "crypton_dataflow_epoch_stall_seconds"


def snapshot_metrics(texts: Iterable[str]) -> dict[str, float]:
    """The ``crypton_dataflow_snapshot_*``, ``crypton_dataflow_base_bytes`` and
    ``crypton_dataflow_epoch_stall_seconds`` samples, summed (see :func:`metric_sums`)."""
    texts = list(texts)
    return (
        metric_sums(texts, "crypton_dataflow_snapshot_")
        | metric_sums(texts, "crypton_dataflow_base_bytes")
        | metric_sums(texts, EPOCH_STALL)
    )


def histogram_quantile(sums: dict[str, float], prefix: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of a summed histogram."""
    buckets = sorted(
        (float(k.split("{le=", 1)[1].rstrip("}").replace("+Inf", "inf")), v)
        for k, v in sums.items()
        if k.startswith(prefix + "_bucket{le=")
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= target)


# --- the load, written to the wallet inbox as the API would --------------------------------
