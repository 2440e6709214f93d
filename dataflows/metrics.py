"""Prometheus metrics of the dataflow process (served when CRYPTON_DATAFLOW_METRICS_PORT is set).

Besides counters of what the steps process and emit:

- ``crypton_dataflow_consumer_lag{topic, partition}``: records of an inbox partition
  not read yet (high watermark minus the next offset to read), from the consumer's
  cached watermark, refreshed at most once a second per partition;
- ``crypton_dataflow_command_state_seconds{step}``: from the time the API stamped a
  command to the moment a step emits an order state it caused (wall clock, for
  operators only: nothing the steps decide reads it);
- ``crypton_dataflow_snapshot_bytes_total{step}`` and
  ``crypton_dataflow_snapshot_seconds_total{step}``: what the steps hand Bytewax's
  recovery store at epoch closes (the packed state of the keys awoken in the epoch)
  and the time ``snapshot()`` took; their rates are the store's write rate and the
  share of the flow's thread the epochs' snapshots cost;
- ``crypton_dataflow_epoch_stall_seconds``: how long the inbox partitions wait at
  each epoch close (``EpochStall``): per epoch, the longest time an inbox partition
  was polled after it was due, from its close until the flow finished the epoch (the
  steps' ``snapshot()``, the sink's flush, Bytewax writing and committing the epoch).
  A message that arrives then waits that long.

The steps call into these once per key and batch, so they count in plain integers
(``StepCounts``) that a collector reads when Prometheus scrapes, rather than
paying a locked Prometheus increment per call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, ClassVar

from prometheus_client import REGISTRY, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "EPOCH_SNAPSHOT",
    "EPOCH_STALL_BUCKETS",
    "EpochStall",
    "PartitionStall",
    "StepCounts",
    "observe_lag",
    "serve",
]

log = logging.getLogger("crypton.dataflow")

CONSUMER_LAG = Gauge(
    "crypton_dataflow_consumer_lag",
    "Records of an inbox partition not read yet",
    ["topic", "partition"],
)
COMMAND_STATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Upper bounds (seconds) of ``crypton_dataflow_command_state_seconds``."""
_BUCKETS_MS = tuple(bound * 1000 for bound in COMMAND_STATE_BUCKETS)
EPOCH_SNAPSHOT = Histogram(
    "crypton_dataflow_epoch_snapshot_seconds",
    "Time of one epoch close in a step's snapshot() calls (observed at its next batch)",
    ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)

EPOCH_STALL_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5,
)  # fmt: skip
"""Upper bounds (seconds) of ``crypton_dataflow_epoch_stall_seconds``: fine around the
10 ms goal, since a quantile read from buckets is only as precise as they are."""

_LAG_EVERY_S = 1.0
_lag_checked: dict[tuple[str, int], float] = {}


class StepCounts:
    """The counters of one step on one worker: plain numbers, read at scrape time."""

    __slots__ = (
        "base_bytes",
        "base_failures",
        "dead",
        "emitted",
        "idle_base_s",
        "idle_bases",
        "latency_buckets",
        "latency_sum",
        "messages",
        "replayed",
        "restored",
        "settled",
        "snapshot_bytes",
        "snapshot_s",
        "stale",
        "step",
        "trades",
    )

    def __init__(self, step: str) -> None:
        self.step = step
        self.messages = self.emitted = self.trades = self.dead = self.snapshot_bytes = 0
        self.stale = self.base_bytes = self.replayed = self.restored = 0
        self.settled = self.base_failures = self.idle_bases = 0
        self.snapshot_s = self.latency_sum = self.idle_base_s = 0.0
        self.latency_buckets = [0] * (len(COMMAND_STATE_BUCKETS) + 1)
        _Counts.all.append(self)

    def add(self, trades: int, dead: int, stamps: list[int] | None) -> None:
        """Count ``trades``, ``dead`` letters and order states for commands the API
        stamped at ``stamps`` (milliseconds); the steps count messages themselves."""
        self.trades += trades
        self.dead += dead
        if stamps:
            # Per run of equal stamps, not per state: a batch's orders were stamped within
            # a few milliseconds of each other, in order (at full speed 1,000 states, a
            # dozen stamps), and a bucket per state cost the flow's thread 3% of its time
            # (py-spy). Runs, not a ``Counter``: most calls count a key's few states, and
            # a Counter costs 1.4 us to make.
            now_ms = time.time() * 1000
            total_ms = 0.0
            run, count = stamps[0], 0
            for stamped in stamps:
                if stamped != run:
                    total_ms += self._observe(now_ms, run, count)
                    run, count = stamped, 0
                count += 1
            total_ms += self._observe(now_ms, run, count)
            self.latency_sum += total_ms / 1000

    def _observe(self, now_ms: float, stamped: int, count: int) -> float:
        """Count ``count`` states of commands stamped at ``stamped``; their latency in ms."""
        ms = max(0.0, now_ms - stamped)
        self.latency_buckets[bisect_left(_BUCKETS_MS, ms)] += count
        return ms * count


