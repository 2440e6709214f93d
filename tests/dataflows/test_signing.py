"""With CRYPTON_API_SECRET set, a command the API did not sign is a dead letter, and the
audit counts it instead of replaying it (issue 11, defence in depth behind the ACLs)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from crypton import codec, signing, topics
from crypton.audit import AuditReport, audit
from crypton.config import Settings
from crypton.domain.messages import Credit
from crypton.kafka import producer_config
from crypton.process import Child

from .kafka_support import start_dataflow, wait_settled

pytestmark = pytest.mark.integration

SECRET = "a-secret-the-api-and-the-dataflow-share"


def test_unsigned_commands_are_dead_letters(
    settings: Settings, spawn: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = topics.topic_name(topics.WALLET_INBOX, settings.topic_prefix)
    signed = Credit(user_id="u", asset="USDT", amount=10**6, transfer_id="t-api", ts=1)
    forged = Credit(user_id="u", asset="USDT", amount=10**12, transfer_id="t-forged", ts=2)
    copied = Credit(user_id="u", asset="USDT", amount=10**12, transfer_id="t-copied", ts=3)
    producer = Producer(producer_config(settings))
    producer.produce(inbox, codec.encode(forged), b"u")  # anyone who reaches Kafka
    value = codec.encode(signed)
    mac = signing.mac(SECRET.encode(), inbox, b"u", value)
    producer.produce(inbox, value, b"u", headers=[(signing.HEADER, mac)])
    # A valid MAC does not make another record valid.
    producer.produce(inbox, codec.encode(copied), b"u", headers=[(signing.HEADER, mac)])
    assert producer.flush(30) == 0
    start_dataflow(spawn, settings, env={signing.ENV: SECRET})
    view = wait_settled(settings, [signed])
    assert view.transfers[("u", "t-api")].status == "ACCEPTED"
    monkeypatch.setenv(signing.ENV, SECRET)
    report = _audit_settled(settings)
    assert ("u", "t-forged") not in view.transfers and ("u", "t-copied") not in view.transfers
    assert report.dead_letters == 2, report.lines
    signatures = [p for p in report.problems if p.startswith("signatures:")]
    assert len(signatures) == 2 and report.problems == signatures, report.lines


def _audit_settled(settings: Settings, timeout: float = 60) -> AuditReport:
    """The audit once nothing but the unsigned commands is left to report."""
    deadline = time.monotonic() + timeout
    while True:
        report = audit(settings)
        others = [p for p in report.problems if not p.startswith("signatures:")]
        if (not others and report.dead_letters == 2) or time.monotonic() > deadline:
            return report
        time.sleep(1)
