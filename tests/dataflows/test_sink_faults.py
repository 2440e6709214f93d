"""The dataflow's sink turns a broker that does not acknowledge into one clear exception."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import KafkaError
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from crypton import topics
from crypton.config import Settings, load_markets
from crypton.kafka import admin
from crypton.process import Child, free_ports
from dataflows.kafka_io import LogSink, SinkDeliveryError, Tagged, _LogPartition
from tests.dataflows.kafka_support import (
    produce,
    start_dataflow,
    state_view,
    wait_clean_audit,
    wait_settled,
)
from tests.dataflows.scenarios import funding, trading

MARKETS = load_markets()


def test_unacknowledged_records_fail_the_epoch_with_a_clear_error() -> None:
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    sink = _LogPartition(dead, delivery_timeout_s=1)
    sink.write_batch([[(0, "crypton.orders", b"k", b"v")] * 3])
    began = time.monotonic()
    with pytest.raises(SinkDeliveryError, match="restarts from its last snapshot"):
        sink.snapshot()
    assert time.monotonic() - began < 10


def test_a_fatal_producer_error_is_raised_by_the_sink_not_by_the_callback() -> None:
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    sink = _LogPartition(dead, delivery_timeout_s=1)
    sink._failures.on_error(KafkaError(KafkaError._FATAL, "test: fenced", fatal=True))  # no raise
    with pytest.raises(SinkDeliveryError, match="fatal: test: fenced"):
        sink.write_batch([[(0, "crypton.orders", b"k", b"v")]])


def test_a_flow_whose_output_is_not_acknowledged_stops_with_the_sink_error() -> None:
    """End to end in Bytewax: the epoch's flush fails, the run stops (a process would
    exit non-zero and be restarted) and the cause says why, with no SystemError."""
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    flow = Dataflow("sink_faults")
    records: list[tuple[str, list[Tagged]]] = [("u", [(0, "crypton.orders", b"k", b"v")])] * 5
    stream = op.input("in", flow, TestingSource(records))
    op.output("out", stream, LogSink(dead, delivery_timeout_s=1))
    began = time.monotonic()
    # Bytewax wraps what the sink raised: look for it along the chain of causes.
    with pytest.raises(Exception) as failed:
        run_main(flow, epoch_interval=timedelta(milliseconds=100))
    chain, error = [], failed.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    text = "\n".join(chain)
    assert "SinkDeliveryError" in text, text
    assert "SystemError" not in text, text
    assert time.monotonic() - began < 15


def _refuse_records(settings: Settings, logical: str, refuse: bool) -> None:
    """Make one topic refuse every record (``max.message.bytes`` below any record's
    size: the broker answers MSG_SIZE_TOO_LARGE) while reads go on, or undo it."""
    name = topics.topic_name(logical, settings.topic_prefix)
    operation = AlterConfigOpType.SET if refuse else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", "64", incremental_operation=operation)
    resource = ConfigResource("topic", name, incremental_configs=[entry])
    client = admin(settings)  # kept alive until the answer: its futures die with it
    for future in client.incremental_alter_configs([resource]).values():
        future.result()


@pytest.mark.integration
@pytest.mark.slow
def test_unwritable_output_ends_the_dataflow_cleanly_and_a_restart_loses_nothing(
    own_settings: Settings, spawn: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orders topic refuses what the dataflow writes while commands stream in: the
    sink raises SinkDeliveryError and the dataflow exits non-zero; once the topic takes
    writes again, a restart (what the supervisor does) resumes from the last snapshot:
    nothing lost, nothing applied twice."""
    monkeypatch.setenv("CRYPTON_SINK_TIMEOUT", "3")
    settings = own_settings
    commands = funding(MARKETS) + trading(MARKETS, 3_000, seed=11)
    dataflow = start_dataflow(spawn, settings)
    produce(settings, commands[: len(commands) // 2])
    deadline = time.monotonic() + 60
    while not state_view(settings).orders:  # the flow runs and writes
        assert time.monotonic() < deadline, "the dataflow wrote no order state in 60 s"
        time.sleep(0.5)
    _refuse_records(settings, topics.ORDERS, True)
    try:
        produce(settings, commands[len(commands) // 2 :])
        began = time.monotonic()
        code = dataflow.wait(60)
        took = time.monotonic() - began
    finally:
        _refuse_records(settings, topics.ORDERS, False)
    log = dataflow.log_path.read_text(errors="replace")
    print(f"dataflow exited with code {code} {took:.1f}s after the orders topic refused writes")
    assert code != 0
    assert "SinkDeliveryError" in log and "SystemError" not in log, log[-3000:]
    dataflow.start()
    wait_settled(settings, commands, timeout=180)
    report = wait_clean_audit(settings)
    assert report.clean, "\n".join(report.lines)
