"""Crash tests: SIGKILL the dataflow at random moments, restart it, lose and repeat nothing."""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import closing

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from crypton import topics
from crypton.config import Settings, load_markets
from crypton.domain.messages import Message
from crypton.kafka import consumer_config, producer_config
from crypton.logreader import read_topics
from crypton.process import Child, free_port
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


def test_sigkill_after_bases_taken_idle_resumes_from_them(
    settings: Settings, spawn: Callable[..., Child]
) -> None:
    """Commands trickle in, so the flow is idle between them and takes the bases due
    then (``dataflows.exchange._Step.take_bases``) instead of at the closes; killed once
    it has, the flow resumes from deltas on those bases, rebuilds machines from them,
    and loses and repeats nothing."""
    rng = random.Random(_seed())
    commands = trading(MARKETS, 600, seed=rng.randrange(1 << 30))
    port = free_port()
    env = {"CRYPTON_DATAFLOW_METRICS_PORT": str(port), "CRYPTON_STATE_REBASE_OFFSETS": "500"}
    dataflow = start_dataflow(spawn, settings, env=env)
    funded = funding(MARKETS)
    produce(settings, funded)
    wait_settled(settings, funded)
    deadline = time.monotonic() + 60
    taken, done = 0.0, 0
    while not taken or done < len(commands) // 2:  # a trickle: idle between chunks
        assert time.monotonic() < deadline, "no base was taken while the flow was idle"
        produce(settings, commands[done : done + 20])
        done += 20
        time.sleep(0.2)
        taken = _metric(port, "crypton_dataflow_idle_bases_total")
    wait_settled(settings, funded + commands[:done])
    print(f"bases taken while idle before the kill: {taken:.0f}")
    dataflow.signal(signal.SIGKILL)
    dataflow.wait(10)
    dataflow.start()
    produce(settings, commands[done:])
    wait_settled(settings, funded + commands, timeout=240)
    assert _metric(port, "crypton_dataflow_restored_from_base_total") > 0
    report = wait_clean_audit(settings)
    assert report.clean, "\n".join(report.lines)


def test_sigkill_over_a_written_inbox_matches_a_crash_free_run(
    settings: Settings, spawn: Callable[..., Child], broker_kind: str
) -> None:
    """(b) The same inbox processed once without crashes and once with kills: final
    balances and order states must be identical.

    One partition per inbox makes the whole run a function of the inbox: every step
    emits in log order and a replay re-emits the same messages in the same order. The
    inbox is written in ``KILLS + 1`` parts, each once the flow is at rest (every
    command settled, the audit clean: nothing travelling between the steps), so both
    runs see the same commands after the same outputs.

    The clean run keeps every state whole in the recovery store; the crashed run keeps
    every state as a delta on a base (``dataflows.bases``, the default), with
    a new base every 500 inbox offsets at most (a small base's sooner: ``span_for``),
    settles a key idle for one epoch
    (``dataflows.recovery``), and is killed twice per part:
    - mid-part, once the flow has written a random share of the part's order records
      (what the clean run wrote for it), wherever that lands;
    - at rest, once the recovery store has committed the inbox ends and settled every
      wallet and book; the next part is written while the flow is down, so the
      restarted flow must read the machines that part reaches from their settled rows
      and rebuild them from their bases: its own metrics must show it did."""
    rng = random.Random(_seed())
    trades = trading(MARKETS, COMMANDS, seed=rng.randrange(1 << 30))
    size = len(trades) // (KILLS + 1)
    parts: list[list[Message]] = [
        trades[k * size : (k + 1) * size if k < KILLS else None] for k in range(KILLS + 1)
    ]
    parts[0] = funding(MARKETS) + parts[0]
    clean_orders: list[int] = []  # the clean run's order records written by each part
    runs = []
    for name, crashes in (("clean", False), ("crashed", True)):
        run = dataclasses.replace(
            settings,
            partitions=1,
            topic_prefix=f"{settings.topic_prefix}{name}.",
            data_dir=settings.data_dir / name,
        )
        ensure_topics(run)
        port = free_port()
        # The clean run keeps every state whole (no bases): the crashed run, every state
        # a delta rebuilt from Kafka, must end where the other way of storing them does.
        env = {
            "CRYPTON_DATAFLOW_METRICS_PORT": str(port),
            "CRYPTON_STATE_INLINE_BYTES": str(2**30),
        }
        if crashes:
            env |= {
                "CRYPTON_STATE_INLINE_BYTES": "0",
                "CRYPTON_STATE_REBASE_OFFSETS": "500",
                "CRYPTON_SETTLE_AFTER_EPOCHS": "1",
                # A first base is waited for, so that a machine touched in one epoch
                # only is a delta at rest too, and the restarts read it back.
                "CRYPTON_STATE_FIRST_WHOLE_BYTES": "0",
                # The topic of bases rolls its segments at once: Kafka compacts the
                # bases its slots replaced while the run goes on.
                "CRYPTON_STATE_SEGMENT_MS": "300",
            }
        produce(run, parts[0])
        dataflow = start_dataflow(spawn, run, name=f"dataflow-{name}", env=env)
        sent: list[Message] = []
        for k, part in enumerate(parts):
            before = _orders_written(run)
            if k and crashes:
                _kill_at_rest(run, dataflow)
                produce(run, part)
                dataflow.start()
                restored = _wait_restored_from_bases(port, dataflow)
                print(f"part {k}: the restart read settled rows and bases: {restored}")
            elif k:
                produce(run, part)
            if crashes:
                share = rng.uniform(0.1, 0.7)
                _kill_mid_part(run, dataflow, before + int(share * clean_orders[k]))
            sent += part
            wait_settled(run, sent, timeout=240)
            report = wait_clean_audit(run)
            assert report.clean, "\n".join(report.lines)
            if not crashes:
                clean_orders.append(_orders_written(run) - before)
        # A clean audit means nothing is still travelling between the steps.
        runs.append(_final(state_view(run)))
        dataflow.stop()
        if crashes and broker_kind == "kafka":
            # The restarts read bases from a topic Kafka was compacting meanwhile. Its
            # cleaner runs every 2 s on the segments rolled by then: the one holding the
            # last replacements may roll at the run's end and be cleaned a moment later.
            deadline = time.monotonic() + 30
            kept, written = _bases_kept(run)
            while kept == written and time.monotonic() < deadline:
                time.sleep(1)
                kept, written = _bases_kept(run)
            print(f"bases: {kept} of {written} records kept by compaction")
            assert kept < written
    (clean_final_orders, clean_balances), (crashed_orders, crashed_balances) = runs
    assert crashed_balances == clean_balances
    assert crashed_orders == clean_final_orders


