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

__all__ = ["ConfigError", "Settings", "load_markets", "packaged_markets_text"]


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


# librdkafka settings every Kafka client of the exchange takes from the environment.
CLIENT_SECURITY_ENV: dict[str, str] = {
    "CRYPTON_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "CRYPTON_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "CRYPTON_KAFKA_SASL_USERNAME": "sasl.username",
    "CRYPTON_KAFKA_SASL_PASSWORD": "sasl.password",
    "CRYPTON_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}
BROKERS = ("kafka", "tansu")


def read_client_properties(path: Path) -> dict[str, str]:
    r"""``key=value`` lines of a Java-style properties file (``#`` and ``!`` comments).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".properties", delete=False) as f:
    ...     _ = f.write("# SASL\nsecurity.protocol = SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n")
    >>> read_client_properties(Path(f.name))
    {'security.protocol': 'SASL_SSL', 'sasl.mechanism': 'SCRAM-SHA-512'}
    """
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"CRYPTON_KAFKA_CONFIG: cannot read {path}: {exc.strerror}") from None
    config: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"CRYPTON_KAFKA_CONFIG: {path}:{number}: expected key=value")
        config[key.strip()] = value.strip()
    return config


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(".crypton"))
    bootstrap: str | None = None
    """An existing Kafka cluster; ``None`` means the embedded broker."""
    broker: str = "kafka"
    """Embedded broker: ``kafka`` (Apache Kafka, needs Java 17+) or ``tansu`` (memory only)."""
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    nodes: int = 1
    """Nodes of the embedded Kafka cluster (3: replication 3, ``min.insync.replicas=2``)."""
    kafka_config_file: Path | None = None
    """A librdkafka properties file every client loads (``CRYPTON_KAFKA_CONFIG``)."""
    security: tuple[tuple[str, str], ...] = ()
    """librdkafka security settings from ``CRYPTON_KAFKA_SECURITY_PROTOCOL`` and friends."""
    topic_prefix: str = ""
    partitions: int = 4
    markets_file: Path | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    snapshot_seconds: int = 10
    """The dataflow's epoch: how often it snapshots. Each epoch costs Bytewax about five
    SQLite transactions whatever changed; a crash replays up to one epoch."""
    state_segment_ms: int = 600_000
    """How often a compacted state topic rolls a segment: only closed segments compact."""

    @classmethod
    def from_env(cls) -> Settings:
        broker = os.environ.get("CRYPTON_BROKER", "kafka")
        if broker not in BROKERS:
            raise ConfigError(f"CRYPTON_BROKER={broker!r} must be 'kafka' or 'tansu'")
        markets = os.environ.get("CRYPTON_MARKETS")
        config_file = os.environ.get("CRYPTON_KAFKA_CONFIG")
        security = tuple(
            (key, os.environ[name])
            for name, key in CLIENT_SECURITY_ENV.items()
            if os.environ.get(name)
        )
        return cls(
            data_dir=Path(os.environ.get("CRYPTON_DATA_DIR", ".crypton")),
            bootstrap=os.environ.get("CRYPTON_KAFKA_BOOTSTRAP") or None,
            broker=broker,
            kafka_host=os.environ.get("CRYPTON_KAFKA_HOST", "127.0.0.1"),
            kafka_port=_int("CRYPTON_KAFKA_PORT", 9092, 1, 65535),
            nodes=_int("CRYPTON_KAFKA_NODES", 1, 1, 9),
            kafka_config_file=Path(config_file) if config_file else None,
            security=security,
            topic_prefix=os.environ.get("CRYPTON_TOPIC_PREFIX", ""),
            partitions=_int("CRYPTON_PARTITIONS", 4, 1, 1024),
            markets_file=Path(markets) if markets else None,
            api_host=os.environ.get("CRYPTON_API_HOST", "127.0.0.1"),
            api_port=_int("CRYPTON_API_PORT", 8000, 1, 65535),
            snapshot_seconds=_int("CRYPTON_SNAPSHOT_SECONDS", 10, 1, 3600),
            state_segment_ms=_int("CRYPTON_STATE_SEGMENT_MS", 600_000, 10, 1 << 31),
        )

    @property
    def bootstrap_servers(self) -> str:
        """Where Kafka clients connect: the external cluster or every embedded node."""
        if self.bootstrap:
            return self.bootstrap
        ports = range(self.kafka_port, self.kafka_port + self.nodes)
        return ",".join(f"{self.kafka_host}:{port}" for port in ports)

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every client: the properties file, then the
        ``CRYPTON_KAFKA_*`` security variables on top."""
        config = read_client_properties(self.kafka_config_file) if self.kafka_config_file else {}
        config.update(self.security)
        return config

    def markets(self) -> Markets:
        return load_markets(self.markets_file)


def packaged_markets_text() -> str:
    """The packaged markets file (``crypton/markets.toml``), as text."""
    return resources.files("crypton").joinpath("markets.toml").read_text("utf-8")


def load_markets(path: Path | None = None) -> Markets:
    """Load and validate the market file, or the packaged defaults when ``path`` is None."""
    try:
        if path is None:
            text = packaged_markets_text()
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
