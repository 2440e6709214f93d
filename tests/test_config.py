"""``Settings.from_env``: defaults, validation, and the environment handed to children."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crypton.config import ConfigError, Settings
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