def _end(run: Settings, topic: str) -> int:
    """The high watermark of ``topic``'s only partition."""
    consumer = Consumer(consumer_config(run, **{"group.id": "crypton-test"}))
    try:
        _low, high = consumer.get_watermark_offsets(KafkaPartition(topic, 0), timeout=30)
    finally:
        consumer.close()
    return int(high)


def _orders_written(run: Settings) -> int:
    return _end(run, topic_name(topics.ORDERS, run.topic_prefix))


def _committed_offsets(run: Settings) -> dict[str, int]:
    """The next offset of each inbox in the recovery store's last committed epoch: where
    a restarted flow resumes reading (one recovery partition, one inbox partition)."""
    with closing(sqlite3.connect(run.data_dir / "recovery" / "part-0.sqlite3")) as store:
        (epoch,) = store.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
        rows = store.execute(
            "SELECT state_key, ser_change FROM snaps WHERE step_id = 'crypton.inboxes'"
            " AND snap_epoch <= ? ORDER BY snap_epoch",
            (epoch or 0,),
        ).fetchall()
    # Partitions `wallet/0` and `book/0` of the one input of both inboxes.
    return {f"{key.split('/')[0]}_inbox": pickle.loads(value) for key, value in rows}


def _unsettled(run: Settings) -> int:
    """Wallets and books whose snapshot is still in Bytewax's own table."""
    with closing(sqlite3.connect(run.data_dir / "recovery" / "part-0.sqlite3")) as store:
        query = "SELECT COUNT(*) FROM snaps WHERE step_id IN ('crypton.wallet', 'crypton.book')"
        (count,) = store.execute(query).fetchone()
    return int(count)


def _kill_at_rest(run: Settings, dataflow: Child, timeout: float = 60) -> None:
    """SIGKILL once the store has committed both inboxes to their ends and settled every
    machine: the restart then resumes with every machine's state a settled snapshot
    (of a delta), which Bytewax does not load."""
    inboxes = {
        "wallet_inbox": topic_name(topics.WALLET_INBOX, run.topic_prefix),
        "book_inbox": topic_name(topics.BOOK_INBOX, run.topic_prefix),
    }
    deadline = time.monotonic() + timeout
    while True:
        committed = _committed_offsets(run)
        ends = {step: _end(run, topic) for step, topic in inboxes.items()}
        unsettled = _unsettled(run)
        if all(committed.get(step) == end for step, end in ends.items()) and not unsettled:
            break
        assert time.monotonic() < deadline, f"committed {committed} of {ends}, {unsettled} left"
        time.sleep(0.1)
    dataflow.signal(signal.SIGKILL)
    dataflow.wait(10)
    print(f"SIGKILL at rest, inboxes committed to {ends}")


def _kill_mid_part(run: Settings, dataflow: Child, orders: int, timeout: float = 60) -> None:
    """SIGKILL once the flow has written ``orders`` order records, then restart it."""
    deadline = time.monotonic() + timeout
    while (written := _orders_written(run)) < orders and time.monotonic() < deadline:
        time.sleep(0.005)
    dataflow.signal(signal.SIGKILL)
    dataflow.wait(10)
    print(f"SIGKILL mid-part at {written} order records (aimed at {orders}), restarting")
    dataflow.start()


def _bases_kept(run: Settings) -> tuple[int, int]:
    """Records left in the topic of bases, and how many were written (its end offset)."""
    topic = topics.topic_name(topics.BASES, run.topic_prefix)
    records = list(read_topics(run, [topic]))
    return len(records), _end(run, topic)


def _metric(port: int, name: str) -> float:
    """The sum of the running flow's counter ``name`` over its steps."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(float(m[1]) for m in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def _wait_restored_from_bases(port: int, dataflow: Child, timeout: float = 60) -> dict[str, float]:
    """``crypton_dataflow_settled_reads_total`` and
    ``crypton_dataflow_restored_from_base_total`` of the running flow, once both steps
    read at least one machine from its settled row and rebuilt one from a base."""
    deadline = time.monotonic() + timeout
    counts: dict[str, float] = {}
    wanted = [f"{kind} {step}" for kind in ("settled", "restored") for step in ("wallet", "book")]
    while time.monotonic() < deadline:
        assert dataflow.running, dataflow.tail(5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                text = page.read().decode()
        except OSError:
            time.sleep(0.1)
            continue
        pattern = (
            r'^crypton_dataflow_(settled|restored)_(?:reads|from_base)_total\{step="(\w+)"\} (\S+)$'
        )
        counts = {f"{m[1]} {m[2]}": float(m[3]) for m in re.finditer(pattern, text, re.M)}
        if all(counts.get(name, 0) >= 1 for name in wanted):
            return counts
        time.sleep(0.1)
    raise AssertionError(f"the restarted flow did not read settled rows and bases: {counts}")
