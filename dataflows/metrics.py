"""Prometheus metrics of the dataflow process (served when CRYPTON_DATAFLOW_METRICS_PORT is set).

Besides counters of what the steps process and emit:

- ``crypton_dataflow_consumer_lag{topic, partition}``: records of an inbox partition
  not read yet (high watermark minus the next offset to read), from the consumer's
  cached watermark, refreshed at most once a second per partition;
- ``crypton_dataflow_command_state_seconds{step}``: from the time the API stamped a
  command to the moment a step emits an order state it caused (wall clock, for
  operators only: nothing the steps decide reads it).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, cast

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from crypton.domain.messages import DeadLetter, Message, OrderState, Trade

__all__ = ["count", "observe_lag", "serve"]

log = logging.getLogger("crypton.dataflow")

MESSAGES = Counter("crypton_dataflow_messages_total", "Inbox messages processed", ["step"])
EMITTED = Counter("crypton_dataflow_emitted_total", "Messages emitted", ["step"])
TRADES = Counter("crypton_dataflow_trades_total", "Trades executed")
DEAD_LETTERS = Counter(
    "crypton_dataflow_dead_letters_total", "Messages sent to dead letters", ["step"]
)
CONSUMER_LAG = Gauge(
    "crypton_dataflow_consumer_lag",
    "Records of an inbox partition not read yet",
    ["topic", "partition"],
)
COMMAND_STATE = Histogram(
    "crypton_dataflow_command_state_seconds",
    "From the API's stamp on a command to a step emitting the order state it caused",
    ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_LAG_EVERY_S = 1.0
_lag_checked: dict[tuple[str, int], float] = {}


def count(step: str, processed: int, out: list[Message]) -> None:
    MESSAGES.labels(step).inc(processed)
    EMITTED.labels(step).inc(len(out))
    trades = dead = 0
    now_ms = 0.0
    for message in out:
        kind = type(message)
        if kind is OrderState:
            now_ms = now_ms or time.time() * 1000
            stamped = cast(OrderState, message).updated_at
            COMMAND_STATE.labels(step).observe(max(0.0, now_ms - stamped) / 1000)
        elif kind is Trade:
            trades += 1
        elif kind is DeadLetter:
            dead += 1
    if trades:
        TRADES.inc(trades)
    if dead:
        DEAD_LETTERS.labels(step).inc(dead)


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
