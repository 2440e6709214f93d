"""The topics on the broker: creation, partitioning and retention.

What each topic carries, its key, codec and fold rule are declared once in
``crypton.schema``; this module is the Kafka side of them.

One key must always land in one partition, so every producer uses the
``murmur2_random`` partitioner (the Java client's, which ksqlDB and Kafka
Streams use) and the same partition count per topic.
"""

from __future__ import annotations

import time
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from crypton import schema
from crypton.config import Settings
from crypton.kafka import admin
from crypton.schema import TopicSpec, topic_name

__all__ = [
    "BASES",
    "LEGACY_BASES",
    "TOPICS",
    "TopicError",
    "TopicSpec",
    "ensure_topics",
    "murmur2",
    "partition_for",
    "topic_name",
    "topic_names",
]

WALLET_INBOX: Final = schema.WALLET_INBOX.logical
BOOK_INBOX: Final = schema.BOOK_INBOX.logical
ORDERS: Final = schema.ORDERS.logical
BALANCES: Final = schema.BALANCES.logical
TRADES: Final = schema.TRADES.logical
DEPTH: Final = schema.DEPTH.logical
TRANSFERS: Final = schema.TRANSFERS.logical
REJECTIONS: Final = schema.REJECTIONS.logical
DEAD_LETTERS: Final = schema.DEAD_LETTERS.logical
USERS: Final = schema.USERS.logical

TOPICS: Final = schema.SPECS
"""Every topic, as declared in ``crypton.schema``."""

BASES: Final = "dataflow.base-slots"
"""The dataflow's own topic of machine bases (``dataflows.bases``): no messages, one
partition, compacted (the latest base of each machine's slot); the dataflow creates it
on its start if it is missing."""

LEGACY_BASES: Final = "dataflow.bases"
"""Where bases went before the slots (never cleaned up): read for the deltas that still
name one, never written or created."""


def topic_names(prefix: str = "") -> list[str]:
    """Every topic of the exchange under ``prefix``, in declaration order."""
    return [spec.name(prefix) for spec in TOPICS]


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key``: Kafka's murmur2, as the Java client and ``murmur2_random``.

    Lets a reader go straight to the one partition that holds a key's log.

    >>> partition_for(b"alice", 4)
    1
    """
    # Java's toPositive: drop the sign bit rather than take an absolute value.
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2(key: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of ``key``, signed like Java's ``Utils.murmur2``."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(key)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(key[i : i + 4], "little") * m) & mask
        k = ((k ^ (k >> r)) * m) & mask
        h = ((h * m) & mask) ^ k
    tail = key[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def _wait_for_leaders(client: AdminClient, names: list[str], timeout: float) -> dict[str, Any]:
    """The cluster's topics once every partition of ``names`` has a leader.

    A created topic reaches every broker's metadata a moment later; a client that
    used it at once could be told it does not exist.
    """
    deadline = time.monotonic() + timeout
    while True:
        topics = client.list_topics(timeout=timeout).topics
        pending = [
            name
            for name in names
            if name not in topics
            or topics[name].error is not None
            or any(p.leader < 0 for p in topics[name].partitions.values())
        ]
        if not pending:
            return dict(topics)
        if time.monotonic() >= deadline:
            raise TopicError(f"topic {pending[0]} has no leader {timeout:g}s after its creation")
        time.sleep(0.1)


class TopicError(RuntimeError):
    """Existing topics contradict the configuration (for example their partition count)."""


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing topics of ``TOPICS`` and return the names created.

    Idempotent: an existing topic is left alone, but one with a partition count
    other than ``settings.partitions`` is an error, because changing the count
    moves keys to other partitions and a key's state would see two logs.
    """
    client = admin(settings)
    wanted = {spec.name(settings.topic_prefix): spec for spec in TOPICS}
    existing = client.list_topics(timeout=timeout).topics
    missing = [name for name in wanted if name not in existing]
    created: list[str] = []
    if missing:
        # No replication factor: the cluster's default (1 on an embedded
        # broker, typically 3 in production) is the right one.
        futures = client.create_topics(
            [
                NewTopic(n, settings.partitions, config=wanted[n].config(settings.state_segment_ms))
                for n in missing
            ],
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout)
                created.append(name)
            except TimeoutError:
                raise TopicError(
                    f"Kafka did not confirm creating topic {name} within {timeout:g}s"
                ) from None
            except KafkaException as exc:
                # Another process created it between our listing and our request.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"cannot create topic {name}: {exc.args[0].str()}") from None
        existing = _wait_for_leaders(client, created, timeout)
    wrong = [
        f"{name} has {len(existing[name].partitions)}"
        for name in wanted
        if name in existing and len(existing[name].partitions) != settings.partitions
    ]
    if wrong:
        shown = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise TopicError(
            f"existing topics do not have CRYPTON_PARTITIONS={settings.partitions} partitions:"
            f" {shown} (a key must stay on one partition: use another topic prefix"
            " or recreate the topics)"
        )
    return sorted(created, key=list(wanted).index)