class EpochStall:
    """How long the inbox partitions of one worker wait at each epoch close.

    Bytewax advances an input partition to the next epoch (calling its ``snapshot()``)
    and then polls it again only once the whole flow has finished the epoch before:
    the steps' ``snapshot()``, the sink's flush, the recovery store's write and commit,
    and every other input partition's own close (each closes when *its* interval has
    elapsed). A message arriving then waits. Each inbox partition reports, at its first
    ``next_batch`` after a ``snapshot()``, how long after it was due it was polled
    (``waited``): due at its close, or later if its own back-off asked for later. The
    longest wait of an epoch is observed, once, when the next epoch begins.

    Plain numbers on the hot path, rendered at scrape.

    >>> stall = EpochStall()
    >>> stall.epoch(1); stall.waited(0.030); stall.waited(0.005)  # two partitions
    >>> stall.count, stall.epoch(2), stall.count, round(stall.total, 3)
    (0, None, 1, 0.03)
    """

    __slots__ = ("buckets", "count", "current", "total", "worst")

    all: ClassVar[list[EpochStall]] = []
    _by_thread: ClassVar[dict[int, EpochStall]] = {}

    def __init__(self) -> None:
        self.current = 0
        """The epoch under way, counted in ``snapshot()`` calls of a partition."""
        self.worst: float | None = None
        """The longest wait of the epoch under way, if a partition reported one."""
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(EPOCH_STALL_BUCKETS) + 1)

    @classmethod
    def here(cls) -> EpochStall:
        """The tracker of the calling thread (a worker's inbox partitions)."""
        ident = threading.get_ident()
        stall = cls._by_thread.get(ident)
        if stall is None:
            stall = cls._by_thread[ident] = cls()
            cls.all.append(stall)
        return stall

    def waited(self, seconds: float) -> None:
        """A partition was polled ``seconds`` after it was due, after its close."""
        if self.worst is None or seconds > self.worst:
            self.worst = seconds

    def epoch(self, closing: int) -> None:
        """A partition closes its ``closing``-th epoch: the one before it is over."""
        if closing <= self.current:
            return
        self.current = closing
        worst = self.worst
        if worst is not None:
            self.worst = None
            self.count += 1
            self.total += worst
            self.buckets[bisect_left(EPOCH_STALL_BUCKETS, worst)] += 1


class PartitionStall:
    """What one inbox partition reports to its worker's ``EpochStall``: it is due to be
    polled when its epoch closes, or when its own back-off ends if that is later; its
    first poll after a close reports how long past due it came.

    >>> part = PartitionStall(EpochStall())
    >>> part.closing(10.0); part.polled(10.030)  # polled 30 ms after its close
    >>> part.backing_off(20.050); part.closing(20.0); part.polled(20.060)  # 10 ms late
    >>> part.stall.epoch(3); part.stall.count, round(part.stall.total, 3)
    (2, 0.04)
    """

    __slots__ = ("closed", "due", "epochs", "stall")

    def __init__(self, stall: EpochStall | None = None) -> None:
        self.stall = stall or EpochStall.here()
        self.closed: float | None = None
        """When (``time.monotonic``) its last epoch closed, until it is polled again."""
        self.due = 0.0
        """When its back-off asked to be polled next (0: at once)."""
        self.epochs = 0

    def polled(self, now: float) -> None:
        """``next_batch`` was called at ``now``."""
        closed = self.closed
        if closed is not None:
            self.closed = None
            self.stall.waited(max(0.0, now - max(closed, self.due)))

    def backing_off(self, until: float) -> None:
        """The partition asked to be polled no earlier than ``until`` (0: at once)."""
        self.due = until

    def closing(self, now: float) -> None:
        """``snapshot()`` was called: the partition's epoch closed at ``now``."""
        self.epochs += 1
        self.stall.epoch(self.epochs)
        self.closed = now


def _histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: tuple[float, ...],
    counts: list[int],
    total: float,
) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
    family.add_metric(labels, buckets, total)


