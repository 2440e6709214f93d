"""What crosses between the processes of a cluster, and what need not: inbox batches
cross as one msgpack value each (``kafka_io.WalletBatch.__reduce__``), what arrives
being what left, in position order; a key's outputs stay on the worker that computed
them (``kafka_io.worker_hash``)."""

from __future__ import annotations

import pickle
import threading

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.testing import TestingSource, cluster_main

from crypton.config import Settings
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    Credit,
    DeadLetter,
    PlaceOrder,
    Settlement,
)
from dataflows.kafka_io import BookBatch, LogSink, WalletBatch, is_book, position, worker_hash

ORDER = PlaceOrder(
    user_id="alice", order_id="o1", client_order_id="c1", market="BTC-USDT", side="buy",
    type="limit", price=5_000_000_000_000, quantity=1_000, ts=1_700_000_000_000,
)  # fmt: skip
SETTLEMENT = Settlement(
    user_id="alice", src="BTC-USDT", seq=7, prev=6, order_id="o1", take=10, refund=0,
    receive=1_000, closed=True, ts=3,
)  # fmt: skip
DEAD = DeadLetter(
    topic="crypton.wallet.inbox", partition=3, offset=9, key=b"alice", value=b"\xff{",
    reason="undecodable: invalid JSON",
)  # fmt: skip


def _across(batch: object) -> object:
    return pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))


def test_a_wallet_batch_of_commands_settlements_and_dead_letters_arrives_in_order() -> None:
    credit = Credit(user_id="alice", asset="USDT", amount=5, transfer_id="t1", ts=1)
    batch = WalletBatch(
        [
            (position(3), ORDER),
            (position(4, 0), SETTLEMENT),
            (position(4, 1), SETTLEMENT),
            (position(9), DEAD),
            (position(10), credit),
        ]
    )
    arrived = _across(batch)
    assert type(arrived) is WalletBatch
    assert arrived == batch
    assert [type(m) for _, m in arrived] == [PlaceOrder, Settlement, Settlement, DeadLetter, Credit]
    assert not is_book(("alice", arrived))  # type: ignore[arg-type]


def test_a_book_batch_stays_a_book_batch() -> None:
    order = BookOrder(market="BTC-USDT", src="alice", seq=1, order=ORDER, hold=5_000_000)
    cancel = BookCancel(market="BTC-USDT", src="alice", seq=2, order_id="o1", ts=2)
    batch = BookBatch([(position(1, 0), order), (position(1, 1), cancel)])
    arrived = _across(batch)
    assert type(arrived) is BookBatch
    assert arrived == batch
    assert is_book(("BTC-USDT", arrived))  # type: ignore[arg-type]


def test_a_batch_pickles_as_one_value_not_a_reduce_per_message() -> None:
    # Not a timing: the pickle holds one msgpack value, not a reduce per message.
    batch = WalletBatch([(position(n), ORDER) for n in range(100)])
    assert b"PlaceOrder" not in pickle.dumps(batch)
    assert b"PlaceOrder" in pickle.dumps(list(batch))


class _Where(FixedPartitionedSink[str, None]):
    """A sink of keys that notes which worker thread wrote each, partitioned like
    ``LogSink`` with as many partitions as workers."""

    def __init__(self, parts: int, wrote: dict[str, int]) -> None:
        self.parts, self.wrote = parts, wrote

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return LogSink(Settings(), parts=self.parts).part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _WherePart:
        return _WherePart(self.wrote)


class _WherePart(StatefulSinkPartition[str, None]):
    def __init__(self, wrote: dict[str, int]) -> None:
        self.wrote = wrote

    def write_batch(self, items: list[str]) -> None:
        for key in items:
            self.wrote[key] = threading.get_ident()

    def snapshot(self) -> None:
        return None


def test_a_keys_outputs_are_written_by_the_worker_that_ran_its_step() -> None:
    keys = [f"user{n}" for n in range(200)] + ["BTC-USDT", "ETH-USDT", "M1-USDT"]
    ran: dict[str, int] = {}
    wrote: dict[str, int] = {}

    def step(state: None, key: str) -> tuple[None, str]:
        ran[key] = threading.get_ident()
        return None, key

    flow = Dataflow("where")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    op.output("out", op.stateful_map("step", keyed, step), _Where(2, wrote))
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=2)

    assert len(set(ran.values())) == 2  # both workers ran keys
    assert {key: wrote[key] for key in keys} == {key: ran[key] for key in keys}
    assert {worker_hash(key) % 2 for key in keys} == {0, 1}
