"""Read whole topics, from the beginning to where they ended when the read began.

The audit and the tests fold complete topics; the high watermarks taken at
the start bound the read, so it finishes even while producers keep writing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from crypton.config import Settings
from crypton.kafka import consumer_config

__all__ = ["Record", "read_topics"]

_IDLE = 0.3  # seconds without a record, once past the ends, that mean "nothing more"


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None = None


def _end_offset(consumer: Consumer, partition: TopicPartition, timeout: float) -> int:
    """The partition's high watermark, asking again while it has no serving leader
    (a topic just created, or a broker failing over, answers NOT_LEADER for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _low, high = consumer.get_watermark_offsets(partition, timeout=timeout)
            return int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.retriable()
                or error.code()
                in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
            )
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_topics(settings: Settings, names: list[str], timeout: float = 60.0) -> Iterator[Record]:
    """Every record of ``names`` up to their current ends (and whatever follows at once),
    each partition in offset order."""
    consumer = Consumer(consumer_config(settings, **{"group.id": "crypton-reader"}))
    try:
        metadata = consumer.list_topics(timeout=timeout)
        ends: dict[tuple[str, int], int] = {}
        for name in names:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                raise RuntimeError(f"topic {name} does not exist")
            for partition in sorted(topic.partitions):
                high = _end_offset(consumer, TopicPartition(name, partition), timeout)
                if high > 0:
                    ends[(name, partition)] = high
        if not ends:
            return
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        deadline = time.monotonic() + timeout
        while True:
            batch = consumer.consume(5000, _IDLE)
            if not batch:
                # Past every end and nothing more came: done. Some brokers (tansu)
                # under-report high watermarks, so the ends alone are not trusted.
                if not ends:
                    return
                if time.monotonic() > deadline:
                    missing = ", ".join(f"{t}[{p}]" for t, p in sorted(ends))
                    raise TimeoutError(f"reading stalled before the end of {missing}")
                continue
            deadline = time.monotonic() + timeout
            for record in batch:
                error = record.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"kafka: {error}")
                topic, partition, offset = record.topic(), record.partition(), record.offset()
                assert topic is not None and partition is not None and offset is not None
                yield Record(
                    topic, partition, offset, record.key(), record.value(), record.headers()
                )
                end = ends.get((topic, partition))
                if end is not None and offset + 1 >= end:
                    del ends[(topic, partition)]
    finally:
        consumer.close()