class _Counts(Collector):
    all: ClassVar[list[StepCounts]] = []

    def collect(self) -> Iterator[Metric]:
        steps = list(self.all)
        families = {
            "messages": ("crypton_dataflow_messages", "Inbox messages processed"),
            "emitted": ("crypton_dataflow_emitted", "Messages emitted"),
            "dead": ("crypton_dataflow_dead_letters", "Messages sent to dead letters"),
            "snapshot_bytes": (
                "crypton_dataflow_snapshot_bytes",
                "Bytes of state handed to the recovery store at epoch closes",
            ),
            "base_bytes": (
                "crypton_dataflow_base_bytes",
                "Bytes of large states written whole to the bases topic (dataflows.bases)",
            ),
            "base_failures": (
                "crypton_dataflow_base_failures",
                "Bases the bases topic did not store (the state stayed whole or on its old base)",
            ),
            "idle_bases": (
                "crypton_dataflow_idle_bases",
                "Bases taken while the flow waited for input, not at an epoch close",
            ),
            "idle_base_s": (
                "crypton_dataflow_idle_base_seconds",
                "Seconds spent taking bases while the flow waited for input",
            ),
            "replayed": (
                "crypton_dataflow_replayed_messages",
                "Inbox messages applied again to rebuild a machine from its base",
            ),
            "restored": (
                "crypton_dataflow_restored_from_base",
                "Machines rebuilt from a base and their inbox since (a delta snapshot)",
            ),
            "settled": (
                "crypton_dataflow_settled_reads",
                "Machines resumed from their settled snapshot, read on their first message"
                " (dataflows.recovery)",
            ),
            "snapshot_s": (
                "crypton_dataflow_snapshot_seconds",
                "Seconds spent in the steps' snapshot() at epoch closes",
            ),
            "stale": (
                "crypton_dataflow_stale_messages",
                "Messages dropped as stale: from an origin the machine forgot, older than"
                " the dedupe window (a repeat; see crypton.domain.sequencing)",
            ),
        }
        names = sorted({counts.step for counts in steps})
        for attribute, (name, doc) in families.items():
            family = CounterMetricFamily(name, doc, labels=["step"])
            for step in names:
                total = sum(getattr(c, attribute) for c in steps if c.step == step)
                family.add_metric([step], total)
            yield family
        trades = CounterMetricFamily("crypton_dataflow_trades", "Trades executed")
        trades.add_metric([], sum(c.trades for c in steps))
        yield trades
        latency = HistogramMetricFamily(
            "crypton_dataflow_command_state_seconds",
            "From the API's stamp on a command to a step emitting the order state it caused",
            labels=["step"],
        )
        for step in names:
            mine = [c for c in steps if c.step == step]
            counts = [
                sum(c.latency_buckets[i] for c in mine)
                for i in range(len(COMMAND_STATE_BUCKETS) + 1)
            ]
            _histogram(
                latency, [step], COMMAND_STATE_BUCKETS, counts, sum(c.latency_sum for c in mine)
            )
        yield latency
        stalls = list(EpochStall.all)
        stall = HistogramMetricFamily(
            "crypton_dataflow_epoch_stall_seconds",
            "How long an inbox partition waited past its wake-up at an epoch close",
        )
        counts = [sum(s.buckets[i] for s in stalls) for i in range(len(EPOCH_STALL_BUCKETS) + 1)]
        _histogram(stall, [], EPOCH_STALL_BUCKETS, counts, sum(s.total for s in stalls))
        yield stall


REGISTRY.register(_Counts())


def observe_lag(consumer: Any, topic: str, partition: int, next_offset: int) -> None:
    """Set the lag of ``topic``/``partition`` from ``consumer``'s cached high watermark
    (no broker round trip); cheap enough to call on every batch."""
    now = time.monotonic()
    key = (topic, partition)
    if now - _lag_checked.get(key, 0.0) < _LAG_EVERY_S:
        return
    _lag_checked[key] = now
    try:
        from confluent_kafka import TopicPartition  # noqa: PLC0415 - the hot path skips it

        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except Exception:  # a closing consumer: the next call tries again
        return
    if high >= 0:
        CONSUMER_LAG.labels(topic, str(partition)).set(max(0, high - next_offset))


def serve(port: int) -> None:
    """Serve /metrics; CRYPTON_DATAFLOW_METRICS_HOST=0.0.0.0 lets a pod monitor reach it.
    A busy port costs the metrics, not the dataflow."""
    host = os.environ.get("CRYPTON_DATAFLOW_METRICS_HOST", "127.0.0.1")
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served on %s:%s: %s", host, port, exc)
