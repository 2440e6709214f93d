"""The API's producer: a fatal error replaces it (no request hangs), a dead broker is a 503."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from confluent_kafka import KafkaError

from api._producer import CommandLog, Delivery
from api.errors import ApiError
from api.metrics import Metrics
from crypton import topics
from crypton.config import Settings
from crypton.process import free_ports

pytestmark = pytest.mark.integration

FATAL = KafkaError(KafkaError._FATAL, "test: producer fenced", fatal=True)


async def _append_many(log: CommandLog, topic: str, count: int) -> list[Delivery | ApiError]:
    async def one(n: int) -> Delivery | ApiError:
        try:
            return await log.append(topic, f"u{n % 7}", b"x", "test")
        except ApiError as exc:
            return exc

    return await asyncio.gather(*(one(n) for n in range(count)))


def test_a_fatal_error_replaces_the_producer_and_every_request_is_answered(
    settings: Settings,
) -> None:
    topic = topics.topic_name(topics.WALLET_INBOX, settings.topic_prefix)
    log = CommandLog(settings, Metrics(), timeout_s=5)
    log.start()

    async def scenario() -> tuple[list[Delivery | ApiError], list[Delivery | ApiError]]:
        assert isinstance(await log.append(topic, "u", b"x", "test"), Delivery)
        # A fatal error reported while 200 requests are in flight on the old producer.
        pending = asyncio.ensure_future(_append_many(log, topic, 200))
        await asyncio.sleep(0)
        generation = log._current()[1]
        log._failure(FATAL, "test", generation)
        log._failure(FATAL, "test", generation)  # reported by many callbacks: replaced once
        during = await asyncio.wait_for(pending, 15)
        after = await asyncio.wait_for(_append_many(log, topic, 50), 15)
        return during, after

    began = time.monotonic()
    try:
        during, after = asyncio.run(scenario())
    finally:
        log.close()
    assert time.monotonic() - began < 20
    assert log.replaced == 1
    # Every request was answered: stored, or a 503 the client retries.
    assert all(isinstance(r, Delivery) or r.status == 503 for r in during)
    assert all(isinstance(r, Delivery) for r in after), after


def test_a_dead_broker_is_a_503_within_the_produce_timeout(tmp_path: object) -> None:
    dead = dataclasses.replace(Settings(), kafka_port=free_ports(2))
    log = CommandLog(dead, Metrics(), timeout_s=1)
    log.start()

    async def attempt() -> ApiError:
        with pytest.raises(ApiError) as failed:
            await log.append("crypton.wallet.inbox", "u", b"x", "test")
        return failed.value

    began = time.monotonic()
    try:
        error = asyncio.run(attempt())
    finally:
        log.close(0.5)
    assert error.status == 503 and error.retry_after == 1
    assert time.monotonic() - began < 5
