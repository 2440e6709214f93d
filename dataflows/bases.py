"""Machine states kept as a base in Kafka plus the inbox since (delta snapshots).

Bytewax keeps one snapshot per state key: the whole value, written again at every
epoch that touched the key. For a book of 5,000 resting orders that is 180 kB each
epoch it trades in (5.5 MB a minute at 10 orders a second), and for a market maker's
wallet its dedupe window of thousands of ids. Most of it did not change. Even a small
wallet's row costs its recovery store about six pages of 1 KiB an epoch it changes in
(the row, its index, and the row it replaces deleted at the commit), where a row of 20
bytes shares its pages with dozens of others.

**A delta snapshot.** A machine whose packed state is larger than ``INLINE_BYTES``
(``CRYPTON_STATE_INLINE_BYTES``; 0 by default: every machine) writes its whole state
once, as a *base*, to the compacted topic ``crypton.dataflow.base-slots``. Once Kafka
has acknowledged it, and until its next base, the snapshot Bytewax stores for the key
is only::

    (DELTA, base partition, base offset, inbox offset at the base, last inbox offset
     applied, slot)

about 20 bytes. The machine's state at the epoch is then the base, plus its own
messages in its inbox partition after the base's offset up to the last one applied:
the machines are deterministic (``crypton.domain``), so applying those messages again
to the base gives the same state (its outputs are dropped: they were written the first
time, in the epoch that applied them). A logic restored from a delta snapshot replays
them when its key first gets a message (``Bases.since``), as a packed logic decodes
itself then. A delta spans at most ``REBASE_OFFSETS`` inbox offsets
(``CRYPTON_STATE_REBASE_OFFSETS``), a small base's fewer (``span_for``: 1,000 for a
wallet of a few KB): a restore reads at most that much of the inbox. An
idle user's delta spans nothing (its base was taken at its last message), so waking it
after a restart is one read of one record (about 0.6 ms).

**Bases are sent before any is waited for** (``Bases.send``; ``dataflows.exchange``).
An epoch close used to write each base and wait for Kafka's acknowledgement on the
flow's only thread, one machine after another (two 1.7 MB book bases: 26 ms of one
close). Now the close's first snapshot packs every machine the epoch changed that is
due a base and sends them all; a snapshot that needs its base then waits, and the close
waits about one round trip, not one per machine. A machine put away mid-epoch to bound
memory (``CRYPTON_LIVE_MACHINES``) sends its base then and is snapshotted at the close
with the others (it waited there, a round trip per machine: funding 50,000 new users
took 18 s instead of 3). While a machine's first base is on
its way its snapshot stays whole, named from a later close once stored (up to
``FIRST_WHOLE_BYTES`` of them a close in ``dataflows.exchange``; past that the close waits
for them, as for a large book's first base). The next one is sent once a delta has used
half its span and is not waited for: the old base serves until Kafka has acknowledged
the new one; only a machine fed more than half its span in one epoch waits for it. A
base Kafka refused is counted (``crypton_dataflow_base_failures_total``) and sent again
at the machine's next close; its snapshot stays whole, or on its old base, meanwhile.

**Bases are taken while the flow is idle** (``_Step.take_bases`` in ``dataflows.exchange``).
A machine due a base joins its step's queue, and the step packs and sends the queue's
machines from a source poll that found no record in any partition
(``kafka_io.when_idle``), in the last quarter of an epoch: the close then only names
them. Once the flow has idled in an epoch, the close also leaves a delta that has used
half its span, but not all of it, for the next idle moment.

Why it is safe. A base is acknowledged (acks from all in-sync replicas) before any
snapshot names it, so a committed snapshot never names a base the log does not have.
Inboxes are never deleted (``retention.ms`` -1), and a base stays as long as a snapshot
a restart could resume from names it (below), so the records a committed snapshot needs
stay. The inbox offsets are the source's own (read_committed, as the
source reads), so the replay sees exactly the records the machine was fed, in the same
order; undecodable records were dead letters then and are skipped now. Bases are never
read back except to restore.

**Old bases are compacted away** (``SLOTS``). The topic is compacted, and a machine's
base is written under the record key ``step/key/slot``, one of ``SLOTS`` slots: Kafka
keeps the latest base of each slot, so the topic holds at most four bases a machine,
not one for every half span a busy book ever traded (the topic before this,
``crypton.dataflow.bases``, kept every base for ever). A slot is reused only when no
snapshot a restart could resume from names its base:
- Bytewax closes an epoch E+1 only once E is committed (its inputs advance only as far
  as the commit's progress allows), so at the close of E+1 a restart resumes from each
  key's snapshot of E or later, and while the items of E+1 are processed (a machine put
  away to bound memory, or one due while the flow is idle, may write a base then) from
  its snapshot of E-1 or later. Each is one of the key's last two snapshots handed to
  Bytewax;
- a new base takes a slot that neither of those two names, nor the base the machine's
  delta names now (``_KeyLogic._free_slot`` in ``dataflows.exchange``). Four slots
  always leave one.
A base compacted away is never read: ``KafkaBases.get`` checks the record at the named
offset is that machine's base in that slot, and says so if it is not, rather than hand
back another record. Deltas written before the slots (five fields, no slot) name bases
in the old topic, which is read, never written.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, Final, Literal, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.cimpl import NewTopic

from crypton import schema, signing
from crypton.config import Settings
from crypton.domain.messages import DeadLetter, Message
from crypton.kafka import admin, consume_now, consumer_config, producer_config, topic_partitions
from crypton.topics import BASES, LEGACY_BASES, partition_for
from dataflows.kafka_io import inbox_messages

__all__ = [
    "DELTA",
    "INLINE_BYTES",
    "REBASE_OFFSETS",
    "SLOTS",
    "BaseWrite",
    "Bases",
    "Delta",
    "KafkaBases",
    "MemoryBases",
    "base_key",
    "key_needle",
    "span_for",
]

DELTA: Final = "crypton.delta"

Delta = tuple[Literal["crypton.delta"], int, int, int, int, int]
"""(DELTA, base partition, base offset, inbox offset at the base, last offset applied,
slot); a delta written before the slots has no slot (its base is in ``LEGACY_BASES``)."""

SLOTS: Final = 4
"""Slots a machine's bases rotate through in the compacted topic (module docstring)."""

