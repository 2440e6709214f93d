"""Settings of the API process that the shared ``crypton.config.Settings`` does not hold."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from crypton.config import ConfigError


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)  # a duration in seconds, never money
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _count(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class ApiConfig:
    admin_token: str | None = None
    """Bearer token of the admin routes; ``None`` disables them (every call is a 401)."""
    secret: bytes | None = None
    """``CRYPTON_API_SECRET``: keys the order ids and the MAC of what the API writes
    (see ``api_secret`` and ``crypton.signing``)."""
    produce_timeout_s: float = 5.0
    """How long a command may wait for the broker's acknowledgement before a 503."""
    wait_timeout_s: float = 5.0
    """Upper bound of ``?wait=true``: how long a request waits for the state topics."""
    heartbeat_s: float = 15.0
    """Idle SSE streams get a comment line this often, so proxies keep them open."""
    sse_queue: int = 1000
    """Events buffered per SSE client before it is told to resync and dropped."""
    sse_streams_per_user: int = 8
    """Open ``/v1/stream/me`` streams per user (all its API keys together); more is a 429."""
    header_timeout_s: float = 10.0
    """A connection that has not sent a complete request head within this is closed."""
    rate_limit: int = 50
    """Requests a second per API key (or per client address without one), per replica;
    0 turns rate limiting off."""
    rate_burst: int = 100
    """Requests a client may send at once before the rate applies (the bucket size)."""
    readmodel_dir: Path | None = None
    """``CRYPTON_READMODEL_DIR``: where the read model's view file lives (a rebuildable
    cache of the state topics); by default ``readmodel/`` in the data directory."""

    @classmethod
    def from_env(cls) -> ApiConfig:
        return cls(
            admin_token=os.environ.get("CRYPTON_ADMIN_TOKEN") or None,
            secret=_secret_from_env(),
            produce_timeout_s=_positive("CRYPTON_API_PRODUCE_TIMEOUT", 5.0),
            wait_timeout_s=_positive("CRYPTON_API_WAIT_TIMEOUT", 5.0),
            heartbeat_s=_positive("CRYPTON_SSE_HEARTBEAT", 15.0),
            sse_queue=int(_positive("CRYPTON_SSE_QUEUE", 1000)),
            sse_streams_per_user=int(_positive("CRYPTON_SSE_STREAMS_PER_USER", 8)),
            header_timeout_s=_positive("CRYPTON_API_HEADER_TIMEOUT", 10.0),
            rate_limit=_count("CRYPTON_RATE_LIMIT", 50),
            rate_burst=_count("CRYPTON_RATE_BURST", 100, minimum=1),
            readmodel_dir=Path(raw) if (raw := os.environ.get("CRYPTON_READMODEL_DIR")) else None,
        )


SECRET_FILE = "api-secret"
_MIN_SECRET = 16


def _secret_from_env() -> bytes | None:
    raw = os.environ.get("CRYPTON_API_SECRET")
    if not raw:
        return None
    if len(raw) < _MIN_SECRET:
        raise ConfigError(f"CRYPTON_API_SECRET must be at least {_MIN_SECRET} characters")
    return raw.encode()


def api_secret(config: ApiConfig, data_dir: Path) -> bytes:
    """The server secret that keys order ids: ``CRYPTON_API_SECRET``, or the one kept in
    ``data_dir/api-secret`` (created once, mode 0600). Every replica of the API must
    use the same one, and it must never change: a retried request must name the same
    order. Replicas that do not share a data directory must set the variable."""
    if config.secret is not None:
        return config.secret
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written aside, then linked into place: a replica starting at the same moment
        # never reads a half-written file, and the first link wins.
        draft = data_dir / f".{SECRET_FILE}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    secret = path.read_text("utf-8").strip()
    if len(secret) < _MIN_SECRET:
        raise ConfigError(f"{path} holds no secret; delete it or set CRYPTON_API_SECRET")
    return secret.encode()
