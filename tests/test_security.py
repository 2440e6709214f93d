"""The log behind SASL/SCRAM and ACLs: each component gets exactly its grants.

One Kafka node of the module's own with a SCRAM-SHA-512 listener, the standard
authorizer and no access without an ACL (``ScramSecurity``); the users ``api``,
``dataflow`` and ``auditor`` hold the grants of ``crypton.broker.ACCESS``. The real
API and dataflow processes, each with its own credentials in ``CRYPTON_KAFKA_*``,
carry a trade end to end and the auditor audits it; an unauthenticated client
cannot credit money, and ``api`` cannot write the book inbox or a state topic.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from crypton import codec, topics
from crypton.broker import (
    ACCESS,
    EmbeddedBroker,
    ScramSecurity,
    acl_bindings,
    client_security,
    create_acls,
    create_scram_users,
)
from crypton.config import CLIENT_SECURITY_ENV, Settings
from crypton.domain.messages import Credit
from crypton.kafka import admin, consumer_config, producer_config, wait_for_kafka
from crypton.process import Child, free_port, free_ports
from crypton.topics import ensure_topics
from tests.api.support import ADMIN_TOKEN, create_user, start_api
from tests.dataflows.kafka_support import start_dataflow, wait_clean_audit
from tests.processes import SNAPSHOT_SECONDS

pytestmark = pytest.mark.integration

PREFIX = "sec."  # ACLs name the prefixed topics
# Refused clients retry and complain on stderr; the assertions say what matters.
_REFUSED = logging.getLogger("tests.security.refused")
_REFUSED.propagate = False
_REFUSED.addHandler(logging.NullHandler())


@dataclasses.dataclass(frozen=True)
class SecureLog:
    """The secured cluster: settings without credentials, and each user's password."""

    settings: Settings
    passwords: dict[str, str]

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """The ``CRYPTON_KAFKA_*`` variables that make a process ``user``."""
        security = dict(client_security(user, password or self.passwords[user]))
        return {name: security[key] for name, key in CLIENT_SECURITY_ENV.items() if key in security}

    def as_user(self, user: str, password: str | None = None) -> Settings:
        security = client_security(user, password or self.passwords[user])
        return dataclasses.replace(self.settings, security=security)


@pytest.fixture(scope="module")
def secure_log(broker_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureLog]:
    if broker_kind != "kafka":
        pytest.skip("SASL and ACLs need Apache Kafka (CRYPTON_TEST_BROKER=tansu)")
    root = tmp_path_factory.mktemp("secure")
    security = ScramSecurity(admin_password=secrets.token_urlsafe(16))
    settings = Settings(
        data_dir=root / "crypton",
        kafka_port=free_ports(2),
        topic_prefix=PREFIX,
        snapshot_seconds=SNAPSHOT_SECONDS,
    )
    operator = dataclasses.replace(settings, security=security.admin_security())
    broker = EmbeddedBroker(
        dataclasses.replace(operator, data_dir=root / "broker"), security=security
    ).start()
    try:
        broker.wait_ready(90)
        # What an operator (or Strimzi's user operator) does once: topics, users, ACLs.
        ensure_topics(operator)
        passwords = {user: secrets.token_urlsafe(16) for user in ACCESS}
        client = admin(operator)
        create_scram_users(client, passwords)
        create_acls(
            client,
            [b for user, grants in ACCESS.items() for b in acl_bindings(user, grants, PREFIX)],
        )
        log = SecureLog(settings, passwords)
        for user in passwords:  # credentials reach the broker's metadata asynchronously
            wait_for_kafka(log.as_user(user), timeout=30)
        yield log
    finally:
        broker.stop(grace=10)


def produce_one(settings: Settings, logical: str, value: bytes, key: bytes) -> KafkaError | None:
    """Write one record as a plain producer (no idempotence: no producer id to ask for,
    so a refusal is about the topic); the delivery error, or ``None`` once stored."""
    config = {"message.timeout.ms": 4000, "enable.idempotence": False, "logger": _REFUSED}
    producer = Producer(producer_config(settings, **config))
    outcome: list[KafkaError | None] = []
    producer.produce(
        topics.topic_name(logical, PREFIX), value, key, on_delivery=lambda e, _m: outcome.append(e)
    )
    producer.flush(10)
    assert outcome, "no delivery report"
    return outcome[0]


