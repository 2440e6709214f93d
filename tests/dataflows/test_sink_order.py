"""The sink writes each batch in inbox-offset order, whatever order Bytewax hands keys in."""

from __future__ import annotations

import dataclasses
from typing import Any

from crypton.config import Settings
from crypton.process import free_ports
from dataflows.kafka_io import LogSink, Tagged, _LogPartition


class _Recorder:
    def __init__(self) -> None:
        self.written: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes, **_: Any) -> None:
        self.written.append((topic, value))

    def poll(self, _timeout: float) -> int:
        return 0


def test_a_batch_is_written_in_offset_order_and_each_key_keeps_its_own() -> None:
    sink = _LogPartition(dataclasses.replace(Settings(), kafka_port=free_ports(2)))
    recorder = _Recorder()
    sink._producer = recorder  # type: ignore[assignment]
    # Bytewax hands the outputs grouped by key, keys in key order: "alice" (offsets 1, 5)
    # before "bob" (offset 3). Offset 5 caused two records, kept in their order.
    alice: list[Tagged] = [
        (1, ("t", b"a", b"a1")),
        (5, ("t", b"a", b"a5")),
        (5, ("t", b"a", b"a5+")),
    ]
    bob: list[Tagged] = [(3, ("t", b"b", b"b3"))]
    sink.write_batch([alice, bob])
    assert [value for _topic, value in recorder.written] == [b"a1", b"b3", b"a5", b"a5+"]


def test_one_key_goes_to_one_sink_partition() -> None:
    settings = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    assert LogSink(settings).part_fn("alice") == 0
    several = LogSink(settings, parts=4)
    assert several.part_fn("alice") == several.part_fn("alice")
    assert len({several.part_fn(f"user{i}") % 4 for i in range(50)}) == 4
