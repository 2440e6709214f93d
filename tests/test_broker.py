"""The embedded brokers: start, answer, keep data (Kafka), compact, fail in one clear line."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from crypton.broker import KAFKA_VERSION, BrokerError, EmbeddedBroker, port_in_use
from crypton.config import Settings
from crypton.kafka import admin, consumer_config, producer_config
from crypton.process import free_port, free_ports, settings_env
from tests.processes import read_until

pytestmark = pytest.mark.integration


def _crypton(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crypton.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crypton: error: "), stderr
    return lines[0]


def _own_broker(tmp_path: Path, kind: str = "kafka") -> EmbeddedBroker:
    return EmbeddedBroker(Settings(data_dir=tmp_path, broker=kind, kafka_port=free_ports(2)))


def _create(settings: Settings, topic: str, partitions: int) -> None:
    client = admin(settings)  # kept alive until the future resolves
    client.create_topics([NewTopic(topic, partitions)])[topic].result(10)


def _produce(settings: Settings, topic: str, count: int) -> None:
    producer = Producer(producer_config(settings))
    for i in range(count):
        producer.produce(topic, key=f"user-{i % 7}".encode(), value=str(i).encode())
    assert producer.flush(10) == 0


def _consume_all(settings: Settings, topic: str, partitions: int) -> list[bytes]:
    consumer = Consumer(consumer_config(settings, **{"group.id": "test-restart"}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            values.append(message.value())
        elif message is None and values:
            break
    consumer.close()
    return values


def test_broker_answers_metadata(kafka_broker: EmbeddedBroker | None) -> None:
    if kafka_broker is None:
        pytest.skip("external cluster")
    metadata = admin(kafka_broker.settings).list_topics(timeout=5)
    addresses = {f"{b.host}:{b.port}" for b in metadata.brokers.values()}
    assert addresses == {kafka_broker.address}
    assert kafka_broker.startup_seconds is not None and kafka_broker.startup_seconds < 10


def test_port_in_use_is_one_error_line(kafka_broker: EmbeddedBroker | None) -> None:
    if kafka_broker is None:
        pytest.skip("external cluster")
    assert port_in_use(kafka_broker.host, kafka_broker.port)
    env = settings_env(dataclasses.replace(kafka_broker.settings, data_dir=Path("/nonexistent")))
    proc = _crypton("broker", env=env)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    line = _one_error_line(stderr)
    assert f"port {kafka_broker.port} on 127.0.0.1 is already in use" in line


@pytest.mark.parametrize("command", ["topics", "broker", "up"])
def test_unreachable_cluster_is_one_error_line(command: str, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    env = settings_env(Settings(data_dir=tmp_path, bootstrap=nowhere))
    proc = _crypton(command, "--kafka-timeout", "1", env=env)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    line = _one_error_line(stderr)
    assert f"Kafka at {nowhere} did not answer within 1s" in line


def test_a_broker_that_exits_at_start_is_reported(tmp_path: Path, broker_kind: str) -> None:
    if broker_kind != "kafka":
        pytest.skip("needs the embedded Kafka")
    # Kafka itself finds its client port taken (after our own check): it exits with 1.
    # (Never a second broker on a live broker's data directory: in KRaft mode its
    # controller starts before the log directory lock is checked.)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        base = free_ports(2)
        listeners = f"PLAINTEXT://127.0.0.1:{taken},CONTROLLER://127.0.0.1:{base + 1}"
        broker = EmbeddedBroker(
            Settings(data_dir=tmp_path, kafka_port=base), extra_properties={"listeners": listeners}
        )
        with pytest.raises(BrokerError, match=r"exited with code 1 before it was ready"):
            broker.start().wait_ready(90)
        assert broker.poll() == 1


def test_kafka_keeps_data_across_restart(tmp_path: Path) -> None:
    broker = _own_broker(tmp_path).start().wait_ready(90)
    try:
        settings = broker.settings
        topic = "restart-check"
        _create(settings, topic, 2)
        _produce(settings, topic, 50)
        broker.restart(timeout=90)
        values = _consume_all(settings, topic, 2)
        assert sorted(int(v) for v in values) == list(range(50))
    finally:
        broker.stop()


def test_a_sigkilled_kafka_keeps_acknowledged_writes(tmp_path: Path) -> None:
    broker = _own_broker(tmp_path).start().wait_ready(90)
    try:
        settings = broker.settings
        _create(settings, "kill-check", 1)
        _produce(settings, "kill-check", 200)  # flushed: every write acknowledged
        broker.nodes[0].signal(signal.SIGKILL)
        broker.nodes[0].stop(grace=10)
        broker.start().wait_ready(90)
        values = _consume_all(settings, "kill-check", 1)
        assert sorted(int(v) for v in values) == list(range(200))
    finally:
        broker.stop()


def test_a_data_dir_of_one_node_does_not_start_as_three(tmp_path: Path) -> None:
    broker = _own_broker(tmp_path).start().wait_ready(90)
    broker.stop()
    three = EmbeddedBroker(dataclasses.replace(broker.settings, nodes=3))
    with pytest.raises(BrokerError, match="holds a 1-node Kafka cluster, not 3"):
        three.start()


def test_missing_java_is_one_line_naming_the_way_out(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_port=free_ports(2))
    env = {
        **settings_env(settings),
        "PATH": "/nonexistent",
        "CRYPTON_KAFKA_HOME": str(tmp_path / "k"),
    }
    env.pop("JAVA_HOME", None)
    proc = _crypton("broker", env=env)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    line = _one_error_line(stderr)
    assert "needs Java 17+" in line and "CRYPTON_BROKER=tansu" in line


def test_the_pinned_version_is_the_poms(tmp_path: Path) -> None:
    pom = Path(__file__).parent.parent / "crypton" / "broker" / "pom.xml"
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom.read_text()


def test_tansu_forgets_everything_on_restart(tmp_path: Path) -> None:
    broker = _own_broker(tmp_path, "tansu").start().wait_ready(30)
    try:
        _create(broker.settings, "gone", 1)
        broker.restart(timeout=30)
        assert "gone" not in admin(broker.settings).list_topics(timeout=5).topics
    finally:
        broker.stop()


def test_foreground_broker_stops_on_sigterm(tmp_path: Path, broker_kind: str) -> None:
    settings = Settings(data_dir=tmp_path, broker=broker_kind, kafka_port=free_ports(2))
    proc = _crypton("broker", env=settings_env(settings))
    try:
        out = read_until(proc, "broker ready at", 30)
        assert f"broker ready at 127.0.0.1:{settings.kafka_port} ({broker_kind}" in out
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert not port_in_use("127.0.0.1", settings.kafka_port)
    finally:
        proc.kill()
        proc.communicate()


def test_no_orphan_broker_when_the_launcher_is_killed(tmp_path: Path, broker_kind: str) -> None:
    settings = Settings(data_dir=tmp_path, broker=broker_kind, kafka_port=free_ports(2))
    proc = _crypton("broker", env=settings_env(settings))
    try:
        read_until(proc, "broker ready at", 30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 10
        while port_in_use("127.0.0.1", settings.kafka_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not port_in_use("127.0.0.1", settings.kafka_port)
    finally:
        proc.kill()
        proc.communicate()