def inbox_end(log: SecureLog) -> int:
    """Records in the wallet inbox, read as the auditor."""
    consumer = Consumer(consumer_config(log.as_user("auditor"), **{"group.id": "crypton-reader"}))
    topic = topics.topic_name(topics.WALLET_INBOX, PREFIX)
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
        )
    finally:
        consumer.close()


def credit(user: str) -> bytes:
    return codec.encode(
        Credit(user_id=user, asset="USDT", amount=10**12, transfer_id=f"steal-{user}", ts=0)
    )


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return value


def test_api_and_dataflow_trade_each_with_its_own_credentials(
    secure_log: SecureLog, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        secure_log.settings, data_dir=tmp_path / "crypton", api_port=free_port()
    )
    # What `crypton dataflow` does first: check every topic exists (create none).
    assert ensure_topics(secure_log.as_user("dataflow")) == []
    # Every machine's state a delta on a base: the dataflow writes its bases topic (which
    # it creates) with its own grants too.
    bases = {"CRYPTON_STATE_INLINE_BYTES": "0"}
    start_dataflow(spawn, settings, env=secure_log.env("dataflow") | bases)
    api = start_api(settings, tmp_path / "logs", env=secure_log.env("api"))
    try:
        with api.client(ADMIN_TOKEN) as admin_client:
            alice, bob = create_user(admin_client, "alice"), create_user(admin_client, "bob")
            for user, asset, amount in ((alice, "BTC", "1"), (bob, "USDT", "100000")):
                done = admin_client.post(
                    f"/v1/admin/users/{user.user_id}/credit?wait=true",
                    json={"asset": asset, "amount": amount, "transfer_id": "fund-1"},
                )
                assert done.json()["status"] == "ACCEPTED", done.text
        ask = alice.client.post("/v1/orders?wait=true", json={
            "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "50000",
            "quantity": "0.5", "client_order_id": "ask-1",
        })  # fmt: skip
        assert ask.status_code in (200, 202), ask.text
        bid = bob.client.post("/v1/orders?wait=true", json={
            "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50000",
            "quantity": "0.2", "time_in_force": "IOC", "client_order_id": "bid-1",
        })  # fmt: skip
        assert bid.status_code in (200, 202), bid.text
        bid_id = bid.json()["order_id"]
        eventually(lambda: bob.client.get(f"/v1/orders/{bid_id}").json()["status"] == "FILLED")
        trades = eventually(
            lambda: api.client().get("/v1/markets/BTC-USDT/trades?limit=5").json()["items"]
        )
        assert [(Decimal(t["price"]), Decimal(t["quantity"])) for t in trades] == [
            (Decimal("50000"), Decimal("0.2"))
        ]
    finally:
        api.stop()
    # The read-only auditor reads every topic and finds the books balanced.
    report = wait_clean_audit(secure_log.as_user("auditor"))
    assert report.clean, "\n".join(report.lines)
    # And the dataflow wrote its bases, on its own grants.
    bases = TopicPartition(topics.topic_name(topics.BASES, settings.topic_prefix), 0)
    reader = Consumer(
        consumer_config(secure_log.as_user("dataflow"), **{"group.id": "crypton-dataflow-t"})
    )
    try:
        eventually(lambda: reader.get_watermark_offsets(bases, timeout=10)[1] > 0)
    finally:
        reader.close()


def test_no_credit_without_the_right_credentials(secure_log: SecureLog) -> None:
    before = inbox_end(secure_log)
    plaintext = dataclasses.replace(secure_log.settings, security=())
    wrong_password = secure_log.as_user("api", password="guessed")
    for who in (plaintext, wrong_password):
        error = produce_one(who, topics.WALLET_INBOX, credit("mallory"), b"mallory")
        assert error is not None, f"{who.security} credited money"
    # Authenticated, but read-only.
    auditor = secure_log.as_user("auditor")
    error = produce_one(auditor, topics.WALLET_INBOX, credit("mallory"), b"mallory")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert inbox_end(secure_log) == before


@pytest.mark.parametrize("logical", [topics.BOOK_INBOX, topics.BALANCES, topics.TRADES])
def test_api_cannot_write_what_only_the_dataflow_writes(
    secure_log: SecureLog, logical: str
) -> None:
    error = produce_one(secure_log.as_user("api"), logical, b"forged", b"BTC-USDT")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
