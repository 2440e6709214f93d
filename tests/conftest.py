"""Fixtures shared by every test package: a real broker and real child processes.

- ``kafka`` (session): an embedded Apache Kafka node on free ports in a temporary
  data directory, as a ``Settings`` pointing at it. ``CRYPTON_TEST_BROKER=tansu``
  runs the suite on tansu (no Java); ``CRYPTON_TEST_BOOTSTRAP=host:port`` on an existing
  cluster (nothing is started then).
- ``settings`` (function): ``kafka`` with a fresh topic prefix and data
  directory, topics already created, so tests never see each other's records.
- ``spawn`` (function): start any child process with its output in a log
  file; every child is stopped at teardown and its log path printed, so a
  failing test shows where to look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from crypton.broker import EmbeddedBroker
from crypton.config import Settings
from crypton.kafka import admin
from crypton.process import Child, free_port, free_ports, log_tail, settings_env
from crypton.topics import ensure_topics, topic_names
from tests.processes import SNAPSHOT_SECONDS

Spawn = Callable[..., Child]


def _test_broker_kind() -> str:
    kind = os.environ.get("CRYPTON_TEST_BROKER", "kafka")
    if kind not in ("kafka", "tansu"):
        raise pytest.UsageError(f"CRYPTON_TEST_BROKER={kind!r} must be kafka or tansu")
    return kind


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """The embedded broker the suite runs on: ``kafka`` (default) or ``tansu``."""
    return _test_broker_kind()


@pytest.fixture(scope="session")
def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory, broker_kind: str
) -> Iterator[EmbeddedBroker | None]:
    """The session's embedded broker (``None`` with ``CRYPTON_TEST_BOOTSTRAP``)."""
    if os.environ.get("CRYPTON_TEST_BOOTSTRAP"):
        yield None
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    settings = Settings(
        data_dir=data_dir,
        broker=broker_kind,
        kafka_port=free_ports(2),
        snapshot_seconds=SNAPSHOT_SECONDS,
    )
    broker = EmbeddedBroker(settings).start()
    try:
        broker.wait_ready(90)
        yield broker
    finally:
        broker.stop(grace=10)


@pytest.fixture(scope="session")
def kafka(
    kafka_broker: EmbeddedBroker | None, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings of the test cluster, with no topic prefix and no topics created."""
    data_dir = tmp_path_factory.mktemp("crypton")
    if kafka_broker is None:
        return Settings(
            data_dir=data_dir,
            bootstrap=os.environ["CRYPTON_TEST_BOOTSTRAP"],
            snapshot_seconds=SNAPSHOT_SECONDS,
        )
    return dataclasses.replace(kafka_broker.settings, data_dir=data_dir)


@pytest.fixture
def settings(kafka: Settings, tmp_path: Path) -> Iterator[Settings]:
    """``kafka`` with a fresh topic prefix and data dir; the prefixed topics exist."""
    fresh = dataclasses.replace(
        kafka,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        data_dir=tmp_path / "crypton",
        api_port=free_port(),
    )
    ensure_topics(fresh)
    yield fresh
    # Thousands of partitions left behind would slow the session's broker for every
    # later test (each partition holds files and memory-mapped indexes).
    client = admin(fresh)
    names = topic_names(fresh.topic_prefix)
    for future in client.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result(30)


@pytest.fixture
def own_broker(
    kafka_broker: EmbeddedBroker | None, broker_kind: str, tmp_path: Path
) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, for tests that restart or kill it."""
    if kafka_broker is None:
        pytest.skip("CRYPTON_TEST_BOOTSTRAP: no embedded broker of the test's own")
    settings = Settings(data_dir=tmp_path / "broker", broker=broker_kind, kafka_port=free_ports(2))
    broker = EmbeddedBroker(settings).start()
    try:
        broker.wait_ready(90)
        yield broker
    finally:
        broker.stop(grace=10)


@pytest.fixture
def own_settings(own_broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Like ``settings``, on ``own_broker``."""
    fresh = dataclasses.replace(
        own_broker.settings, data_dir=tmp_path / "crypton", api_port=free_port()
    )
    ensure_topics(fresh)
    return fresh


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a child process: ``spawn(name, argv, settings=None, env=None, cwd=None)``.

    With ``settings``, the child's environment makes ``Settings.from_env()`` equal
    them (``env`` entries are added on top). Output goes to ``tmp_path/logs/NAME.log``.
    Children are stopped (SIGTERM, then SIGKILL after 5 s) at teardown.
    """
    children: list[Child] = []

    def start(
        name: str,
        argv: Sequence[str],
        settings: Settings | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        full_env = settings_env(settings) if settings is not None else dict(os.environ)
        full_env.update(env or {})
        child = Child(name, argv, tmp_path / "logs" / f"{name}.log", env=full_env, cwd=cwd)
        children.append(child.start())
        return child

    yield start
    for child in reversed(children):
        code = child.stop(grace=5)
        print(f"{child.name} (code {code}) log: {child.log_path}: {log_tail(child.log_path, 3)}")
