"""Instructions the dataflow's thread spends per order outside Bytewax and the broker,
counted by valgrind: the source's decoding, the steps, their encoding and the sink.

    make mypyc && python -m loadtest.flow_instructions

``bench_pipeline`` times the whole flow against a broker, on a machine whose speed
wanders by a factor of two from hour to hour; a change of a few percent in the flow's
own code cannot be seen there. This runs the flow's own parts in one process, in the
order Bytewax runs them for one worker, with the two inbox topics as lists in memory:
each inbox partition is a ``dataflows.kafka_io`` source partition whose records come
from its list, a batch's items go to their keys' ``WalletLogic`` or ``BookLogic``
(``on_batch``), and what the batch emitted goes to the real sink partition
(``write_batch``), whose producer keeps the state records queued for a broker that is
not there and whose records for an inbox are appended to that inbox's list. It funds
``bench_pipeline``'s users, then runs ``--orders`` of its orders on a thread of their
own until no inbox has anything left, under ``valgrind --tool=callgrind`` counting only
inside that thread (``_COUNTED``, ``PYTHONHASHSEED=0``), and prints the count per order:
the setup, the funding and the commands' making are not in it. Not counted: Bytewax's
own Rust, librdkafka's threads beyond what ``produce`` does on the caller's, the broker.
Needs valgrind (``apt-get install valgrind``); about a minute.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from crypton import schema
from crypton.config import Settings, load_markets
from crypton.domain import matching
from crypton.domain.messages import Credit, Message
from crypton.runtime import tune_gc
from crypton.topics import partition_for
from dataflows import kafka_io, metrics
from dataflows.exchange import LIVE_MACHINES, BookLogic, WalletLogic, _KeyLogic, _Steps
from dataflows.kafka_io import BookBatch, Inbound, WalletBatch, _InboxPartition, _LogPartition
from loadtest import callgrind
from loadtest.bench_pipeline import USERS, _orders

PARTITIONS = 4
"""Partitions of each inbox, as ``Settings``' default."""

BATCH = 1000
"""Records a source partition takes at a time, as the consumer's batch."""


class _Record:
    """An inbox record as the source reads one (the methods of confluent-kafka's)."""

    __slots__ = ("_key", "_offset", "_value")

    def __init__(self, key: bytes | None, value: bytes, offset: int) -> None:
        self._key, self._value, self._offset = key, value, offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:
        return None


class _Log:
    """One inbox partition's records, and how far the source has taken them."""

    def __init__(self) -> None:
        self.records: list[_Record] = []
        self.taken = 0
        self.consumer = None  # the source reads a lag from it; there is none here

    def append(self, key: bytes | None, value: bytes) -> None:
        self.records.append(_Record(key, value, len(self.records)))

    def take(self, _partition: int) -> list[_Record]:
        batch = self.records[self.taken : self.taken + BATCH]
        self.taken += len(batch)
        return batch


class _Source(_InboxPartition):
    """A source partition reading a ``_Log``: ``_InboxPartition`` without its consumer."""

    def __init__(self, log: _Log, spec: schema.TopicSpec, batch: type[list[Inbound]]) -> None:
        self._signed = None
        self._shared = log  # type: ignore[assignment]
        self._topic, self._partition, self._offset = spec.name(), 0, 0
        self._decode_all = spec.decode_all
        self._key_of = spec.key_of
        self._awake = None
        self._quiet_since = None
        self._stall = metrics.PartitionStall()
        self._batch = batch
        self._idle_key = (self._topic, id(log))
        kafka_io._idle.join(self._idle_key)


class _Sink(_LogPartition):
    """The sink partition, its records for an inbox appended to that inbox's logs."""

    def __init__(self, logs: dict[str, list[_Log]], settings: Settings) -> None:
        super().__init__(settings, delivery_timeout_s=_FOREVER_S)
        self._logs = logs
        self._counts = dict.fromkeys(logs, PARTITIONS)
        self.records: Counter[str] = Counter()

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1) -> None:
        logs = self._logs.get(topic)
        if logs is None:
            super()._produce(topic, value, key, partition)
            return
        assert key is not None or partition >= 0
        where = partition if partition >= 0 else partition_for(key or b"", PARTITIONS)
        logs[where].append(key, value)
        self.records[topic] += 1


_FOREVER_S = 86_400
"""The state records' delivery timeout: they wait for a broker that never comes."""

_CLIENT = {
    # Every state record stays queued (nothing to deliver it to): room for them all.
    "queue.buffering.max.messages": 10_000_000,
    "queue.buffering.max.kbytes": 4_000_000,
    # Dial the missing broker rarely: its threads' work is not the flow's.
    "reconnect.backoff.ms": 60_000,
    "reconnect.backoff.max.ms": 60_000,
    "log_level": 0,
}
"""librdkafka settings of the sink's producer here (``CRYPTON_KAFKA_CONFIG``'s format)."""


