"""The dataflow's sink turns a broker that does not acknowledge into one clear exception."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import KafkaError

from crypton.config import Settings
from crypton.process import free_ports
from dataflows.kafka_io import LogSink, Record, SinkDeliveryError, _LogPartition


def test_unacknowledged_records_fail_the_epoch_with_a_clear_error() -> None:
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    sink = _LogPartition(dead, delivery_timeout_s=1)
    sink.write_batch([[("crypton.orders", b"k", b"v")] * 3])
    began = time.monotonic()
    with pytest.raises(SinkDeliveryError, match="restarts from its last snapshot"):
        sink.snapshot()
    assert time.monotonic() - began < 10


def test_a_fatal_producer_error_is_raised_by_the_sink_not_by_the_callback() -> None:
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    sink = _LogPartition(dead, delivery_timeout_s=1)
    sink._on_error(KafkaError(KafkaError._FATAL, "test: fenced", fatal=True))  # no raise here
    with pytest.raises(SinkDeliveryError, match="fatal: test: fenced"):
        sink.write_batch([[("crypton.orders", b"k", b"v")]])


def test_a_flow_whose_output_is_not_acknowledged_stops_with_the_sink_error() -> None:
    """End to end in Bytewax: the epoch's flush fails, the run stops (a process would
    exit non-zero and be restarted) and the cause says why, with no SystemError."""
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    flow = Dataflow("sink_faults")
    records: list[tuple[str, list[Record]]] = [("0", [("crypton.orders", b"k", b"v")])] * 5
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
