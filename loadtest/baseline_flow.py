"""The baseline for ``bench_pipeline``: a trivial Bytewax loop through Kafka.

A -> keyed step -> B -> keyed step -> C with Bytewax's stock Kafka
connectors and no domain logic: what the broker and Bytewax cost by
themselves, the yardstick the exchange's throughput is reported against.
Topics come from ``BASELINE_A``, ``BASELINE_B``, ``BASELINE_C``; the cluster
from ``CRYPTON_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import os
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

from crypton.config import Settings

BROKERS = [os.environ.get("CRYPTON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")]
# The exchange's client settings (SASL from CRYPTON_KAFKA_*), as every other client.
CONFIG = {**Settings.from_env().client_config(), "partitioner": "murmur2_random", "linger.ms": "5"}


def _count(seen: int | None, message: Any) -> tuple[int, KafkaSinkMessage[bytes, bytes]]:
    seen = (seen or 0) + 1
    return seen, KafkaSinkMessage(message.key, message.value)


def _key(message: Any) -> str:
    # The stock source raises on errors, so every item is a message with a key.
    return bytes(message.key or b"").decode()


def _hop(flow: Dataflow, name: str, source: str, sink: str) -> None:
    messages = op.input(f"in_{name}", flow, KafkaSource(BROKERS, [source], add_config=CONFIG))
    keyed = op.key_on(f"key_{name}", messages, _key)
    counted = op.stateful_map(f"step_{name}", keyed, _count)
    op.output(
        f"out_{name}",
        op.map(f"value_{name}", counted, lambda kv: kv[1]),
        KafkaSink(BROKERS, sink, add_config=CONFIG),
    )


flow = Dataflow("baseline")
_hop(
    flow,
    "ab",
    os.environ.get("BASELINE_A", "baseline.a"),
    os.environ.get("BASELINE_B", "baseline.b"),
)
_hop(
    flow,
    "bc",
    os.environ.get("BASELINE_B", "baseline.b"),
    os.environ.get("BASELINE_C", "baseline.c"),
)
