"""The read model fed by the state topics: a background thread folds every record.

Every replica reads *all* partitions itself (``assign``, no consumer group), from
the beginning, then keeps tailing; no offsets are committed, because the state
is in memory and must be rebuilt from the log on every start. Queries take the
lock briefly; the thread holds it once per consumed batch, not per record.

Changes are handed to the asyncio side (``on_changes``) after each batch so
that SSE clients and ``?wait=true`` requests see them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from crypton import codec, schema, signing
from crypton.config import Settings
from crypton.kafka import consumer_config
from crypton.readmodel import ReadModel

from .metrics import Metrics

log = logging.getLogger("crypton.api.readmodel")

Kind = Literal["order", "balance", "trade", "depth", "transfer", "user"]
JOURNAL: Final = 1000
"""Order, balance and fill events kept per user, so an SSE client can resume after a gap."""
_USER_KINDS: Final = frozenset({"order", "balance", "trade"})
"""What a user's stream carries (a trade as the user's fill): their offsets are its cursor."""
_REFRESH_S: Final = 2.0
_BATCH: Final = 5000


@dataclass(frozen=True, slots=True)
class Change:
    """A record that changed the view, with its place in the log."""

    kind: Kind
    record: Any
    partition: int
    offset: int


@dataclass
class Journal:
    """A user's recent order, balance and fill changes, in the order this replica applied
    them."""

    events: deque[Change] = field(default_factory=lambda: deque(maxlen=JOURNAL))
    evicted: dict[tuple[str, int], int] = field(default_factory=dict)
    """Per (kind, partition): the highest offset that fell out of ``events``."""

    def add(self, change: Change) -> None:
        if len(self.events) == self.events.maxlen:
            old = self.events[0]
            key = (old.kind, old.partition)
            self.evicted[key] = max(self.evicted.get(key, -1), old.offset)
        self.events.append(change)


class LiveReadModel:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model = ReadModel()
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        self.on_changes: Callable[[list[Change]], None] = lambda _: None
        self.journals: dict[str, Journal] = defaultdict(Journal)
        self.positions: dict[tuple[str, int], int] = {}
        """Per (kind, partition) of orders, balances and trades: the last offset applied."""
        self.connected = False
        self._signed = signing.required_secret()
        """Set: users records need the API's MAC (a forged one could replace a key)."""
        # The topics this replica folds, each decoded by its spec; what a record
        # changes is decided by the spec's fold rule inside ``ReadModel.apply``.
        table: list[tuple[schema.TopicSpec, Kind]] = [
            (schema.ORDERS, "order"),
            (schema.BALANCES, "balance"),
            (schema.TRADES, "trade"),
            (schema.DEPTH, "depth"),
            (schema.TRANSFERS, "transfer"),
            (schema.USERS, "user"),
        ]
        self._kinds: dict[str, tuple[Kind, Callable[[bytes], Any]]] = {
            spec.name(settings.topic_prefix): (kind, spec.decode) for spec, kind in table
        }
        self._assigned: set[tuple[str, int]] = set()
        self._targets: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crypton-api-readmodel", daemon=True)

    @contextmanager
    def read(self) -> Iterator[ReadModel]:
        with self.lock:
            yield self.model

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    # --- the consuming thread ---------------------------------------------------------

    def _run(self) -> None:
        consumer = Consumer(
            consumer_config(
                self.settings,
                **{
                    # Unused (we assign and never commit) but required by the client.
                    "group.id": f"crypton-api-{uuid.uuid4().hex}",
                    "enable.partition.eof": True,
                    # Kafka answers a waiting fetch when a record arrives: no latency
                    # cost, and an idle API does not poll the broker 20 times a second.
                    "fetch.wait.max.ms": 500,
                },
            )
        )
        next_refresh = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_refresh:
                    self._refresh(consumer)
                    next_refresh = now + _REFRESH_S
                messages = consumer.consume(_BATCH, 0.1)
                if messages:
                    self._apply(messages)
        except Exception:  # a dead read model must be loud: /ready turns false
            log.exception("read model thread failed")
            self.ready.clear()
            self.metrics.ready.set(0)
            raise
        finally:
            consumer.close()

    def _refresh(self, consumer: Consumer) -> None:
        """Assign partitions that appeared (topics provisioned after we started), and
        update connectivity and lag."""
        try:
            metadata = consumer.list_topics(timeout=2)
        except Exception as exc:
            self.connected = False
            log.warning("broker unreachable: %s", exc)
            return
        self.connected = True
        new = []
        for topic in self._kinds:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for partition in meta.partitions:
                if (topic, partition) in self._assigned:
                    continue
                tp = TopicPartition(topic, partition, OFFSET_BEGINNING)
                if not self.ready.is_set():
                    try:
                        _, high = consumer.get_watermark_offsets(tp, timeout=5)
                    except KafkaException as exc:
                        # A partition without a leader yet (just created, or its
                        # broker failing over): try again at the next refresh.
                        log.warning("no end offset for %s[%d] yet: %s", topic, partition, exc)
                        continue
                    if high > 0:
                        self._targets[(topic, partition)] = high
                self._assigned.add((topic, partition))
                new.append(tp)
                kind = self._kinds[topic][0]
                if kind in ("order", "balance"):
                    # Every partition appears in a stream cursor, so that even a client
                    # that saw nothing yet has a position to resume from.
                    with self.lock:
                        self.positions.setdefault((kind, partition), -1)
        if new:
            consumer.incremental_assign(new)
        self._check_ready()
        self._measure_lag(consumer)

    def _measure_lag(self, consumer: Consumer) -> None:
        lag: dict[str, int] = defaultdict(int)
        assigned = [TopicPartition(t, p) for t, p in self._assigned]
        for tp in consumer.position(assigned) if assigned else []:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                lag[tp.topic] += max(0, high - max(tp.offset, 0))
        for topic in self._kinds:
            self.metrics.lag.labels(topic).set(lag.get(topic, 0))

    def _apply(self, messages: list[Any]) -> None:
        changes: list[Change] = []
        counts: dict[str, int] = defaultdict(int)
        applied: dict[str, int] = defaultdict(int)
        with self.lock:
            for m in messages:
                err = m.error()
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self._targets.pop((topic, partition), None)
                    else:
                        log.warning("consume error on %s: %s", topic, err)
                    continue
                target = self._targets.get((topic, partition))
                if target is not None and offset + 1 >= target:
                    del self._targets[(topic, partition)]
                kind, decode = self._kinds[topic]
                counts[topic] += 1
                value = m.value()
                if value is None:  # a tombstone: compaction's deletion marker
                    continue
                if (
                    kind == "user"
                    and self._signed is not None
                    and not signing.verify(self._signed, topic, m.key() or b"", value, m.headers())
                ):
                    self.metrics.unsigned.labels(topic).inc()
                    log.warning("unsigned record %s[%d]@%d ignored", topic, partition, offset)
                    continue
                try:
                    record = decode(value)
                except codec.DECODE_ERRORS as exc:
                    self.metrics.decode_errors.labels(topic).inc()
                    log.warning("undecodable record %s[%d]@%d: %s", topic, partition, offset, exc)
                    continue
                if kind in _USER_KINDS:
                    self.positions[(kind, partition)] = offset
                if not self.model.apply(record):
                    continue
                applied[topic] += 1
                change = Change(kind, record, partition, offset)
                if kind == "trade":
                    # A fill for each side: both users' streams carry it.
                    self.journals[record.maker_user_id].add(change)
                    self.journals[record.taker_user_id].add(change)
                elif kind in _USER_KINDS:
                    self.journals[record.user_id].add(change)
                changes.append(change)
        for topic, n in counts.items():
            self.metrics.records.labels(topic).inc(n)
        for topic, n in applied.items():
            self.metrics.applied.labels(topic).inc(n)
        self._check_ready()
        if changes:
            self.on_changes(changes)

    def _check_ready(self) -> None:
        if not self.ready.is_set() and self.connected and not self._targets:
            self.ready_after_s = time.monotonic() - self.started_at
            log.info("read model caught up in %.2f s", self.ready_after_s)
            self.metrics.ready.set(1)
            self.ready.set()
