"""Kafka input and output for the exchange flow, leaner than Bytewax's stock connectors.

The source reads one inbox topic, one Bytewax partition per Kafka partition,
decodes each record straight into domain messages (undecodable ones become
``DeadLetter``s) and yields them keyed by the topic's key (user or market) with
their position (``position``: the record's offset and the message's index in it),
and snapshots the next offset, so a resumed flow rereads exactly what followed its
last snapshot.

The sink writes each batch in the order of the positions its records carry: the
steps run per key, so Bytewax hands over one key's outputs after another's, and
the positions put back the order in which the inbox asked for them. What one step
sends the other goes to the other's inbox as **one record per inbox partition and
sink call** (``TopicSpec.decode_all``), in that order: a record costs the flow's one
thread a ``produce`` call and a decode, and the broker an entry, whatever its size,
and under load most of a step's outputs are for the other step. A lone message is
written as its own keyed record, as a command is.

The sink produces asynchronously and waits for the broker's acknowledgements
only when an epoch closes (in ``snapshot``): Bytewax commits an epoch only
after every sink partition snapshotted, so everything a committed epoch
emitted is durable (at-least-once), without a broker round trip per batch as
the stock sink's ``flush()`` after every ``write_batch`` costs.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, ClassVar, Final

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from crypton import signing
from crypton.config import Settings
from crypton.domain.messages import DeadLetter, Message
from crypton.kafka import admin, consumer_config, producer_config, topic_partitions
from crypton.schema import BOOK_INBOX, WALLET_INBOX, TopicSpec, batch_value
from crypton.topics import partition_for
from dataflows import metrics

__all__ = [
    "DEAD_LETTER_KEY",
    "POSITION_BITS",
    "BookBatch",
    "Inbound",
    "InboxSource",
    "LogSink",
    "SinkDeliveryError",
    "Tagged",
    "WalletBatch",
    "is_book",
    "offset_of",
    "position",
    "when_idle",
    "worker_hash",
]

log = logging.getLogger("crypton.dataflow")

Inbound = tuple[int, Message]
"""An inbox message with its position in its inbox partition (``position``)."""

Tagged = tuple[int, str, bytes, bytes]
"""A record to write, ``(position, topic, key, value)``, with the inbox position of the
message that caused it (one tuple a record: a tuple in a tuple cost a record one more
to make, free and track)."""

_position = itemgetter(0)

POSITION_BITS: Final = 20
"""An inbox message's position is its record's offset shifted left by this, plus its
index in the record: positions order messages as the log does, and a record holds at
most ``_BATCH_MESSAGES`` (fewer than 2 ** 20) messages."""


def position(offset: int, index: int = 0) -> int:
    """The position of message ``index`` of the record at ``offset``.

    >>> offset_of(position(7, 3)), position(7, 3) > position(7, 2) > position(6, 999)
    (7, True)
    """
    return (offset << POSITION_BITS) | index


def offset_of(position: int) -> int:
    """The offset of the record holding the message at ``position``."""
    return position >> POSITION_BITS


DEAD_LETTER_KEY = ""
"""The state key of undecodable records: they reach no machine and leave no state."""

# Back-off of an empty partition: short while records flow (it bounds the hop latency),
# longer once the partition has been quiet for a while, so an idle exchange sleeps.
_IDLE = timedelta(milliseconds=2)
_QUIET = timedelta(milliseconds=50)
_QUIET_AFTER_S = 1.0
IDLE_BUDGET_S: Final = 0.002
"""Seconds of idle work (``when_idle``) one empty poll starts, at most (a unit of work
already begun, one machine's base or a slice of a book's, runs to its end); as long
again passes before the next, so that every partition is polled between two: Bytewax
polls a worker's partitions one after another, and each ran its own slice, so a record
arriving then waited for up to eight."""


class _Idle(threading.local):
    """Whether each inbox partition of this worker thread came up empty at its last
    poll, and what to do on the thread while all of them do. Bytewax builds a worker's
    partitions on its thread (``join``), and the polls keep the rest up to date."""

    def __init__(self) -> None:
        self.empty: dict[tuple[str, int], bool] = {}
        self.work: list[weakref.WeakMethod[Callable[[float], None]]] = []
        self.next_at = 0.0
        """When idle work may run again (``time.monotonic``; ``IDLE_BUDGET_S``)."""

    def join(self, partition: tuple[str, int]) -> None:
        """Count ``partition`` (topic, number) as not empty until it is polled."""
        self.empty[partition] = False


_idle = _Idle()


def when_idle(work: Callable[[float], None]) -> None:
    """Call ``work(seconds)`` on this thread whenever every inbox partition it reads had
    nothing at its last poll: the flow is waiting for input, and ``work`` may spend about
    ``seconds`` (``IDLE_BUDGET_S``) on what it would otherwise do at the epoch close.
    A burst never waits for it: while any partition has records, it is not called.
    ``work`` is a bound method, held weakly: its object (a step, with its producer of
    bases) goes when the flow that made it does."""
    _idle.work.append(weakref.WeakMethod(work))


def _run_idle_work(idle: _Idle) -> None:
    for ref in list(idle.work):
        work = ref()
        if work is None:
            idle.work.remove(ref)
        else:
            work(IDLE_BUDGET_S)


# Kafka answers a waiting fetch as soon as a record arrives, so a long wait costs no
# latency and keeps an idle consumer from polling the broker many times a second.
FETCH_WAIT_MS = int(os.environ.get("CRYPTON_FETCH_WAIT_MS", "500"))


class _SharedConsumer:
    """One consumer per inbox topic per process, feeding a buffer per partition.

    Bytewax builds one source partition per Kafka partition; a consumer each would
    mean a fetch loop each, and a broker that answers empty fetches at once (noida)
    makes every fetch loop burn CPU on both sides. One consumer fetches for all the
    partitions this process reads, and each source partition takes its own records.
    """

    _shared: ClassVar[dict[str, _SharedConsumer]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: Settings, topic: str, batch_size: int) -> None:
        self.topic = topic
        self.batch_size = batch_size
        self.consumer = Consumer(
            consumer_config(
                settings,
                **{"group.id": f"crypton-dataflow-{topic}", "fetch.wait.max.ms": FETCH_WAIT_MS},
            )
        )
        self.buffers: dict[int, deque[Any]] = {}
        self.lock = threading.Lock()

    @classmethod
    def join(
        cls, settings: Settings, topic: str, partition: int, offset: int | None, batch_size: int
    ) -> _SharedConsumer:
        with cls._registry_lock:
            shared = cls._shared.get(topic)
            if shared is None:
                shared = cls._shared[topic] = cls(settings, topic, batch_size)
        with shared.lock:
            shared.buffers[partition] = deque()
            start = OFFSET_BEGINNING if offset is None else offset
            shared.consumer.incremental_assign([KafkaPartition(topic, partition, start)])
        return shared

    def take(self, partition: int) -> list[Any]:
        """The records of ``partition`` fetched so far (fetching if there are none)."""
        with self.lock:
            buffer = self.buffers[partition]
            if not buffer:
                for record in self.consumer.consume(self.batch_size, 0):
                    error = record.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            continue
                        if error.fatal():
                            raise KafkaException(error)
                        log.warning("kafka: %s", error)
                        continue
                    target = self.buffers.get(record.partition())  # type: ignore[arg-type]
                    if target is not None:
                        target.append(record)
            records = list(buffer)
            buffer.clear()
            return records

    def leave(self, partition: int) -> None:
        with self.lock:
            self.buffers.pop(partition, None)
            self.consumer.incremental_unassign([KafkaPartition(self.topic, partition)])
            empty = not self.buffers
        if empty:
            with self._registry_lock:
                if self._shared.get(self.topic) is self:
                    del self._shared[self.topic]
            self.consumer.close()


def inbox_messages(
    record: Any, decode_all: Callable[[bytes], list[Any]], topic: str, signed: bytes | None
) -> list[Any] | str:
    """The messages of an inbox record (``TopicSpec.decode_all``), or (a str) why it is
    a dead letter: undecodable, or, with ``signed`` (the API's secret), holding an API
    command without a valid MAC. The source and a delta's replay
    (``dataflows.bases``) both read records through it."""
    value = record.value()
    try:
        messages = decode_all(value)
    except Exception as exc:
        return f"undecodable: {exc}"
    if signed is not None:
        for msg in messages:
            if isinstance(msg, signing.API_COMMANDS):
                if not signing.verify(
                    signed, topic, record.key() or b"", value or b"", record.headers()
                ):
                    return "unsigned: no valid MAC of the API"
                break
    return messages


# What crosses between the processes of a cluster. Bytewax pickles each item routed to
# a worker of another process (twice: Timely sizes a message, then writes it), and
# pickle takes a msgspec struct apart field by field through Python (2.4 us a message
# there and back, and a dict each for the commands). An inbox batch pickles instead as
# one msgpack value: 0.5 us a message. A union may not mix struct layouts, so the
# messages travel in two lists, objects and arrays, and are merged back by position.
_ARRAY_LIKE: Final = frozenset(
    kind for kind in (*WALLET_INBOX.types, *BOOK_INBOX.types) if kind.__struct_config__.array_like
)
_OBJECTS: Final = functools.reduce(
    operator.or_,
    [k for k in (*WALLET_INBOX.types, *BOOK_INBOX.types) if k not in _ARRAY_LIKE] + [DeadLetter],
)
_ARRAYS: Final = functools.reduce(operator.or_, sorted(_ARRAY_LIKE, key=lambda k: k.__name__))
_WIRE_ENCODER: Final = msgspec.msgpack.Encoder()
_WIRE_DECODER: Final = msgspec.msgpack.Decoder(
    tuple[list[tuple[int, _OBJECTS]], list[tuple[int, _ARRAYS]]]  # type: ignore[valid-type]
)


def _to_wire(batch: list[Inbound]) -> bytes:
    arrays = [inbound for inbound in batch if inbound[1].__class__ in _ARRAY_LIKE]
    objects = (
        [inbound for inbound in batch if inbound[1].__class__ not in _ARRAY_LIKE]
        if len(arrays) < len(batch)
        else []
    )
    return _WIRE_ENCODER.encode((objects, arrays))


def _from_wire(kind: type[list[Inbound]], value: bytes) -> list[Inbound]:
    """A batch as ``_to_wire`` wrote it, in the order of its positions."""
    objects, arrays = _WIRE_DECODER.decode(value)
    if objects and arrays:
        return kind(sorted(objects + arrays, key=_position))
    return kind(objects or arrays)


class WalletBatch(list[Inbound]):
    """A batch read from the wallet inbox (``InboxSource``): a list of ``(position,
    message)``, pickled as one msgpack value when Bytewax sends it to another process."""

    __slots__ = ("_wire",)
    _wire: bytes

    def __reduce__(self) -> tuple[Any, ...]:
        # Encoded once: Timely pickles a message to size it, then again to write it, and
        # a batch is not changed once the source has handed it over.
        try:
            wire = self._wire
        except AttributeError:
            wire = self._wire = _to_wire(self)
        return _from_wire, (self.__class__, wire)


class BookBatch(WalletBatch):
    """A batch read from the book inbox: the one source of both inboxes (``InboxSource``)
    hands wallet batches as ``WalletBatch``es and book batches as these, and the flow
    routes them to their step by that (``is_book``)."""

    __slots__ = ()


class _InboxPartition(StatefulSourcePartition[tuple[str, list[Inbound]], int]):
    def __init__(
        self,
        settings: Settings,
        topic: str,
        partition: int,
        offset: int | None,
        spec: TopicSpec,
        batch_size: int,
        signed: bytes | None = None,
        batch: type[list[Inbound]] = WalletBatch,
    ) -> None:
        self._signed = signed
        self._shared = _SharedConsumer.join(settings, topic, partition, offset, batch_size)
        self._topic, self._partition = topic, partition
        self._offset = offset if offset is not None else 0
        self._decode_all = spec.decode_all
        self._key_of = spec.key_of
        self._awake: datetime | None = None
        self._quiet_since: float | None = None
        self._stall = metrics.PartitionStall()
        self._batch: type[list[Inbound]] = batch
        self._idle_key = (topic, partition)
        _idle.join(self._idle_key)

    def next_batch(self) -> list[tuple[str, list[Inbound]]]:
        self._stall.polled(time.monotonic())
        return self._next_batch()

    def _next_batch(self) -> list[tuple[str, list[Inbound]]]:
        records = self._shared.take(self._partition)
        metrics.observe_lag(self._shared.consumer, self._topic, self._partition, self._offset)
        if not records:
            now = time.monotonic()
            if self._quiet_since is None:
                self._quiet_since = now
            quiet = now - self._quiet_since >= _QUIET_AFTER_S
            back_off = _QUIET if quiet else _IDLE
            self._awake = datetime.now(UTC) + back_off
            self._stall.backing_off(now + back_off.total_seconds())
            idle = _idle
            idle.empty[self._idle_key] = True
            if idle.work and now >= idle.next_at and all(idle.empty.values()):
                _run_idle_work(idle)
                idle.next_at = time.monotonic() + IDLE_BUDGET_S
            return []
        _idle.empty[self._idle_key] = False
        self._awake = None
        self._stall.backing_off(0.0)
        self._quiet_since = None
        # One Bytewax item per key and consumer batch: an item costs the flow's one
        # thread about 2 us in Bytewax, more than grouping here (measured).
        items: dict[str, list[Inbound]] = {}
        batch = self._batch
        decode_all, key_of = self._decode_all, self._key_of
        topic, signed = self._topic, self._signed
        for record in records:
            offset = record.offset()
            if offset < self._offset:
                continue  # already read: a fetch raced a resume
            self._offset = offset + 1
            messages = inbox_messages(record, decode_all, topic, signed)
            if isinstance(messages, str):  # undecodable or unsigned input is kept, with why
                dead = items.get(DEAD_LETTER_KEY)
                if dead is None:
                    dead = items[DEAD_LETTER_KEY] = batch()
                dead.append(self._dead(record, offset, messages))
                continue
            at = offset << POSITION_BITS  # ``position(offset)``, in line: once a record
            for msg in messages:
                # Keyed by user or market: Bytewax runs each key's logic on its messages
                # in this order, and snapshots only the keys an epoch awoke. A key's
                # messages of one record all go in this one item (``dataflows.bases``
                # counts on it: a machine has applied a record wholly or not at all).
                key = key_of(msg)
                group = items.get(key)
                if group is None:
                    group = items[key] = batch()
                group.append((at, msg))
                at += 1
        return list(items.items())

    def _dead(self, record: Any, offset: int, reason: str) -> Inbound:
        dead = DeadLetter(
            topic=self._topic,
            partition=self._partition,
            offset=offset,
            key=record.key(),
            value=record.value(),
            reason=reason,
        )
        return position(offset), dead

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        self._stall.closing(time.monotonic())
        return self._offset

    def close(self) -> None:
        _idle.empty.pop(self._idle_key, None)
        self._shared.leave(self._partition)


def is_book(item: tuple[str, list[Inbound]]) -> bool:
    """Whether an item of ``InboxSource`` comes from the book inbox."""
    return item[1].__class__ is BookBatch


class InboxSource(FixedPartitionedSource[tuple[str, list[Inbound]], int]):
    """Every partition of both inbox topics, as one Bytewax input: items are
    ``(key, [(offset, message), ...])``, one per key and consumer batch, keyed by the
    topic's key (user or market), so each key's machine receives its messages in log
    order; book inbox batches are ``BookBatch``es.

    One input, not one per inbox: Bytewax closes each input partition's epoch on the
    partition's own clock and then polls it again only once the whole flow finished
    the epoch, so partitions of two inputs, whose clocks drift apart (each input's
    operator is woken at its own moments), waited at every close for the other input's
    close as well: 150 ms an epoch after a few minutes (``bench_scale``, 1,000,000
    users). The partitions of one input are woken together, close in the same
    activation and stay in step.
    """

    def __init__(self, settings: Settings, batch_size: int = 1000) -> None:
        self._settings = settings
        self._inboxes: dict[str, tuple[TopicSpec, type[list[Inbound]]]] = {
            "wallet": (WALLET_INBOX, WalletBatch),
            "book": (BOOK_INBOX, BookBatch),
        }
        self._batch_size = batch_size
        # With CRYPTON_API_SECRET set, commands the API did not sign are dead letters.
        self._signed = signing.required_secret()

    def list_parts(self) -> list[str]:
        parts = []
        for name, (spec, _batch) in self._inboxes.items():
            topic = spec.name(self._settings.topic_prefix)
            parts += [f"{name}/{p}" for p in topic_partitions(admin(self._settings), topic)]
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _InboxPartition:
        name, _, partition = for_part.partition("/")
        spec, batch = self._inboxes[name]
        return _InboxPartition(
            self._settings,
            spec.name(self._settings.topic_prefix),
            int(partition),
            resume_state,
            spec,
            self._batch_size,
            self._signed,
            batch,
        )


class SinkDeliveryError(RuntimeError):
    """The broker did not acknowledge what the sink wrote: the epoch must not commit.

    Raised from the sink (never from a librdkafka callback, where an exception would
    surface as a ``SystemError`` somewhere else), it ends the dataflow process with a
    non-zero code; the supervisor restarts it and Bytewax resumes from the last
    committed epoch, writing again everything after it (the steps drop repeats).
    """


DELIVERY_TIMEOUT_S = float(os.environ.get("CRYPTON_SINK_TIMEOUT", "60"))
"""How long a record may wait for the broker (``message.timeout.ms``, and the epoch's
flush): a broker that restarts within it costs a pause, a longer outage a restart of
the dataflow."""

LINGER_MS = int(os.environ.get("CRYPTON_SINK_LINGER_MS", "5"))
"""How long the sink's producer holds a partition's records before it sends them
(``linger.ms``). librdkafka sends one produce request per partition (its issue #1700),
so under a steady trickle every partition the flow writes to (order states, balances,
trades, both inboxes) costs the broker a request per linger: at 500 orders/s and 5 ms,
1,700 produce requests a second (Kafka's request log), and the broker at 76-94% of a
core. Longer trades latency for the broker's CPU: measured in docs/benchmarks.md. At
full speed, where a command waits in queues for far longer, it did not cost throughput
(10 ms: 39,698 orders/s, against 37,495 with 5 ms)."""


_BATCH_MESSAGES: Final = 1_000
_BATCH_BYTES: Final = 256 * 1024
"""A batch record closes at either bound, well under Kafka's 1 MB record limit."""
_PARTITION_CACHE: Final = 100_000
_POLL_EVERY_S: Final = 0.01


class _Failures:
    """What the sink's producer reported going wrong. The two callbacks run inside
    ``poll()`` and ``flush()`` on the worker's thread; they only record what happened,
    and the sink raises after the call returns.

    Apart from the sink so that the producer does not hold it: a queued record holds a
    reference to its callback that Python's collector cannot see, so a producer whose
    callbacks were the sink's own methods was never freed while a record waited, and
    went on dialling its broker for the rest of the process (a test's sink on a dead
    port printed "Connection refused" until the test run ended).
    """

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.errors.append(f"fatal: {error.str()}")
        else:
            log.warning("kafka: %s", error.str())

    def delivered(self, error: KafkaError | None, _record: Any) -> None:
        if error is not None:
            self.errors.append(error.str())


class _LogPartition(StatefulSinkPartition[list[Tagged], None]):
    def __init__(self, settings: Settings, delivery_timeout_s: float = DELIVERY_TIMEOUT_S) -> None:
        failures = self._failures = _Failures()
        self._timeout = delivery_timeout_s
        # Delivery reports for failures only: a Python callback per acknowledged record
        # cost the flow's one thread as much as producing it; success is still
        # checked, by flush() when the epoch closes. The callback is the producer's,
        # not passed to each produce() (0.2 of its 0.7 us, measured).
        config = producer_config(
            settings,
            **{
                "error_cb": failures.on_error,
                "on_delivery": failures.delivered,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "delivery.report.only.error": True,
                "linger.ms": LINGER_MS,
            },
        )
        self._producer = Producer(config)
        prefix = settings.topic_prefix
        # Per inbox topic, key -> (inbox, partition): where the producer's own partitioner
        # (Kafka's murmur2) would put a keyed record, as one tuple that every record of
        # the key reuses; bounded. The partition counts are read on first use.
        self._where_of: dict[str, dict[bytes, tuple[str, int]]] = {
            WALLET_INBOX.name(prefix): {},
            BOOK_INBOX.name(prefix): {},
        }
        self._counts: dict[str, int] = {}
        self._polled = 0.0

    def write_batch(self, values: list[list[Tagged]]) -> None:
        produce = self._producer.produce
        if len(values) == 1:
            tagged = values[0]
        else:
            # Stable: a message's records keep their order, and so do a key's. Positions
            # of different partitions (or inboxes) interleave arbitrarily, as they may.
            tagged = [record for records in values for record in records]
            tagged.sort(key=_position)
        where_of = self._where_of
        # Messages for the other step, per (inbox, partition), in order: one record each.
        # (values, [their size], the first one's key): the key, should it stay alone.
        batches: dict[tuple[str, int], tuple[list[bytes], list[int], bytes]] = {}
        for _, topic, key, value in tagged:
            inbox = where_of.get(topic)
            if inbox is not None:
                where = inbox.get(key) or self._where(topic, key)
                batch = batches.get(where)
                if batch is None:
                    batch = batches[where] = ([], [0], key)
                held, size, _first = batch
                held.append(value)
                size[0] += len(value)
                if len(held) >= _BATCH_MESSAGES or size[0] >= _BATCH_BYTES:
                    self._write_batch(where, batch)
                    del batches[where]
                continue
            try:
                produce(topic, value, key)
            except (BufferError, KafkaException):  # the queue is full, or a fatal error
                self._produce(topic, value, key)
        for where, batch in batches.items():
            self._write_batch(where, batch)
        now = time.monotonic()
        if now - self._polled >= _POLL_EVERY_S:  # serves error callbacks only
            self._polled = now
            self._producer.poll(0)
        self._raise_if_failed()

    def _write_batch(
        self, where: tuple[str, int], batch: tuple[list[bytes], list[int], bytes]
    ) -> None:
        """One inbox record for a batch's values: itself if alone (keyed, as a command
        is), else a batch in the partition all their keys map to."""
        topic, partition = where
        values, _size, first = batch
        if len(values) == 1:
            self._produce(topic, values[0], first)
        else:
            self._produce(topic, batch_value(values), None, partition)

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1) -> None:
        """Write one record (``partition`` -1: where its key maps), waiting while the local
        queue is full; a record refused for good fails the sink (``SinkDeliveryError``)."""
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:  # the local queue is full: let it drain
                self._producer.poll(0.05)
                self._raise_if_failed()
            except KafkaException as exc:  # a fatal error refuses new records
                self._failures.errors.append(exc.args[0].str() if exc.args else str(exc))
                self._raise_if_failed()

    def _where(self, inbox: str, key: bytes) -> tuple[str, int]:
        """(inbox, partition) of a record keyed ``key``, remembered (``_where_of``)."""
        count = self._counts.get(inbox)
        if count is None:
            count = self._counts[inbox] = len(topic_partitions(self._producer, inbox))
        cache = self._where_of[inbox]
        if len(cache) >= _PARTITION_CACHE:
            cache.clear()
        where = cache[key] = (inbox, partition_for(key, count))
        return where

    def snapshot(self) -> None:
        # The epoch may commit only once its output is acknowledged by the broker.
        remaining = self._producer.flush(self._timeout + 5)
        self._raise_if_failed()
        if remaining:
            raise SinkDeliveryError(
                f"{remaining} records not acknowledged by the broker in {self._timeout:g} s;"
                " exiting so that the flow restarts from its last snapshot"
            )

    def _raise_if_failed(self) -> None:
        errors = self._failures.errors
        if errors:
            # Crashing is the safe answer: the flow restarts from its last snapshot
            # and writes again everything after it.
            raise SinkDeliveryError(
                f"kafka write failed ({len(errors)} errors, first: {errors[0]});"
                " exiting so that the flow restarts from its last snapshot"
            )

    def close(self) -> None:
        self._producer.flush(self._timeout)


_MASK64: Final = (1 << 64) - 1


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK64
    v1 = ((v1 << 13) | (v1 >> 51)) & _MASK64 ^ v0
    v0 = ((v0 << 32) | (v0 >> 32)) & _MASK64
    v2 = (v2 + v3) & _MASK64
    v3 = ((v3 << 16) | (v3 >> 48)) & _MASK64 ^ v2
    v0 = (v0 + v3) & _MASK64
    v3 = ((v3 << 21) | (v3 >> 43)) & _MASK64 ^ v0
    v2 = (v2 + v1) & _MASK64
    v1 = ((v1 << 17) | (v1 >> 47)) & _MASK64 ^ v2
    v2 = ((v2 << 32) | (v2 >> 32)) & _MASK64
    return v0, v1, v2, v3


@functools.lru_cache(maxsize=100_000)
def worker_hash(key: str) -> int:
    """The hash by which Bytewax 0.21.1 sends a state key to a worker: Rust's
    ``DefaultHasher`` (SipHash-1-3, keys 0) of the key's ``str`` (its bytes, then 0xff);
    a keyed step runs ``key`` on worker ``worker_hash(key) % workers``. The sink picks
    its partition the same way, so a key's outputs are written by the process that
    computed them instead of being pickled to another (``tests/dataflows/test_wire.py``
    checks the two agree on a real cluster). Cached: it runs once per item, in Python.
    """
    data = key.encode() + b"\xff"
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573
    whole = len(data) - len(data) % 8
    for at in range(0, whole, 8):
        word = int.from_bytes(data[at : at + 8], "little")
        v3 ^= word
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= word
    last = (len(data) & 0xFF) << 56 | int.from_bytes(data[whole:], "little")
    v3 ^= last
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


class LogSink(FixedPartitionedSink[list[Tagged], None]):
    """Writes lists of ``(offset, (topic, key, value))``, keyed by the user or market
    whose machine emitted them: one key, one sink partition, one producer, one order.

    With one sink partition (``CRYPTON_SINK_PARTS``, default 1) and one worker, a batch
    written in offset order keeps the inbox's order between keys as well; with more,
    only each key's order is kept (exchange.py says why that is still correct).
    """

    def __init__(
        self,
        settings: Settings,
        parts: int = 1,
        delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._parts = parts
        self._delivery_timeout_s = delivery_timeout_s
        self._on_start = on_start
        """Called as each sink partition is built, when the flow starts running."""

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self._parts)]

    def part_fn(self, item_key: str) -> int:
        # Called once per item (a key's outputs of one batch): stable across processes,
        # unlike hash(), so every worker routes a key to the same producer; and with as
        # many sink partitions as workers, the one on the worker that ran the key's
        # step (``worker_hash``), so outputs never cross to another process.
        return worker_hash(item_key) if self._parts > 1 else 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _LogPartition:
        if self._on_start is not None:
            self._on_start()
        return _LogPartition(self._settings, self._delivery_timeout_s)
