"""Helpers for tests that drive a real API server: start it, create users, write state
records as the dataflow would, and read the wallet inbox. Reusable by end-to-end tests."""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from api._server import PROTOCOL
from crypton import codec, topics
from crypton.client import Client
from crypton.config import Settings
from crypton.domain.messages import Message, WalletInbox
from crypton.kafka import consumer_config, producer_config
from crypton.process import Child, free_port, settings_env

ADMIN_TOKEN = "test-admin-token"


@dataclass
class ApiServer:
    """A uvicorn child process serving ``api.app:create_app`` on loopback."""

    url: str
    settings: Settings
    child: Child
    log_path: Path

    def stop(self) -> None:
        self.child.stop(grace=5)

    def client(self, key: str | None = None, timeout: float = 15.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def start_api(
    settings: Settings,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    wait_ready: bool = True,
) -> ApiServer:
    """Start ``python -m uvicorn api.app:create_app --factory`` on a free port; by default
    return once ``/ready`` answers 200 (read model caught up)."""
    port = free_port()
    child_env = settings_env(settings)
    # No rate limit unless a test asks for one: tests send bursts on purpose.
    child_env.update(
        {
            "CRYPTON_ADMIN_TOKEN": ADMIN_TOKEN,
            "CRYPTON_SSE_HEARTBEAT": "1",
            "CRYPTON_RATE_LIMIT": "0",
        }
    )
    child_env.update(env or {})
    argv = [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--http", PROTOCOL,
        "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "2",
        "--log-level", "warning",
    ]  # fmt: skip
    log_path = log_dir / f"api-{port}.log"
    child = Child(f"api:{port}", argv, log_path, env=child_env).start()
    server = ApiServer(f"http://127.0.0.1:{port}", settings, child, log_path)
    if wait_ready:
        wait_until_ready(server, ready_timeout)
    return server


def wait_until_ready(server: ApiServer, timeout: float) -> float:
    """Seconds until ``/ready`` answered 200."""
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=2) as client:
        while True:
            if server.child.poll() is not None:
                raise RuntimeError(f"API exited: {server.log_path.read_text()[-2000:]}")
            try:
                if client.get("/ready").status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if time.monotonic() - start > timeout:
                server.stop()
                raise TimeoutError(
                    f"API not ready in {timeout}s: {server.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)


@dataclass
class ApiUser:
    user_id: str
    api_key: str
    client: httpx.Client = field(repr=False)
    """Raw HTTP, for tests of what the API answers to malformed requests."""
    api: Client = field(repr=False)
    """``crypton.client``: what a client library sees."""

    def close(self) -> None:
        self.client.close()
        self.api.close()


def create_user(admin: httpx.Client, user_id: str | None = None) -> ApiUser:
    """POST /v1/admin/users (through ``crypton.client``) and clients with the new key."""
    base = str(admin.base_url)
    token = admin.headers["authorization"].removeprefix("Bearer ")
    with Client(base, token) as api:
        created = api.create_user(user_id)
    client = httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {created.api_key}"},
        timeout=admin.timeout,
    )
    return ApiUser(created.user_id, created.api_key, client, Client(base, created.api_key))


class StateWriter:
    """Writes state records the way the dataflow's sink does (same partitioner and keys)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = Producer(producer_config(settings))

    def send(self, logical: str, key: str, record: Message) -> None:
        topic = topics.topic_name(logical, self.settings.topic_prefix)
        self._producer.produce(topic, key=key.encode(), value=codec.encode(record))

    def flush(self) -> None:
        assert self._producer.flush(10) == 0


def read_wallet_inbox(
    settings: Settings, expect: int, timeout: float = 15.0
) -> list[tuple[str, WalletInbox]]:
    """The first ``expect`` records of the wallet inbox as (key, command), per partition order."""
    topic = topics.topic_name(topics.WALLET_INBOX, settings.topic_prefix)
    consumer = Consumer(consumer_config(settings, **{"group.id": f"t-{uuid.uuid4().hex}"}))
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
    out: list[tuple[str, WalletInbox]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.2):
                if m.error() is None:
                    out.append(
                        ((m.key() or b"").decode(), codec.wallet_inbox.decode(m.value() or b""))
                    )
    finally:
        consumer.close()
    return out


def wait_for(check: object, timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll ``check()`` until it returns something truthy."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)
