"""``crypton_dataflow_epoch_stall_seconds``: the gap an epoch close leaves between two
``next_batch`` calls, measured where the inbox source measures it.

- Unit: an epoch is observed once, as the longest gap its close left, however many
  steps (inputs closing on their own clocks) the close took.
- Through a real Bytewax run: Bytewax calls the steps' and the sink's ``snapshot()``
  and writes the epoch between two ``next_batch`` calls, so a sink whose flush takes
  30 ms shows up as closes of at least 30 ms, one per epoch.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from dataflows.metrics import EPOCH_STALL_BUCKETS, EpochStall


def test_an_epoch_is_observed_once_as_its_longest_close_gap() -> None:
    stall = EpochStall()
    stall.epoch(1)  # the wallet inbox closes epoch 1
    stall.leave(0.0)
    stall.enter(0.5)  # a plain gap (an idle back-off) is no stall
    stall.leave(1.0)
    stall.mark()  # the wallet step snapshots
    stall.enter(1.002)
    stall.epoch(1)  # the book inbox closes epoch 1, later
    stall.leave(1.2)
    stall.mark()  # the book step, the sink, the recovery store and its commit
    stall.enter(1.240)
    stall.leave(1.241)
    stall.enter(1.3)
    assert stall.count == 0  # observed when the next epoch begins
    stall.epoch(2)
    stall.epoch(2)
    assert stall.count == 1
    assert abs(stall.total - 0.040) < 1e-9
    assert stall.buckets[EPOCH_STALL_BUCKETS.index(0.05)] == 1
    stall.epoch(3)  # an epoch with no marked gap is not observed
    assert stall.count == 1


FLUSH_S = 0.03


class _Partition(StatefulSourcePartition[tuple[str, int], int]):
    """Times ``next_batch`` as ``dataflows.kafka_io._InboxPartition`` does."""

    def __init__(self, stall: EpochStall, name: str) -> None:
        self.stall, self.name, self.sent, self.epochs = stall, name, 0, 0

    def next_batch(self) -> list[tuple[str, int]]:
        self.stall.enter(time.perf_counter())
        try:
            self.sent += 1
            if self.sent > 150:
                raise StopIteration
            return [(f"{self.name}-{self.sent % 3}", self.sent)]
        finally:
            self.stall.leave(time.perf_counter())

    def next_awake(self) -> datetime:
        return datetime.now(UTC) + timedelta(milliseconds=2)

    def snapshot(self) -> int:
        self.epochs += 1
        self.stall.epoch(self.epochs)
        return self.sent


class _Source(FixedPartitionedSource[tuple[str, int], int]):
    def __init__(self, stall: EpochStall) -> None:
        self.stall = stall

    def list_parts(self) -> list[str]:
        return ["0", "1"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Partition:
        return _Partition(self.stall, for_part)


class _SlowFlush(StatefulSinkPartition[int, None]):
    def __init__(self, stall: EpochStall) -> None:
        self.stall = stall

    def write_batch(self, values: list[int]) -> None:
        pass

    def snapshot(self) -> None:
        self.stall.mark()
        time.sleep(FLUSH_S)  # a producer flush waiting for acknowledgements


class _Sink(FixedPartitionedSink[int, None]):
    def __init__(self, stall: EpochStall) -> None:
        self.stall = stall

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SlowFlush:
        return _SlowFlush(self.stall)


def test_a_slow_sink_flush_is_a_stall_of_each_epoch_close(tmp_path: Path) -> None:
    stall = EpochStall()
    flow = Dataflow("stall")
    counted = op.stateful_map("count", op.input("in", flow, _Source(stall)), _count)
    op.output("out", counted, _Sink(stall))
    init_db_dir(tmp_path, 1)
    began = time.perf_counter()
    run_main(
        flow,
        epoch_interval=timedelta(milliseconds=60),
        recovery_config=RecoveryConfig(str(tmp_path)),
    )
    epochs = (time.perf_counter() - began) / 0.06
    assert stall.count >= 2
    assert stall.count <= epochs + 1  # one observation per close, not one per gap
    assert stall.total / stall.count >= FLUSH_S
    assert stall.total / stall.count < FLUSH_S + 0.05


def _count(seen: int | None, value: int) -> tuple[int, int]:
    seen = (seen or 0) + 1
    return seen, seen
