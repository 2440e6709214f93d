"""The real dataflow process on the real broker: commands in, state topics out."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from crypton import topics
from crypton.broker import EmbeddedBroker
from crypton.config import Settings, load_markets
from crypton.domain.messages import CancelOrder, Credit, PlaceOrder
from crypton.logreader import read_topics
from crypton.process import Child, free_port
from crypton.topics import ensure_topics
from tests.dataflows.kafka_support import (
    produce,
    produce_raw,
    start_dataflow,
    state_view,
    wait_clean_audit,
    wait_settled,
)
from tests.dataflows.scenarios import funding, trading

pytestmark = pytest.mark.integration

MARKETS = load_markets()


def test_orders_trade_and_settle_through_kafka(
    settings: Settings, spawn: Callable[..., Child]
) -> None:
    commands = funding(MARKETS) + trading(MARKETS, 600, seed=11)
    produce(settings, commands)
    start_dataflow(spawn, settings)
    wait_settled(settings, commands)
    report = wait_clean_audit(settings)
    assert report.clean, report.lines
    # Read once the audit is clean: state topics are written side by side, so a read
    # racing the sink may see an order's final state a moment before its trade.
    assert len(state_view(settings).trades) > 20
    # The commands were there before the flow started, so it read them in batches and
    # sent the books their orders as batch records (no key): the audit above read them.
    book_inbox = topics.topic_name(topics.BOOK_INBOX, settings.topic_prefix)
    records = list(read_topics(settings, [book_inbox]))
    assert any(r.key is None for r in records) and len(records) < len(commands)


def test_two_workers_and_two_processes_are_each_proven_by_the_audit(
    settings: Settings, spawn: Callable[..., Child]
) -> None:
    """The same inbox through one worker, two workers in one process and two processes.

    State is keyed by user and by market, and Bytewax spreads the keys of one inbox
    partition over the workers, so with several workers what different users send a
    book may reach it in another order than with one (dataflows/exchange.py): the
    results may differ where the order between users decides (which order fills
    first), and each run is proven correct by the audit over its own log. What no
    interleaving can change is the same in all three: the wallets' own decisions on
    each command, and every asset's total (credits minus debits, fees included).
    """
    commands = funding(MARKETS) + trading(MARKETS, 400, seed=12)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    layouts: dict[str, list[tuple[str, ...]]] = {
        "one": [()],
        "w2": [("-w", "2")],
        "procs": [("-i", "0", "-a", addresses), ("-i", "1", "-a", addresses)],
    }
    finals = {}
    for name, processes in layouts.items():
        run = dataclasses.replace(
            settings, partitions=1, topic_prefix=f"{settings.topic_prefix}{name}.",
            data_dir=settings.data_dir / name,
        )  # fmt: skip
        ensure_topics(run)
        produce(run, commands)
        flows = [
            start_dataflow(spawn, run, *args, name=f"dataflow-{name}-{i}")
            for i, args in enumerate(processes)
        ]
        wait_settled(run, commands)
        report = wait_clean_audit(run)
        assert report.clean, report.lines
        view = state_view(run)
        totals: dict[str, int] = {}
        for balances in view.balance_table().values():
            for asset, (available, held) in balances.items():
                totals[asset] = totals.get(asset, 0) + available + held
        # The wallet's refusals (version 1); the book's (post-only) depend on the order.
        rejected = {
            oid: s.reason
            for oid, s in view.orders.items()
            if s.status == "REJECTED" and s.version == 1
        }
        transfers = {key: t.status for key, t in view.transfers.items()}
        finals[name] = (totals, rejected, transfers, len(view.trades))
        for flow in flows:
            flow.stop()
    for name in ("w2", "procs"):
        assert finals[name][:3] == finals["one"][:3], name
    assert all(trades > 10 for *_, trades in finals.values())


def test_garbage_goes_to_dead_letters_and_the_flow_keeps_going(
    settings: Settings, spawn: Callable[..., Child]
) -> None:
    produce_raw(settings, b'{"msg": "place_order", "user_id": 42}', key=b"mallory")
    produce_raw(settings, b"\xff not json")
    credit = Credit(user_id="u", asset="USDT", amount=10**6, transfer_id="t", ts=1)
    produce(settings, [credit])
    start_dataflow(spawn, settings)
    view = wait_settled(settings, [credit])
    assert view.transfers[("u", "t")].status == "ACCEPTED"
    report = wait_clean_audit(settings)
    assert report.dead_letters == 2, report.lines
    assert report.clean, report.lines


def test_cancel_releases_exactly_the_hold(settings: Settings, spawn: Callable[..., Child]) -> None:
    start_dataflow(spawn, settings)
    place = PlaceOrder(
        user_id="u",
        order_id="o1",
        client_order_id="c1",
        market="BTC-USDT",
        side="buy",
        type="limit",
        price=30_000 * 10**6,
        quantity=20_000,
        ts=2,
    )
    credit = Credit(user_id="u", asset="USDT", amount=100 * 10**6, transfer_id="t", ts=1)
    produce(settings, [credit, place])
    view = wait_settled(settings, [credit, place])
    assert view.balance_table()["u"]["USDT"] == (100 * 10**6 - 6_012_000, 6_012_000)
    produce(settings, [CancelOrder(user_id="u", order_id="o1", ts=3)])
    deadline = time.monotonic() + 30
    while view.orders["o1"].status != "CANCELED" or view.balance_table()["u"]["USDT"][1]:
        assert time.monotonic() < deadline, view.orders["o1"]
        time.sleep(0.3)
        view = state_view(settings)
    assert view.balance_table()["u"]["USDT"] == (100 * 10**6, 0)


def test_flow_resumes_after_a_broker_restart(
    own_broker: EmbeddedBroker, own_settings: Settings, spawn: Callable[..., Child]
) -> None:
    if own_broker.settings.broker != "kafka":
        pytest.skip("needs Apache Kafka, which keeps its data (tansu keeps nothing)")
    settings = own_settings
    first = funding(MARKETS, users=("a", "b"))
    produce(settings, first)
    start_dataflow(spawn, settings)
    wait_settled(settings, first)
    own_broker.restart(timeout=60)
    second = trading(MARKETS, 200, seed=13, users=("a", "b"))
    produce(settings, second)
    wait_settled(settings, second, timeout=180)
    report = wait_clean_audit(settings)
    assert report.clean, report.lines
