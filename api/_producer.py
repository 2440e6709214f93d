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

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from crypton import schema, signing
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


_librdkafka_log = logging.getLogger("crypton.api.kafka")


class CommandLog:
    """Appends records and resolves with where the broker stored them.

    An idempotent producer that hit a fatal error refuses every later write, so it
    is replaced by a fresh one (a new producer id). The replacement happens on the
    poll thread, between two polls: the event loop only ever reads the current
    producer under a lock, and the old one is purged and drained there, so every
    command it still held is answered (503) before it is dropped.
    """

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
        # A delivery report is due within message.timeout.ms; past this margin the
        # request is answered 503 even if librdkafka never reports (it cannot lose
        # an acknowledged command: a 503 asks the client to retry with the same id).
        self._answer_within = timeout_s + 5.0
        self._metrics = metrics
        self._prefix = settings.topic_prefix
        self._lock = threading.Lock()
        self._generation = 0
        self._broken = -1  # the generation that hit a fatal error, if it is still current
        # Made on first use (``start`` or the first command): building the app, e.g. to
        # write out its OpenAPI document, connects to nothing.
        self._producer: Producer | None = None
        self.replaced = 0
        """How many times a producer was replaced after a fatal error."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="crypton-api-producer", daemon=True)

    def _new_producer(self, generation: int) -> Producer:
        def on_error(err: KafkaError) -> None:
            if err.fatal():
                self._mark_broken(generation, err)
            elif err.code() == KafkaError._TRANSPORT:  # every failed reconnect: noise
                log.debug("kafka: %s", err.str())
            else:
                log.warning("kafka: %s", err.str())

        # librdkafka's own log lines go to Python logging, not straight to stderr.
        return Producer({**self._config, "error_cb": on_error}, logger=_librdkafka_log)

    def _mark_broken(self, generation: int, err: Any) -> None:
        with self._lock:
            if generation == self._generation and self._broken != generation:
                self._broken = generation
                log.error("fatal producer error %s: replacing the producer", err)

    def _current(self) -> tuple[Producer, int]:
        with self._lock:
            if self._producer is None:
                self._producer = self._new_producer(self._generation)
            return self._producer, self._generation

    def start(self) -> None:
        self._current()
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._lock:
            producer = self._producer
        if producer is not None:
            producer.flush(timeout_s)

    def _poll(self) -> None:
        while not self._stop.is_set():
            producer, generation = self._current()
            producer.poll(0.1)
            if self._broken == generation:
                self._replace(producer)

    def _replace(self, old: Producer) -> None:
        # Only this thread replaces, so the generation cannot move meanwhile.
        fresh = self._new_producer(self._generation + 1)
        with self._lock:
            self._producer = fresh
            self._generation += 1
        self.replaced += 1
        # Fail what the old producer still holds, and serve its delivery reports so
        # that every waiting request is answered before the producer is dropped.
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)
        except KafkaException as exc:
            log.warning("purging the failed producer: %s", exc)
        old.flush(1.0)

    async def send(self, message: msgspec.Struct, command: str | None = None) -> Delivery:
        """Write ``message`` to its topic, keyed and encoded by the topic's spec
        (``crypton.schema``); ``command`` labels the metrics (default: the type tag)."""
        spec = schema.spec_of(message)
        label = command or str(type(message).__struct_config__.tag)
        return await self.append(
            spec.name(self._prefix), spec.key_of(message), spec.encode(message), label
        )

    async def append(self, topic: str, key: str, value: bytes, command: str) -> Delivery:
        """Write one record; raise a 503 ``ApiError`` if the broker does not acknowledge it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()
        producer, generation = self._current()

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
                result = self._failure(err, command, generation)
            else:
                result = Delivery(msg.topic() or topic, msg.partition() or 0, msg.offset() or 0)
            loop.call_soon_threadsafe(settle, result)

        try:
            raw_key = key.encode()
            headers: list[tuple[str, str | bytes | None]] | None = None
            if self._secret is not None:
                headers = [(signing.HEADER, signing.mac(self._secret, topic, raw_key, value))]
            producer.produce(
                topic, value=value, key=raw_key, headers=headers, on_delivery=delivered
            )
        except BufferError:
            self._metrics.produce_failures.labels(command).inc()
            raise unavailable("too many commands waiting for the broker; retry shortly") from None
        except KafkaException as exc:
            raise self._failure(exc.args[0], command, generation) from None
        try:
            delivery = await asyncio.wait_for(future, self._answer_within)
        except TimeoutError:
            self._metrics.produce_failures.labels(command).inc()
            raise unavailable("the broker did not acknowledge the command in time; retry") from None
        self._metrics.commands.labels(command).inc()
        return delivery

    def _failure(self, err: Any, command: str, generation: int) -> ApiError:
        self._metrics.produce_failures.labels(command).inc()
        if isinstance(err, KafkaError) and err.fatal():
            self._mark_broken(generation, err)
        reason = err.str() if isinstance(err, KafkaError) else str(err)
        return unavailable(f"the broker did not acknowledge the command ({reason}); retry")
