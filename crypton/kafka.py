"""Kafka client settings shared by every producer and consumer of the exchange.

Plain ``confluent-kafka`` configuration: nothing here depends on one broker's
quirks, so the same code runs against the embedded brokers and Apache Kafka.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message
from confluent_kafka.admin import AdminClient

from crypton.config import Settings

__all__ = [
    "KafkaUnavailableError",
    "admin",
    "consume_now",
    "consumer_config",
    "producer_config",
    "topic_partitions",
    "wait_for_kafka",
]

# The Java client's partitioner: ksqlDB, Kafka Streams and our own producers
# must all put one key in one partition, or a key's state would see two logs.
PARTITIONER = "murmur2_random"


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A durable, ordered producer: acks from all replicas, idempotent, murmur2."""
    config: dict[str, Any] = {
        **settings.client_config(),
        "bootstrap.servers": settings.bootstrap_servers,
        "partitioner": PARTITIONER,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "none",
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A consumer that reads only committed data and never commits offsets by itself:
    the exchange keeps its own offsets (Bytewax snapshots, API read model)."""
    config: dict[str, Any] = {
        **settings.client_config(),
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": "crypton",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 6000,
    }
    config.update(overrides)
    return config


def consume_now(consumer: Consumer, most: int, wait: float) -> list[Message]:
    """Up to ``most`` records, waiting at most ``wait`` seconds for the first one and
    handing it over as soon as it arrives, with whatever else arrived by then.

    ``Consumer.consume(most, wait)`` itself returns only when it has ``most`` records or
    the whole ``wait`` has passed: at a few records a second, a record waited for the
    batch to fill, adding up to ``wait`` (about half of it on average) to its latency.
    """
    first = consumer.consume(1, wait)
    if not first or most == 1:
        return first
    return first + consumer.consume(most - 1, 0)


class KafkaUnavailableError(RuntimeError):
    """The cluster did not answer in time; the message names the address and the cause."""


def topic_partitions(client: Any, topic: str, timeout: float = 30.0) -> list[int]:
    """The partition ids of ``topic``, in order, from ``client``'s metadata (an admin
    client, producer or consumer); a missing topic is one clear error."""
    found = client.list_topics(topic, timeout=timeout).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise RuntimeError(f"topic {topic} is missing: run `crypton topics` first")
    return sorted(found.partitions)


def _quiet_logger() -> logging.Logger:
    # librdkafka logs every failed connection attempt to stderr; while we poll a
    # broker that is still starting, those lines are expected and say nothing.
    logger = logging.getLogger("crypton.kafka.admin")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def admin(settings: Settings, **overrides: Any) -> AdminClient:
    """An admin client for the configured cluster, silent about connection retries."""
    config: dict[str, Any] = {
        **settings.client_config(),
        "bootstrap.servers": settings.bootstrap_servers,
    }
    config.update(overrides)
    return AdminClient(config, logger=_quiet_logger())


def _tcp_reachable(bootstrap: str, timeout: float) -> str | None:
    """``None`` if some bootstrap address accepts a TCP connection, else why not."""
    reason = "no address"
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.rpartition("://")[2].strip("[]")  # SASL_SSL://host:port as well
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout):
                return None
        except ValueError:
            return f"bad address {address!r}"
        except OSError as exc:
            reason = exc.strerror or str(exc)
    return reason


def wait_for_kafka(settings: Settings, timeout: float = 30.0, brokers: int = 1) -> None:
    """Return once the cluster answers a metadata request naming at least ``brokers``
    brokers; raise :class:`KafkaUnavailableError`.

    A TCP probe comes first so that an unreachable address fails fast with the
    operating system's reason ("Connection refused") instead of a client timeout.
    """
    deadline = time.monotonic() + timeout
    where = settings.bootstrap_servers
    reason = "no answer"
    client: AdminClient | None = None
    while True:
        left = deadline - time.monotonic()
        tcp = _tcp_reachable(where, max(0.1, min(1.0, left)))
        if tcp is None:
            client = client or admin(settings)
            try:
                metadata = client.list_topics(timeout=max(0.5, min(2.0, left)))
                if len(metadata.brokers) >= brokers:
                    return
                reason = f"{len(metadata.brokers)} of {brokers} brokers up"
            except KafkaException as exc:
                reason = exc.args[0].str() if exc.args else str(exc)
        else:
            reason = tcp
        if time.monotonic() >= deadline:
            raise KafkaUnavailableError(
                f"Kafka at {where} did not answer within {timeout:g}s: {reason}"
            )
        time.sleep(0.1)
