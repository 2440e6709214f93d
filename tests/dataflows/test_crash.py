"""Crash tests: SIGKILL the dataflow at random moments, restart it, lose and repeat nothing."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from crypton.config import Settings, load_markets
from crypton.domain.messages import Message
from crypton.kafka import producer_config
from crypton.logreader import read_topics
from crypton.process import Child
from crypton.topics import ensure_topics, topic_name
from crypton.views import View
from tests.dataflows.kafka_support import (
    produce,
    start_dataflow,
    state_view,
    wait_clean_audit,
    wait_settled,
)
from tests.dataflows.scenarios import funding, trading

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARKETS = load_markets()
COMMANDS = 5_000
KILLS = 3


def _seed() -> int:
    seed = int(os.environ.get("CRYPTON_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed {seed} (CRYPTON_CRASH_SEED to repeat)")
    return seed


def _kill_and_restart(dataflow: Child, rng: random.Random, window: tuple[float, float]) -> None:
    time.sleep(1.5)  # let the process start and the first epochs commit
    for kill in range(KILLS):
        time.sleep(rng.uniform(*window))
        dataflow.signal(signal.SIGKILL)
        dataflow.wait(10)
        print(f"kill {kill + 1}: SIGKILL at {time.strftime('%X')}, restarting")
        dataflow.start()


def _final(view: View) -> tuple[object, object]:
    orders = {
        oid: (s.status, s.reason, s.filled_quantity, s.filled_funds, s.fee, s.version)
        for oid, s in view.orders.items()
    }
    return orders, view.balance_table()


def test_sigkill_while_commands_stream_in(settings: Settings, spawn: Callable[..., Child]) -> None:
    """(a) Commands arrive while the dataflow is killed three times. Arrival timing differs
    from run to run, so the reference is the audit's replay of the log."""
    rng = random.Random(_seed())
    commands = funding(MARKETS) + trading(MARKETS, COMMANDS, seed=rng.randrange(1 << 30))
    dataflow = start_dataflow(spawn, settings)

    def stream() -> None:
        producer = Producer(producer_config(settings))
        for start in range(0, len(commands), 100):
            produce(settings, commands[start : start + 100], producer)
            time.sleep(0.06)  # about 1,600 commands/s: the kills land mid-stream
        assert producer.flush(30) == 0

    writer = threading.Thread(target=stream)
    writer.start()
    _kill_and_restart(dataflow, rng, (0.5, 1.5))
    writer.join()
    wait_settled(settings, commands, timeout=240)
    report = wait_clean_audit(settings)
    assert report.clean, "\n".join(report.lines)
    assert len(state_view(settings).trades) > 100


def test_sigkill_over_a_written_inbox_matches_a_crash_free_run(
    settings: Settings, spawn: Callable[..., Child]
) -> None:
    """(b) The same inbox, written before the flow starts, processed once without crashes
    and once with three kills: final balances and order states must be identical.

    One partition per inbox makes the whole run a function of the inbox: every step
    emits in log order and a replay re-emits the same messages in the same order.

    The crashed run keeps every state as a delta on a base (``dataflows.bases``), with
    a new base every 500 inbox offsets, so its restarts rebuild machines from a base
    and their inbox; the clean run keeps small states whole, as by default."""
    rng = random.Random(_seed())
    commands: list[Message] = funding(MARKETS) + trading(
        MARKETS, COMMANDS, seed=rng.randrange(1 << 30)
    )
    runs = []
    for name, crashes in (("clean", False), ("crashed", True)):
        run = dataclasses.replace(
            settings,
            partitions=1,
            topic_prefix=f"{settings.topic_prefix}{name}.",
            data_dir=settings.data_dir / name,
        )
        ensure_topics(run)
        produce(run, commands)
        env = {"CRYPTON_STATE_INLINE_BYTES": "0", "CRYPTON_STATE_REBASE_OFFSETS": "500"}
        dataflow = start_dataflow(spawn, run, name=f"dataflow-{name}", env=env if crashes else None)
        if crashes:
            _kill_and_restart(dataflow, rng, (0.8, 2.0))
        wait_settled(run, commands, timeout=240)
        report = wait_clean_audit(run)
        assert report.clean, "\n".join(report.lines)
        # A clean audit means nothing is still travelling between the steps.
        runs.append(_final(state_view(run)))
        dataflow.stop()
        if crashes:  # every state was a delta on a base, so every restart read bases
            bases = topic_name("dataflow.bases", run.topic_prefix)
            assert sum(1 for _ in read_topics(run, [bases])) > 10
    (clean_orders, clean_balances), (crashed_orders, crashed_balances) = runs
    assert crashed_balances == clean_balances
    assert crashed_orders == clean_orders
