"""``Settings.from_env``: defaults, validation, and the environment handed to children."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crypton.config import ConfigError, Settings
from crypton.kafka import consumer_config, producer_config
from crypton.process import settings_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CRYPTON_"):
            monkeypatch.delenv(name)


def test_defaults_run_on_one_machine() -> None:
    settings = Settings.from_env()
    assert settings.bootstrap is None
    assert settings.broker == "kafka"
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.partitions == 4
    assert settings.data_dir == Path(".crypton")


def test_external_bootstrap_wins_over_embedded_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTON_KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("CRYPTON_KAFKA_PORT", "19092")
    assert Settings.from_env().bootstrap_servers == "kafka-0:9092,kafka-1:9092"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CRYPTON_PARTITIONS", "four", "CRYPTON_PARTITIONS='four' is not an integer"),
        ("CRYPTON_PARTITIONS", "0", "CRYPTON_PARTITIONS=0 must be between 1 and 1024"),
        ("CRYPTON_KAFKA_PORT", "70000", "CRYPTON_KAFKA_PORT=70000 must be between 1 and 65535"),
        ("CRYPTON_BROKER", "redpanda", "CRYPTON_BROKER='redpanda' must be 'kafka' or 'tansu'"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        Settings.from_env()
    assert str(error.value) == message


def test_settings_env_reproduces_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker="tansu",
        kafka_port=19093,
        topic_prefix="dev.",
        partitions=8,
        api_port=8123,
        snapshot_seconds=5,
        markets_file=tmp_path / "markets.toml",
    )
    env = settings_env(settings, base={"CRYPTON_KAFKA_BOOTSTRAP": "stale:9092", "PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert "CRYPTON_KAFKA_BOOTSTRAP" not in env  # the embedded broker, not a stale cluster
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_settings_env_passes_an_external_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=Path("/srv/crypton"), bootstrap="kafka:9092")
    for name, value in settings_env(settings, base={}).items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_client_config_is_the_file_with_the_environment_on_top(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# the cluster's TLS and SASL\n"
        "security.protocol = SASL_SSL\n"
        "sasl.mechanism=PLAIN\n"
        "ssl.ca.location=/etc/kafka/ca.crt\n"
        "! Java-style comment\n"
        "client.id=crypton\n"
    )
    monkeypatch.setenv("CRYPTON_KAFKA_CONFIG", str(properties))
    monkeypatch.setenv("CRYPTON_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CRYPTON_KAFKA_SASL_USERNAME", "api")
    monkeypatch.setenv("CRYPTON_KAFKA_SASL_PASSWORD", "s3cret=with=equals")
    settings = Settings.from_env()
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",  # the variable wins over the file
        "ssl.ca.location": "/etc/kafka/ca.crt",
        "client.id": "crypton",
        "sasl.username": "api",
        "sasl.password": "s3cret=with=equals",
    }
    assert settings.client_config() == expected
    # Producers and consumers are built from it (and the admin client, the same way).
    for config in (producer_config(settings), consumer_config(settings)):
        assert expected.items() <= config.items()
        assert config["bootstrap.servers"] == "127.0.0.1:9092"


def test_settings_env_hands_credentials_and_the_file_to_children(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text("security.protocol=SASL_SSL\n")
    settings = Settings(
        data_dir=tmp_path,
        kafka_config_file=properties,
        security=(("sasl.mechanism", "SCRAM-SHA-512"), ("sasl.username", "dataflow")),
    )
    stale = {"CRYPTON_KAFKA_SASL_PASSWORD": "someone-else's", "PATH": "/bin"}
    env = settings_env(settings, base=stale)
    assert env["CRYPTON_KAFKA_SASL_USERNAME"] == "dataflow"
    assert "CRYPTON_KAFKA_SASL_PASSWORD" not in env  # not inherited from the parent
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env().client_config() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "dataflow",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("security.protocol\n", "client.properties:1: expected key=value"),
        ("# ok\n=SASL_SSL\n", "client.properties:2: expected key=value"),
    ],
)
def test_a_malformed_client_file_names_the_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, message: str
) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text(text)
    monkeypatch.setenv("CRYPTON_KAFKA_CONFIG", str(properties))
    with pytest.raises(ConfigError, match=message):
        Settings.from_env().client_config()


def test_a_missing_client_file_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRYPTON_KAFKA_CONFIG", str(tmp_path / "nope.properties"))
    with pytest.raises(ConfigError, match=r"CRYPTON_KAFKA_CONFIG: cannot read .*nope\.properties"):
        Settings.from_env().client_config()
