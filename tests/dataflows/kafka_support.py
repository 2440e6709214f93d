"""Helpers for tests that run the real dataflow process against the real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Producer

from crypton import schema, topics
from crypton.audit import AuditReport, audit
from crypton.config import Settings
from crypton.domain.messages import Credit, Debit, Message, PlaceOrder
from crypton.kafka import producer_config
from crypton.logreader import read_topics
from crypton.process import Child
from crypton.views import View

_STATE = (
    topics.ORDERS,
    topics.BALANCES,
    topics.TRADES,
    topics.TRANSFERS,
    topics.DEPTH,
    topics.REJECTIONS,
)


def produce(
    settings: Settings,
    messages: Iterable[Message],
    producer: Producer | None = None,
) -> None:
    """Write commands where the API would: the wallet inbox, keyed by user."""
    own = producer is None
    producer = producer or Producer(producer_config(settings))
    encode = schema.record_encoder(settings.topic_prefix)
    for message in messages:
        topic, key, value = encode(message)
        producer.produce(topic, value, key)
        producer.poll(0)
    if own:
        assert producer.flush(30) == 0


def produce_raw(settings: Settings, value: bytes, key: bytes = b"x") -> None:
    producer = Producer(producer_config(settings))
    producer.produce(topics.topic_name(topics.WALLET_INBOX, settings.topic_prefix), value, key)
    assert producer.flush(30) == 0


def start_dataflow(
    spawn: Callable[..., Child],
    settings: Settings,
    *args: str,
    name: str = "dataflow",
    env: dict[str, str] | None = None,
) -> Child:
    """The real dataflow process, as `crypton dataflow` runs it, with 1 s snapshots."""
    recovery = settings.data_dir / "recovery"
    if not recovery.exists():
        recovery.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
            check=True,
            capture_output=True,
        )
    argv = [
        sys.executable,
        "-m",
        "bytewax.run",
        "dataflows.exchange:flow",
        "-r",
        str(recovery),
        "-s",
        "1",
        "-b",
        "0",
        *args,
    ]
    return spawn(name, argv, settings=settings, env=env, cwd=Path(__file__).parents[2])


def state_view(settings: Settings) -> View:
    """Every state topic folded, read to its current end."""
    view = View()
    names = {topics.topic_name(t, settings.topic_prefix): t for t in _STATE}
    for record in read_topics(settings, list(names)):
        view.apply(schema.BY_LOGICAL[names[record.topic]].decode(record.value or b""))
    return view


def settled(view: View, commands: Iterable[Message]) -> bool:
    """Whether every command has its outcome on the state topics."""
    for command in commands:
        if isinstance(command, PlaceOrder):
            state = view.orders.get(command.order_id)
            if state is None or state.status == "NEW":
                return False
        elif (
            isinstance(command, Credit | Debit)
            and (command.user_id, command.transfer_id) not in view.transfers
        ):
            return False
    return True


def wait_settled(settings: Settings, commands: list[Message], timeout: float = 120) -> View:
    deadline = time.monotonic() + timeout
    while True:
        view = state_view(settings)
        if settled(view, commands):
            return view
        if time.monotonic() > deadline:
            missing = [c for c in commands if not settled(view, [c])][:5]
            raise AssertionError(f"not settled after {timeout} s, e.g. {missing}")
        time.sleep(0.5)


def wait_clean_audit(settings: Settings, timeout: float = 60) -> AuditReport:
    """The audit, retried while the last reports are still travelling between the steps."""
    deadline = time.monotonic() + timeout
    while True:
        report = audit(settings)
        if report.clean or time.monotonic() > deadline:
            return report
        time.sleep(1)
