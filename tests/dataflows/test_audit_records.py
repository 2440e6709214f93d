"""``crypton audit`` reads whatever is on the state topics: a record it cannot decode is
a problem it reports with its place in the log, not a crash that hides every other check."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from crypton import topics
from crypton.audit import audit
from crypton.config import Settings
from crypton.kafka import producer_config

pytestmark = pytest.mark.integration


def test_an_undecodable_state_record_is_reported_not_fatal(settings: Settings) -> None:
    balances = topics.topic_name(topics.BALANCES, settings.topic_prefix)
    producer = Producer(producer_config(settings))
    producer.produce(balances, b"\xc1 not msgpack", b"mallory")
    assert producer.flush(30) == 0
    report = audit(settings)
    assert not report.clean
    (problem,) = report.problems
    assert problem.startswith(f"state records: {balances}[")
    assert "@0" in problem and "1 undecodable state records" in "\n".join(report.lines)
