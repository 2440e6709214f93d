"""``crypton_dataflow_epoch_stall_seconds``: how long an inbox partition waits past its
wake-up at an epoch close, measured where the inbox source measures it.

- Unit: an epoch is observed once, as the longest wait any partition reported, and a
  partition's own back-off is not counted as a wait.
- Through a real Bytewax run: Bytewax polls a partition whose epoch closed only once
  the flow finished the epoch, so a sink whose flush takes 30 ms shows up as closes
  of at least 30 ms, one per epoch.
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

from dataflows.metrics import EPOCH_STALL_BUCKETS, EpochStall, PartitionStall


def test_an_epoch_is_observed_once_as_its_longest_wait() -> None:
    stall = EpochStall()
    wallet, book = PartitionStall(stall), PartitionStall(stall)
    wallet.closing(1.0)  # the wallet partition closes epoch 1
    book.backing_off(1.100)  # the book partition is quiet: due again at 1.1 anyway
    book.closing(1.050)
    wallet.polled(1.040)  # 40 ms after its close
    book.polled(1.110)  # 10 ms after its back-off ended: its close cost it 10 ms
    wallet.polled(1.2)  # a later poll in the same epoch is no wait
    assert stall.count == 0  # observed when the next epoch begins
    wallet.closing(3.0)
    book.closing(3.0)
    assert stall.count == 1
    assert abs(stall.total - 0.040) < 1e-9
    assert stall.buckets[EPOCH_STALL_BUCKETS.index(0.05)] == 1
    stall.epoch(3)  # an epoch no partition reported a wait for is not observed
    assert stall.count == 1


FLUSH_S = 0.03


class _Partition(StatefulSourcePartition[tuple[str, int], int]):
    """Reports to ``PartitionStall`` as ``dataflows.kafka_io._InboxPartition`` does."""

    def __init__(self, stall: EpochStall, name: str) -> None:
        self.stall, self.name, self.sent = PartitionStall(stall), name, 0

    def next_batch(self) -> list[tuple[str, int]]:
        now = time.monotonic()
        self.stall.polled(now)
        self.sent += 1
        if self.sent > 150:
            raise StopIteration
        self.stall.backing_off(now + 0.002)
        return [(f"{self.name}-{self.sent % 3}", self.sent)]

    def next_awake(self) -> datetime:
        return datetime.now(UTC) + timedelta(milliseconds=2)

    def snapshot(self) -> int:
        self.stall.closing(time.monotonic())
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
