"""Run the exchange flow under ``bytewax.testing`` with the Kafka loop closed in memory.

Each round runs the real flow (``build_flow``) over two append-only in-memory
logs standing in for the inbox topics, with a real recovery store, so every
round resumes from the last one's snapshot exactly as the process would after
a restart. What the flow writes to an inbox is appended to that log for the
next round; rounds go on until the flow writes nothing more to either inbox.
The flow reads both logs through one source (as ``InboxSource`` reads both topics),
in the order their messages were appended.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from crypton import schema, topics
from crypton.domain.markets import Markets
from crypton.domain.messages import Message
from dataflows.exchange import build_flow
from dataflows.kafka_io import BookBatch, position


class Loop:
    """The flow plus its two inbox logs and everything it wrote, by logical topic."""

    def __init__(
        self, markets: Markets, recovery: Path, workers: int = 1, live_machines: int | None = None
    ) -> None:
        self.markets = markets
        self.recovery = recovery
        recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery, 1)
        self.workers = workers
        self.live_machines = live_machines
        self.wallet_log: list[Any] = []
        self.book_log: list[Any] = []
        self.items: list[Any] = []
        """Both logs as the flow's one source yields them, in the order appended."""
        self.written: dict[str, list[Message]] = defaultdict(list)
        self.rounds = 0

    def send(self, *commands: Message | bytes) -> None:
        """Append commands (or raw bytes, decoded as the Kafka source would) to the wallet inbox."""
        for command in commands:
            self.append_wallet(
                schema.WALLET_INBOX.decode(command) if isinstance(command, bytes) else command
            )

    def append_wallet(self, message: Any) -> None:
        """Append a message to the wallet inbox: keyed by user, with its position there."""
        self.items.append((message.user_id, [(position(len(self.wallet_log)), message)]))
        self.wallet_log.append(message)

    def append_book(self, message: Any) -> None:
        """Append a message to the book inbox: keyed by market, with its position there."""
        self.items.append((message.market, BookBatch([(position(len(self.book_log)), message)])))
        self.book_log.append(message)

    def run(self, max_rounds: int = 50) -> None:
        """Run rounds until the loop is quiet."""
        for _ in range(max_rounds):
            if not self._round():
                return
        raise AssertionError(f"no quiescence after {max_rounds} rounds")

    def _round(self) -> bool:
        out: list[Any] = []
        flow = build_flow(
            self.markets,
            TestingSource(list(self.items), batch_size=7),
            TestingSink(out),
            **({} if self.live_machines is None else {"live_machines": self.live_machines}),
        )
        config = RecoveryConfig(str(self.recovery))
        if self.workers == 1:
            run_main(flow, epoch_interval=timedelta(seconds=10), recovery_config=config)
        else:
            cluster_main(
                flow,
                [],
                0,
                worker_count_per_proc=self.workers,
                epoch_interval=timedelta(seconds=10),
                recovery_config=config,
            )
        self.rounds += 1
        more = False
        # In offset order, as the Kafka sink writes a batch (a round is one batch here).
        tagged = sorted((t for _key, batch in out for t in batch), key=itemgetter(0))
        for _offset, topic, _key, value in tagged:
            logical = topic.removeprefix("crypton.")
            message = schema.BY_LOGICAL[logical].decode(value)
            if logical == topics.WALLET_INBOX:
                self.append_wallet(message)
                more = True
            elif logical == topics.BOOK_INBOX:
                self.append_book(message)
                more = True
            self.written[logical].append(message)
        return more