LEGACY: Final = -1
"""The slot of a base in the topic from before the slots, ``LEGACY_BASES``."""

INLINE_BYTES = int(os.environ.get("CRYPTON_STATE_INLINE_BYTES", "0"))
"""A packed state up to this size is snapshotted whole; a larger one as a delta. 0 (the
default): every state is a delta, and the recovery store holds 20-byte references (at
10 orders/s, 0.66 MB/min written against 1.16 with 4 KiB, where the traders' wallets of
a few hundred bytes went whole at every epoch; waking an idle user after a restart costs
a read of its base, about 0.6 ms against 0.1 from the store: docs/benchmarks.md)."""

REBASE_OFFSETS = int(os.environ.get("CRYPTON_STATE_REBASE_OFFSETS", "20000"))
"""The most inbox offsets a delta spans before the machine writes a new base (a large
one's: a small base spans less, ``span_for``)."""


def span_for(size: int, rebase_offsets: int) -> int:
    """The most inbox offsets a delta on a base of ``size`` bytes spans: ``rebase_offsets``
    for a base of 160 KB or more (a book, a market maker's wallet), down to a twentieth of
    it (1,000) for one of 8 KB or less (a wallet). A small base costs little to write
    again, and a restart replays the inbox since the base of every machine it wakes: at
    1,000,000 users a trader's wallet replayed up to 20,000 records of its partition, mostly
    other users', and the first 10,000 orders after a restart went through at 2,657 a
    second.

    >>> span_for(200, 20_000), span_for(40_000, 20_000), span_for(2_000_000, 20_000)
    (1000, 5000, 20000)
    """
    return min(rebase_offsets, max(rebase_offsets // 20, size // 8))


_MAX_BYTES = 256 * 2**20  # a base is one record: a book of a few million orders
_FETCH_BYTES = 2**16
"""The largest batch of bases written, and what a base's read fetches at once. A close
writes its bases in a burst, and one partition takes about a round trip per five
batches: 200 bases of 7 KB and two of 850 KB were acknowledged in 165-230 ms in batches
of 16 KiB, 16-32 ms in batches of 64 KiB. Reading one base of 300-2,000 bytes out of
20,000 cost 2.2 ms (0.40 ms of CPU) and 1.8 ms (0.48 ms); batches of 1 MiB, 4.2 ms
(1.6 ms)."""
_TIMEOUT = 60.0


class BaseWrite:
    """A base on its way to the store (``Bases.send``): ``where`` it is once the store
    acknowledged it, or the ``error`` that stopped it; both None while in flight."""

    __slots__ = ("error", "where")

    def __init__(self) -> None:
        self.where: tuple[int, int] | None = None
        self.error: Exception | None = None


class Bases(Protocol):
    """Where bases go and where a delta's messages come from."""

    inline_bytes: int
    """A packed state up to this size is snapshotted whole."""
    rebase_offsets: int
    """The most inbox offsets a delta spans before the next base."""

    def send(self, step: str, key: str, state: bytes, slot: int) -> BaseWrite:
        """Start storing ``state`` durably in ``slot``, replacing the base stored there,
        without waiting for it (``poll``, ``wait``)."""

    def poll(self) -> None:
        """Settle the writes the store has answered since the last call."""

    def wait(self, write: BaseWrite) -> tuple[int, int]:
        """Until ``write`` settles: its (partition, offset), or its error raised."""

    def get(self, step: str, key: str, partition: int, offset: int, slot: int) -> bytes:
        """The base of ``key`` stored at (partition, offset) in ``slot`` (``LEGACY``: in
        the topic from before the slots); LookupError if it is not there."""

    def since(self, step: str, key: str, after: int, through: int) -> Iterator[Message]:
        """The messages of ``key`` in its inbox partition in the records after offset
        ``after`` up to ``through``, in log order (undecodable records skipped)."""


def base_key(step: str, key: str, slot: int) -> str:
    """The record key of a machine's base in ``slot``: the topic keeps the latest of each.

    >>> base_key("wallet", "alice", 2)
    'wallet/alice/2'
    """
    return f"{step}/{key}/{slot}"


_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_.:@+=-]+")


def key_needle(key: str) -> bytes | None:
    """The bytes every batch record holding a message of ``key`` contains: the key as a
    JSON string (quotes included), or None if a JSON encoder could spell it otherwise.

    A replay (``KafkaBases.since``) reads every record of the key's inbox partition since
    its base, and a batch record holds the messages of many keys: without this check a
    market maker's wallet decoded every settlement batch of its partition after a
    restart. Only characters that no JSON encoder escapes qualify (the exchange's user
    ids and market symbols); any other key decodes every batch, as before.
    """
    return b'"' + key.encode() + b'"' if _PLAIN_KEY.fullmatch(key) else None


class KafkaBases:
    """Bases in the topic ``crypton.dataflow.bases``; deltas from the inbox topics."""

    def __init__(
        self,
        settings: Settings,
        inline_bytes: int = INLINE_BYTES,
        rebase_offsets: int = REBASE_OFFSETS,
    ) -> None:
        self.settings = settings
        self.inline_bytes, self.rebase_offsets = inline_bytes, rebase_offsets
        self.topic = schema.topic_name(BASES, settings.topic_prefix)
        self.legacy_topic = schema.topic_name(LEGACY_BASES, settings.topic_prefix)
        self.inboxes = {
            "wallet": schema.WALLET_INBOX.name(settings.topic_prefix),
            "book": schema.BOOK_INBOX.name(settings.topic_prefix),
        }
        self.specs = {"wallet": schema.WALLET_INBOX, "book": schema.BOOK_INBOX}
        self.signed = signing.required_secret()
        self._producer: Producer | None = None
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._readers: dict[str, Consumer] = {}
        """The consumer for bases (``"bases"``: small fetches) and the one for inboxes."""
        self._read_lock = threading.Lock()

    def _producing(self) -> Producer:
        if self._producer is None:
            self._ensure_topic()
            self._producer = Producer(
                producer_config(
                    self.settings,
                    # Batches of at most _FETCH_BYTES (a larger base is one of its own):
                    # reading a base fetches the whole batch holding it (_reader_config).
                    **{
                        "message.max.bytes": _MAX_BYTES,
                        "linger.ms": 0,
                        "batch.size": _FETCH_BYTES,
                    },
                )
            )
        return self._producer

    def _ensure_topic(self) -> None:
        client = admin(self.settings)
        if self.topic in client.list_topics(timeout=_TIMEOUT).topics:
            return
        config = {
            # The latest base of each slot (module docstring); only closed segments
            # compact, so they roll as the state topics' do. A segment must hold the
            # largest record: segment.bytes stays at its 1 GiB default.
            "cleanup.policy": "compact",
            "segment.ms": str(self.settings.state_segment_ms),
            "max.message.bytes": str(_MAX_BYTES),
        }
        future = client.create_topics([NewTopic(self.topic, 1, config=config)])[self.topic]
        try:
            future.result(_TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def prepare(self) -> None:
        """Create the topic and connect the producer now, at the flow's start: the first
        base otherwise paid for both on the flow's thread, at an epoch close (600 ms of
        a 1 MB book's first base, `bench_pipeline` with 10 s epochs)."""
        with self._lock:
            self._producing().list_topics(self.topic, timeout=_TIMEOUT)

    def send(self, step: str, key: str, state: bytes, slot: int) -> BaseWrite:
        write = BaseWrite()
        record_key = base_key(step, key, slot)

        def delivered(error: KafkaError | None, record: Any) -> None:
            if error is not None:
                write.error = KafkaException(error)
            else:
                write.where = (int(record.partition()), int(record.offset()))

        with self._lock:  # one producer for the process's workers
            producer = self._producing()
            producer.produce(self.topic, key=record_key, value=state, on_delivery=delivered)
            producer.poll(0)
        return write

    def close(self) -> None:
        """Close the readers and let the producer go once it has delivered what it
        holds. The dataflow's process just exits; a test closes its own before its
        broker stops, or librdkafka's threads go on dialling the broker that is gone."""
        with self._read_lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
        with self._lock:
            if self._producer is not None:
                self._producer.flush(_TIMEOUT)
                self._producer = None  # its handle is destroyed with the last reference

    def poll(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.poll(0)

    def wait(self, write: BaseWrite) -> tuple[int, int]:
        deadline = time.monotonic() + _TIMEOUT
        with self._lock:
            producer = self._producing()
            while write.where is None and write.error is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("Kafka did not acknowledge a base in time")
                producer.poll(0.05)
        if write.error is not None:
            raise write.error
        assert write.where is not None
        return write.where

    def get(self, step: str, key: str, partition: int, offset: int, slot: int) -> bytes:
        topic = self.legacy_topic if slot == LEGACY else self.topic
        wanted = (f"{step}/{key}" if slot == LEGACY else base_key(step, key, slot)).encode()
        for record in self._read(topic, partition, offset, offset, one=True):
            # The first record at or after the offset: another one if the base was
            # compacted away (a slot reused too early), never to be taken for it.
            value = record.value()
            if record.offset() == offset and record.key() == wanted and value:
                return bytes(value)
            break
        raise LookupError(f"no base of {step} {key} (slot {slot}) at {topic}[{partition}]@{offset}")

    def since(self, step: str, key: str, after: int, through: int) -> Iterator[Message]:
        if through <= after:
            return
        topic, spec = self.inboxes[step], self.specs[step]
        partition = partition_for(key.encode(), self._partition_count(topic))
        wanted = key.encode()
        needle = key_needle(key)
        for record in self._read(topic, partition, after + 1, through):
            record_key = record.key()
            if record_key is not None and record_key != wanted:
                continue  # another key's own record; a batch (no key) may hold ours
            if record_key is None and needle is not None and needle not in (record.value() or b""):
                continue  # a batch that does not spell our key holds none of our messages
            # Read as the source read it: what was a dead letter then is skipped now.
            messages = inbox_messages(record, spec.decode_all, topic, self.signed)
            if isinstance(messages, str):
                continue
            for msg in messages:
                if spec.key_of(msg) == key:
                    yield msg

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = topic_partitions(admin(self.settings), topic, _TIMEOUT)
            count = self._partitions[topic] = len(partitions)
        return count

    def _read(
        self, topic: str, partition: int, first: int, last: int, one: bool = False
    ) -> list[Any]:
        """Records of one partition from offset ``first`` until one at ``last`` or past
        (``one``: a base, the record at ``first`` alone).

        Two consumers per process do every read, one for bases and one for inboxes,
        each assigned to the partition for a read and unassigned after (so it fetches
        nothing in between): after a restart every delta machine reads its base and its
        inbox since on first use, and a consumer made for each read paid its start
        (connection, metadata, first fetch) every time, about as much as the read itself.
        """
        with self._read_lock:
            reads = "bases" if one else "inboxes"
            consumer = self._readers.get(reads)
            if consumer is None:
                consumer = self._readers[reads] = Consumer(_reader_config(self.settings, one))
            consumer.assign([TopicPartition(topic, partition, first)])
            try:
                records: list[Any] = []
                deadline = time.monotonic() + _TIMEOUT
                while True:
                    # Not consume(1000, 0.5): it holds a short range's last records
                    # for the whole 0.5 s, which every replay and every base paid.
                    batch = consume_now(consumer, 1 if one else 1000, 0.5)
                    if not batch and time.monotonic() > deadline:
                        raise TimeoutError(f"{topic}[{partition}] stopped before offset {last}")
                    for record in batch:
                        offset = record.offset() or 0
                        if (
                            record.error() is not None
                            or offset < first
                            or record.partition() != partition
                            or record.topic() != topic
                        ):
                            continue  # an error, or left over from an earlier read
                        deadline = time.monotonic() + _TIMEOUT
                        records.append(record)
                        if offset >= last:
                            return records
            finally:
                consumer.unassign()


def _reader_config(settings: Settings, bases: bool) -> dict[str, Any]:
    """How ``KafkaBases`` reads: a base is one record, so its reader fetches little (the
    bases are written in batches of as little, so the batch holding a base is small); an
    inbox is read through, in large fetches."""
    fetch = _FETCH_BYTES if bases else _MAX_BYTES
    return consumer_config(
        settings,
        **{
            "group.id": "crypton-bases",
            # A fetch waiting at a partition's end holds the next read's first fetch
            # behind it (one in flight per broker): 500 ms a read at the default.
            "fetch.wait.max.ms": 1,
            # Reading a base with fetches as large as the largest base brought in (and
            # decoded) every base written after it: 6 ms of CPU a base at 50,000 users,
            # 0.2-0.3 ms now. A record batch larger than a fetch still comes whole.
            "fetch.max.bytes": max(fetch, 2**20),  # at least message.max.bytes
            "max.partition.fetch.bytes": fetch,
            "receive.message.max.bytes": _MAX_BYTES + 2**20,
        },
    )


class MemoryBases:
    """Bases in a list and inboxes given as (offset, message) lists: for tests."""

    def __init__(
        self,
        inboxes: dict[str, list[tuple[int, Message]]],
        inline_bytes: int = 0,
        rebase_offsets: int = REBASE_OFFSETS,
    ) -> None:
        self.inboxes = inboxes
        self.inline_bytes, self.rebase_offsets = inline_bytes, rebase_offsets
        self.stored: list[bytes | None] = []
        """The records by offset; None once compacted away (``compact``)."""
        self.keys: list[str] = []

    def send(self, step: str, key: str, state: bytes, slot: int) -> BaseWrite:
        write = BaseWrite()
        write.where = (0, self._append(base_key(step, key, slot), state))
        return write

    def _append(self, record_key: str, state: bytes) -> int:
        self.stored.append(state)
        self.keys.append(record_key)
        return len(self.stored) - 1

    def compact(self) -> None:
        """What Kafka's cleaner may do at any time: drop every record that a later one
        with the same key replaces."""
        latest = {key: offset for offset, key in enumerate(self.keys)}
        for offset, key in enumerate(self.keys):
            if latest[key] != offset:
                self.stored[offset] = None

    def poll(self) -> None:
        """Every write is stored when sent."""

    def wait(self, write: BaseWrite) -> tuple[int, int]:
        assert write.where is not None
        return write.where

    def get(self, step: str, key: str, partition: int, offset: int, slot: int) -> bytes:
        state = self.stored[offset]
        if state is None or self.keys[offset] != base_key(step, key, slot):
            raise LookupError(f"no base of {step} {key} (slot {slot}) at {offset}")
        return state

    def since(self, step: str, key: str, after: int, through: int) -> Iterator[Message]:
        spec = schema.WALLET_INBOX if step == "wallet" else schema.BOOK_INBOX
        for offset, msg in self.inboxes[step]:
            if (
                after < offset <= through
                and type(msg) is not DeadLetter
                and spec.key_of(msg) == key
            ):
                yield msg
