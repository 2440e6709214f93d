"""Settings from the environment, read once at start-up.

Every knob has a default that runs the exchange on one machine; production
sets the ``CRYPTON_*`` variables (see the README's table).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from crypton.domain.markets import MarketConfigError, Markets, parse_markets

__all__ = ["ConfigError", "Settings", "load_markets"]


class ConfigError(ValueError):
    """A setting is invalid; the message says which and why."""


def _int(name: str, default: int, low: int = 1, high: int = 1 << 30) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be between {low} and {high}")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(".crypton"))
    bootstrap: str | None = None
    """An existing Kafka cluster; ``None`` means the embedded broker."""
    broker: str = "noida"
    """Embedded broker: ``noida`` (keeps data on disk) or ``tansu`` (memory only)."""
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    topic_prefix: str = ""
    partitions: int = 4
    markets_file: Path | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    snapshot_seconds: int = 2

    @classmethod
    def from_env(cls) -> Settings:
        broker = os.environ.get("CRYPTON_BROKER", "noida")
        if broker not in ("noida", "tansu"):
            raise ConfigError(f"CRYPTON_BROKER={broker!r} must be 'noida' or 'tansu'")
        markets = os.environ.get("CRYPTON_MARKETS")
        return cls(
            data_dir=Path(os.environ.get("CRYPTON_DATA_DIR", ".crypton")),
            bootstrap=os.environ.get("CRYPTON_KAFKA_BOOTSTRAP") or None,
            broker=broker,
            kafka_host=os.environ.get("CRYPTON_KAFKA_HOST", "127.0.0.1"),
            kafka_port=_int("CRYPTON_KAFKA_PORT", 9092, 1, 65535),
            topic_prefix=os.environ.get("CRYPTON_TOPIC_PREFIX", ""),
            partitions=_int("CRYPTON_PARTITIONS", 4, 1, 1024),
            markets_file=Path(markets) if markets else None,
            api_host=os.environ.get("CRYPTON_API_HOST", "127.0.0.1"),
            api_port=_int("CRYPTON_API_PORT", 8000, 1, 65535),
            snapshot_seconds=_int("CRYPTON_SNAPSHOT_SECONDS", 2, 1, 3600),
        )

    @property
    def bootstrap_servers(self) -> str:
        """Where Kafka clients connect: the external cluster or the embedded broker."""
        return self.bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    def markets(self) -> Markets:
        return load_markets(self.markets_file)


def load_markets(path: Path | None = None) -> Markets:
    """Load and validate the market file, or the packaged defaults when ``path`` is None."""
    try:
        if path is None:
            text = resources.files("crypton").joinpath("markets.toml").read_text("utf-8")
            where = "crypton/markets.toml"
        else:
            text = path.read_text("utf-8")
            where = str(path)
    except OSError as exc:
        raise ConfigError(f"cannot read markets file {path}: {exc.strerror}") from None
    try:
        return parse_markets(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    except MarketConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
