"""The topics of the log: names, keys, partitioning and retention.

One key must always land in one partition, so every producer uses the
``murmur2_random`` partitioner (the Java client's, which ksqlDB and Kafka
Streams use) and the same partition count per topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["TOPICS", "TopicSpec", "topic_name"]

WALLET_INBOX: Final = "wallet.inbox"
BOOK_INBOX: Final = "book.inbox"
ORDERS: Final = "orders"
BALANCES: Final = "balances"
TRADES: Final = "trades"
DEPTH: Final = "depth"
TRANSFERS: Final = "transfers"
REJECTIONS: Final = "rejections"
DEAD_LETTERS: Final = "deadletters"
USERS: Final = "users"


@dataclass(frozen=True)
class TopicSpec:
    logical: str
    key: str
    compacted: bool
    doc: str


TOPICS: Final = (
    TopicSpec(WALLET_INBOX, "user_id", False, "commands and book reports for the wallet step"),
    TopicSpec(BOOK_INBOX, "market", False, "held orders and cancels for the book step"),
    TopicSpec(ORDERS, "order_id", True, "latest order state with a version"),
    TopicSpec(BALANCES, "user_id", True, "latest balances of a user with a version"),
    TopicSpec(TRADES, "market", False, "every trade with a per-market sequence"),
    TopicSpec(DEPTH, "market", True, "aggregated book levels with the book sequence"),
    TopicSpec(TRANSFERS, "user_id/transfer_id", True, "outcome of credits and debits"),
    TopicSpec(REJECTIONS, "user_id", False, "commands refused without a state record"),
    TopicSpec(DEAD_LETTERS, "any", False, "undecodable or unprocessable input, with reason"),
    TopicSpec(USERS, "user_id", True, "users and hashed API keys"),
)


def topic_name(logical: str, prefix: str = "") -> str:
    """The Kafka topic of a logical name: ``topic_name("orders", "dev.")`` is ``dev.crypton.orders``."""
    return f"{prefix}crypton.{logical}"
