"""The read model fed by the state topics: a background thread folds every record.

Every replica reads *all* partitions itself (``assign``, no consumer group) and
folds them into its own view file (``api._view``, ``crypton.viewstore``), which
stores, in the same transaction as each batch, the next offset of every
partition. At start the replica checks the file against the cluster, loads the
little that is hot (open orders, depth, recent trades) and resumes the tail from
the stored offsets: start-up follows what happened since the last run, not the
length of the log. No offsets are committed to Kafka. Queries take the lock
briefly; the thread holds it once per consumed batch, not per record.

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
from pathlib import Path
from typing import Any, Final, Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from crypton import codec, schema, signing
from crypton.config import Settings
from crypton.kafka import consume_now, consumer_config
from crypton.readmodel import ReadModel

from ._view import VIEW_DIR, View
from .metrics import Metrics

log = logging.getLogger("crypton.api.readmodel")

Kind = Literal["order", "balance", "trade", "depth", "transfer", "user"]
JOURNAL: Final = 1000
"""Order, balance and fill events kept per user, so an SSE client can resume after a gap."""
_USER_KINDS: Final = frozenset({"order", "balance", "trade"})
"""What a user's stream carries (a trade as the user's fill): their offsets are its cursor."""
_REFRESH_S: Final = 2.0
_BATCH: Final = 5000
_LIVE_BATCH: Final = 500


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
    def __init__(self, settings: Settings, metrics: Metrics, directory: Path | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.directory = directory or settings.data_dir / VIEW_DIR
        """Where the view file lives (``CRYPTON_READMODEL_DIR``)."""
        self.model = ReadModel()
        """Empty until the thread opened the view; nothing is served before ``ready``."""
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        self.on_changes: Callable[[list[Change]], None] = lambda _: None
        self.journals: dict[str, Journal] = defaultdict(Journal)
        self.journal_floor: dict[tuple[str, int], int] = {}
        """Per (kind, partition): the highest offset applied before journaling began (at
        ready). A client resuming from below it may have missed events: it must resync."""
        self.positions: dict[tuple[str, int], int] = {}
        """Per (kind, partition) of orders, balances and trades: the last offset applied."""
        self.connected = False
        self._signed = signing.required_secret()
        """Set: users records need the API's MAC (a forged one could replace a key)."""
        # The topics this replica folds, each decoded by its spec; what a record
        # changes is decided by the spec's fold rule inside ``ReadModel.apply_batch``.
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
        self._topics = {kind: name for name, (kind, _) in self._kinds.items()}
        self._assigned: set[tuple[str, int]] = set()
        self._targets: dict[tuple[str, int], int] = {}
        self._resume: dict[tuple[str, int], int] | None = None
        """The stored next offsets, once the view was checked against the cluster."""
        self._view: View | None = None
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
        try:
            self._view = View.open(self.directory, self.settings.topic_prefix)
        except Exception:
            log.exception("read model view %s cannot be opened", self.directory)
            raise
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
                # Catching up, large batches (one transaction each); then small ones:
                # queries wait for a batch's transaction, so it must stay short.
                batch = _BATCH if not self.ready.is_set() else _LIVE_BATCH
                messages = consume_now(consumer, batch, 0.1)
                if messages:
                    self._apply(messages)
        except Exception:  # a dead read model must be loud: /ready turns false
            log.exception("read model thread failed")
            self.ready.clear()
            self.metrics.ready.set(0)
            raise
        finally:
            consumer.close()
            with self.lock:
                self.model = ReadModel()
                if self._view is not None:
                    self._view.close()

    def _open_view(self, consumer: Consumer, metadata: Any) -> bool:
        """Check the stored view against the cluster (discard it if it describes another
        log), load what must be hot and remember where to resume; False to try again."""
        assert self._view is not None
        view = self._view
        reason = view.foreign(metadata.cluster_id)
        offsets = view.store.offsets()
        if reason is None:
            for (topic, partition), nxt in offsets.items():
                meta = metadata.topics.get(topic)
                if meta is None or meta.error is not None or partition not in meta.partitions:
                    reason = f"{topic}[{partition}] no longer exists"
                    break
                try:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=5
                    )
                except KafkaException as exc:
                    log.warning("no end offset for %s[%d] yet: %s", topic, partition, exc)
                    return False
                if nxt > high:
                    # The topics were recreated (or belong to another cluster): the
                    # view is ahead of the log it claims to fold.
                    reason = f"{topic}[{partition}] ends at {high}, the view is at {nxt}"
                    break
                if nxt < low:
                    # Records the view never saw were deleted (retention, not compaction,
                    # which keeps the latest record of every key).
                    reason = f"{topic}[{partition}] starts at {low}, the view is at {nxt}"
                    break
        if reason is not None:
            log.warning("read model view %s discarded (%s): rebuilding", view.path, reason)
            view.rebuild()
            offsets = {}
        view.claim(metadata.cluster_id)
        began = time.monotonic()
        model = ReadModel(view.store).load()
        with self.lock:
            self.model = model
            for (topic, partition), nxt in offsets.items():
                kind = self._kinds[topic][0] if topic in self._kinds else None
                if kind in _USER_KINDS:
                    self.positions[(kind, partition)] = nxt - 1
                    self.journal_floor[(kind, partition)] = nxt - 1
        log.info(
            "read model view %s: %d partitions to resume, hot state loaded in %.2f s",
            view.path, len(offsets), time.monotonic() - began,
        )  # fmt: skip
        self._resume = offsets
        return True

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
        if self._resume is None and not self._open_view(consumer, metadata):
            return
        assert self._resume is not None
        new = []
        for topic in self._kinds:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for partition in meta.partitions:
                if (topic, partition) in self._assigned:
                    continue
                start = self._resume.get((topic, partition), OFFSET_BEGINNING)
                tp = TopicPartition(topic, partition, start)
                if not self.ready.is_set():
                    try:
                        _, high = consumer.get_watermark_offsets(tp, timeout=5)
                    except KafkaException as exc:
                        # A partition without a leader yet (just created, or its
                        # broker failing over): try again at the next refresh.
                        log.warning("no end offset for %s[%d] yet: %s", topic, partition, exc)
                        continue
                    if high > max(start, 0):
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
        counts: dict[str, int] = defaultdict(int)
        applied: dict[str, int] = defaultdict(int)
        offsets: dict[tuple[str, int], int] = {}
        records: list[Any] = []
        raws: list[bytes] = []
        places: list[tuple[Kind, int, int]] = []
        for m in messages:
            err = m.error()
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._targets.pop((topic, partition), None)
                else:
                    log.warning("consume error on %s: %s", topic, err)
                continue
            # Consumed, whatever becomes of it: the view resumes after it.
            offsets[(topic, partition)] = offset + 1
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
            records.append(record)
            raws.append(value)
            places.append((kind, partition, offset))
        changes: list[Change] = []
        with self.lock:
            changed = self.model.apply_batch(records, offsets, raws)
            journaling = self.ready.is_set()
            for record, accepted, (kind, partition, offset) in zip(
                records, changed, places, strict=True
            ):
                if kind in _USER_KINDS:
                    self.positions[(kind, partition)] = offset
                    if not journaling:
                        # Catching up: journals would hold the whole history.
                        self.journal_floor[(kind, partition)] = offset
                if not accepted:
                    continue
                applied[self._topic_of(kind)] += 1
                change = Change(kind, record, partition, offset)
                if journaling and kind == "trade":
                    # A fill for each side: both users' streams carry it.
                    self.journals[record.maker_user_id].add(change)
                    self.journals[record.taker_user_id].add(change)
                elif journaling and kind in _USER_KINDS:
                    self.journals[record.user_id].add(change)
                changes.append(change)
        for topic, n in counts.items():
            self.metrics.records.labels(topic).inc(n)
        for topic, n in applied.items():
            self.metrics.applied.labels(topic).inc(n)
        self._check_ready()
        if changes:
            self.on_changes(changes)

    def _topic_of(self, kind: Kind) -> str:
        return self._topics[kind]

    def evicted(self, user_id: str) -> dict[tuple[str, int], int]:
        """Per (kind, partition): the highest offset of the user's events that this
        replica no longer holds (call under the lock)."""
        out = dict(self.journal_floor)
        journal = self.journals.get(user_id)
        for key, offset in (journal.evicted if journal else {}).items():
            out[key] = max(out.get(key, -1), offset)
        return out

    def _check_ready(self) -> None:
        if (
            not self.ready.is_set()
            and self.connected
            and self._resume is not None
            and not self._targets
        ):
            self.ready_after_s = time.monotonic() - self.started_at
            log.info("read model caught up in %.2f s", self.ready_after_s)
            self.metrics.ready.set(1)
            self.ready.set()
