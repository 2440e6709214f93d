"""The dataflow's sink turns a broker that does not acknowledge into one clear exception."""

from __future__ import annotations

import dataclasses
import time

import pytest
from confluent_kafka import KafkaError

from crypton.config import Settings
from crypton.process import free_ports
from dataflows.kafka_io import SinkDeliveryError, _LogPartition


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