class Flow:
    """The flow's parts for one worker, over inboxes in memory; ``client_config`` a
    librdkafka properties file for the sink's producer (``_CLIENT``)."""

    def __init__(self, client_config: Path) -> None:
        markets = load_markets()
        routes = schema.record_routes()
        self.wallet_steps = _Steps("wallet", markets, routes, LIVE_MACHINES)
        self.book_steps = _Steps("book", markets, routes, LIVE_MACHINES)
        self.wallet_logs = [_Log() for _ in range(PARTITIONS)]
        self.book_logs = [_Log() for _ in range(PARTITIONS)]
        self.sources = [_Source(log, schema.WALLET_INBOX, WalletBatch) for log in self.wallet_logs]
        self.sources += [_Source(log, schema.BOOK_INBOX, BookBatch) for log in self.book_logs]
        self.sink = _Sink(
            {
                schema.WALLET_INBOX.name(): self.wallet_logs,
                schema.BOOK_INBOX.name(): self.book_logs,
            },
            Settings(bootstrap="127.0.0.1:1", kafka_config_file=client_config),
        )
        self.logics: dict[tuple[bool, str], _KeyLogic] = {}
        self.emitted = 0
        """Records the steps emitted, inbox records not yet batched included."""
        self.calls = 0

    def send(self, commands: Sequence[Message]) -> None:
        """Append commands to the wallet inbox, keyed by user, as the API writes them."""
        encode = schema.record_encoder()
        for command in commands:
            _topic, key, value = encode(command)
            self.wallet_logs[partition_for(key, PARTITIONS)].append(key, value)

    def run(self) -> None:
        """Run until no inbox has a record left: each pass takes one batch of each partition."""
        while any(log.taken < len(log.records) for log in self.wallet_logs + self.book_logs):
            for source in self.sources:
                items = source.next_batch()
                if not items:
                    continue
                outputs: list[Any] = []
                for key, batch in items:
                    book = isinstance(batch, BookBatch)
                    logic = self.logics.get((book, key))
                    if logic is None:
                        logic = self.logics[(book, key)] = (
                            BookLogic(self.book_steps.here(), None)
                            if book
                            else WalletLogic(self.wallet_steps.here(), None)
                        )
                    out, _state = logic.on_batch([batch])
                    self.calls += 1
                    outputs.extend(out)
                if outputs:
                    self.emitted += sum(len(tagged) for tagged in outputs)
                    self.sink.write_batch(outputs)


def _run(orders: int, seed: int) -> Flow:
    """Fund the users, then run the orders on a thread of their own (``_COUNTED``)."""
    with tempfile.TemporaryDirectory() as tmp:  # read once, as the sink's producer is made
        client = Path(tmp) / "client.properties"
        client.write_text("".join(f"{k}={v}\n" for k, v in _CLIENT.items()))
        flow = Flow(client)
    flow.send(
        [
            Credit(user_id=f"user{u}", asset=a, amount=10**15, transfer_id=f"fund-{a}", ts=1)
            for u in range(USERS)
            for a in ("BTC", "ETH", "USDT")
        ]
    )
    flow.run()
    # All sent within a second, as bench_pipeline's full-speed phase, each stamped with
    # the millisecond the API took it in.
    stamp, per_ms = 1_700_000_000_000, max(1, orders // 1000)
    flow.send(
        [
            msgspec.structs.replace(order, ts=stamp + i // per_ms)
            for i, order in enumerate(_orders(orders, random.Random(seed), 0))
        ]
    )
    flow.calls = flow.emitted = 0
    flow.sink.records.clear()
    counted = threading.Thread(target=flow.run, name="flow")
    counted.start()
    counted.join()
    return flow


_COUNTED = "thread_run"
"""CPython's entry of a thread (``Modules/_threadmodule.c``): valgrind counts only inside
it, which is the orders' run and nothing of the setup, the funding or the commands'
making, nor librdkafka's own threads."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=20_000, help="default 20,000")
    parser.add_argument("--seed", type=int, default=2024, help="bench_pipeline's orders' seed")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        tune_gc()
        flow = _run(args.child, args.seed)
        print(
            f"calls={flow.calls} emitted={flow.emitted} inbox={sum(flow.sink.records.values())}",
            file=sys.stderr,
        )
        return 0
    if args.orders <= 0:
        parser.error("--orders must be positive")
    try:
        counted = callgrind.count(
            f"{args.orders:,} orders", "loadtest.flow_instructions", _COUNTED,
            "--child", str(args.orders), "--seed", str(args.seed),
        )  # fmt: skip
    except callgrind.CountFailed as failed:
        print(f"error: {failed.line}", file=sys.stderr)
        return failed.code
    total = counted.instructions
    tallied = re.search(r"calls=(\d+) emitted=(\d+) inbox=(\d+)", counted.stderr)
    if tallied is None or total == 0:
        print(f"error: nothing counted: no {_COUNTED} in this Python", file=sys.stderr)
        return 1
    calls, emitted, inbox = (int(n) for n in tallied.groups())
    core = "compiled" if matching.__file__.endswith(".so") else "plain Python (make mypyc)"
    print(f"core               {core}")
    print(f"orders             {args.orders:,} (seed {args.seed}), {USERS} users, funded first")
    print(f"on_batch calls     {calls:,}; records out {emitted:,}")
    print(f"inbox records      {inbox:,} (the records out for the other step, batched)")
    print(f"instructions       {total:,}: {total / args.orders:,.0f} an order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
