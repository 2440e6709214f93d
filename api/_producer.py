"""Durable writes: a command is acknowledged to the client only once the broker has it.

One idempotent ``acks=all`` producer per process. librdkafka calls the delivery
callback on whichever thread polls, so a small thread polls and hands each
result to the asyncio future that awaits it; the event loop never blocks on
Kafka. ``message.timeout.ms`` bounds how long a command may wait for a broker,
after which the request fails with a 503 and the client retries with the same
client_order_id / transfer_id, which names the same command.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from crypton import signing
from crypton.config import Settings
from crypton.kafka import producer_config

from .errors import ApiError, unavailable
from .metrics import Metrics

log = logging.getLogger("crypton.api.producer")


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    partition: int
    offset: int


class CommandLog:
    """Appends records and resolves with where the broker stored them."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        timeout_s: float = 5.0,
        secret: bytes | None = None,
    ) -> None:
        timeout_ms = int(timeout_s * 1000)
        self._secret = secret  # signs every record (crypton.signing)
        self._config = producer_config(
            settings,
            **{
                "message.timeout.ms": timeout_ms,
                # An answer within the timeout even when the broker accepts the
                # connection but never replies.
                "request.timeout.ms": max(1000, timeout_ms - 500),
                "socket.connection.setup.timeout.ms": max(1000, timeout_ms - 500),
                "linger.ms": 1,
            },
        )
        self._metrics = metrics
        self._producer = Producer(self._config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="crypton-api-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._producer.flush(timeout_s)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def append(self, topic: str, key: str, value: bytes, command: str) -> Delivery:
        """Write one record; raise a 503 ``ApiError`` if the broker does not acknowledge it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def settle(result: Delivery | ApiError) -> None:
            if future.done():  # the request was abandoned by its client
                return
            if isinstance(result, ApiError):
                future.set_exception(result)
            else:
                future.set_result(result)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            result: Delivery | ApiError
            if err is not None:
                result = self._failure(err, command)
            else:
                result = Delivery(msg.topic() or topic, msg.partition() or 0, msg.offset() or 0)
            loop.call_soon_threadsafe(settle, result)

        try:
            raw_key = key.encode()
            headers: list[tuple[str, str | bytes | None]] | None = None
            if self._secret is not None:
                headers = [(signing.HEADER, signing.mac(self._secret, topic, raw_key, value))]
            self._producer.produce(
                topic, value=value, key=raw_key, headers=headers, on_delivery=delivered
            )
        except BufferError:
            self._metrics.produce_failures.labels(command).inc()
            raise unavailable("too many commands waiting for the broker; retry shortly") from None
        except KafkaException as exc:
            raise self._failure(exc.args[0], command) from None
        delivery = await future
        self._metrics.commands.labels(command).inc()
        return delivery

    def _failure(self, err: Any, command: str) -> ApiError:
        self._metrics.produce_failures.labels(command).inc()
        if isinstance(err, KafkaError) and err.fatal():
            # An idempotent producer that hit a fatal error refuses every later
            # write; start a fresh one (a new producer id) for the next requests.
            log.error("fatal producer error %s: recreating the producer", err)
            self._producer = Producer(self._config)
        reason = err.str() if isinstance(err, KafkaError) else str(err)
        return unavailable(f"the broker did not acknowledge the command ({reason}); retry")
