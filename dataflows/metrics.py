"""Prometheus metrics of the dataflow process (served when CRYPTON_DATAFLOW_METRICS_PORT is set)."""

from __future__ import annotations

import os

from prometheus_client import Counter, start_http_server

from crypton.domain.messages import DeadLetter, Message, Trade

__all__ = ["count", "serve"]

MESSAGES = Counter("crypton_dataflow_messages_total", "Inbox messages processed", ["step"])
EMITTED = Counter("crypton_dataflow_emitted_total", "Messages emitted", ["step"])
TRADES = Counter("crypton_dataflow_trades_total", "Trades executed")
DEAD_LETTERS = Counter(
    "crypton_dataflow_dead_letters_total", "Messages sent to dead letters", ["step"]
)


def count(step: str, processed: int, out: list[Message]) -> None:
    MESSAGES.labels(step).inc(processed)
    EMITTED.labels(step).inc(len(out))
    trades = dead = 0
    for message in out:
        if type(message) is Trade:
            trades += 1
        elif type(message) is DeadLetter:
            dead += 1
    if trades:
        TRADES.inc(trades)
    if dead:
        DEAD_LETTERS.labels(step).inc(dead)


def serve(port: int) -> None:
    """Serve /metrics; CRYPTON_DATAFLOW_METRICS_HOST=0.0.0.0 lets a pod monitor reach it."""
    start_http_server(port, addr=os.environ.get("CRYPTON_DATAFLOW_METRICS_HOST", "127.0.0.1"))
