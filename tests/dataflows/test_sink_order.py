"""The sink writes each batch in inbox-position order, whatever order Bytewax hands keys
in, and what goes to an inbox as one record per partition and call."""

from __future__ import annotations

import dataclasses
from typing import Any

from crypton import schema
from crypton.config import Settings
from crypton.domain.messages import BookCancel
from crypton.process import free_ports
from crypton.topics import partition_for
from dataflows.kafka_io import LogSink, Tagged, _LogPartition, position


class _Recorder:
    def __init__(self) -> None:
        self.written: list[tuple[str, bytes]] = []
        self.keys: list[bytes | None] = []
        self.partitions: list[int | None] = []

    def produce(
        self, topic: str, value: bytes, key: bytes | None, partition: int | None = None, **_: Any
    ) -> None:
        self.written.append((topic, value))
        self.keys.append(key)
        # -1 is librdkafka's "unassigned": the producer's partitioner picks by the key.
        self.partitions.append(None if partition in (None, -1) else partition)

    def poll(self, _timeout: float) -> int:
        return 0


def test_a_batch_is_written_in_offset_order_and_each_key_keeps_its_own() -> None:
    sink = _LogPartition(dataclasses.replace(Settings(), kafka_port=free_ports(2)))
    recorder = _Recorder()
    sink._producer = recorder  # type: ignore[assignment]
    # Bytewax hands the outputs grouped by key, keys in key order: "alice" (offsets 1, 5)
    # before "bob" (offset 3). Offset 5 caused two records, kept in their order.
    alice: list[Tagged] = [
        (1, "t", b"a", b"a1"),
        (5, "t", b"a", b"a5"),
        (5, "t", b"a", b"a5+"),
    ]
    bob: list[Tagged] = [(3, "t", b"b", b"b3")]
    sink.write_batch([alice, bob])
    assert [value for _topic, value in recorder.written] == [b"a1", b"b3", b"a5", b"a5+"]


def test_one_key_goes_to_one_sink_partition() -> None:
    settings = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    assert LogSink(settings).part_fn("alice") == 0
    several = LogSink(settings, parts=4)
    assert several.part_fn("alice") == several.part_fn("alice")
    assert len({several.part_fn(f"user{i}") % 4 for i in range(50)}) == 4


def _sink(partitions: int) -> tuple[_LogPartition, _Recorder]:
    sink = _LogPartition(dataclasses.replace(Settings(), kafka_port=free_ports(2)))
    recorder = _Recorder()
    sink._producer = recorder  # type: ignore[assignment]
    sink._counts = {schema.BOOK_INBOX.name(): partitions, schema.WALLET_INBOX.name(): partitions}
    return sink, recorder


def _cancel(market: str, seq: int) -> BookCancel:
    return BookCancel(market=market, src="alice", seq=seq, order_id=f"o{seq}", ts=0)


def test_messages_for_the_other_step_go_as_one_record_per_inbox_partition() -> None:
    encode = schema.record_encoder()
    sink, recorder = _sink(partitions=64)
    markets = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
    where = {m: partition_for(m.encode(), 64) for m in markets}
    assert len(set(where.values())) == 3, "three markets, three partitions"
    # Bytewax hands keys one after another: positions put back the log's order.
    btc = [(position(1, i), *encode(_cancel("BTC-USDT", 1 + i))) for i in range(3)]
    eth = [
        (position(1, 3), *encode(_cancel("ETH-USDT", 9))),
        (position(2), *encode(_cancel("ETH-USDT", 10))),
    ]
    sol = [(position(3), *encode(_cancel("SOL-USDT", 1)))]
    state: list[Tagged] = [(position(1, 1), "crypton.orders", b"o", b"state")]
    sink.write_batch([btc, eth, sol, state])
    assert recorder.written[0] == ("crypton.orders", b"state")  # state records as they come
    batches = {
        p: schema.BOOK_INBOX.decode_all(v)
        for (t, v), p in zip(recorder.written[1:], recorder.partitions[1:], strict=True)
        if p is not None
    }
    assert batches == {
        where["BTC-USDT"]: [_cancel("BTC-USDT", 1 + i) for i in range(3)],
        where["ETH-USDT"]: [_cancel("ETH-USDT", 9), _cancel("ETH-USDT", 10)],
    }
    # A lone message is its own record, keyed, where the producer's partitioner puts it.
    (lone,) = [i for i, p in enumerate(recorder.partitions) if p is None and i > 0]
    assert recorder.keys[lone] == b"SOL-USDT"
    assert schema.BOOK_INBOX.decode(recorder.written[lone][1]) == _cancel("SOL-USDT", 1)
    assert len(recorder.written) == 4


def test_a_batch_record_closes_at_a_thousand_messages() -> None:
    encode = schema.record_encoder()
    sink, recorder = _sink(partitions=4)
    many = [(position(i), *encode(_cancel("BTC-USDT", i + 1))) for i in range(2_500)]
    sink.write_batch([many])
    sizes = [len(schema.BOOK_INBOX.decode_all(v)) for _t, v in recorder.written]
    assert sizes == [1_000, 1_000, 500]
    again = [m for _t, v in recorder.written for m in schema.BOOK_INBOX.decode_all(v)]
    assert again == [_cancel("BTC-USDT", i + 1) for i in range(2_500)]
