"""Settings of the API process that the shared ``crypton.config.Settings`` does not hold."""

from __future__ import annotations

import os
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ApiConfig:
    admin_token: str | None = None
    """Bearer token of the admin routes; ``None`` disables them (every call is a 401)."""
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

    @classmethod
    def from_env(cls) -> ApiConfig:
        return cls(
            admin_token=os.environ.get("CRYPTON_ADMIN_TOKEN") or None,
            produce_timeout_s=_positive("CRYPTON_API_PRODUCE_TIMEOUT", 5.0),
            wait_timeout_s=_positive("CRYPTON_API_WAIT_TIMEOUT", 5.0),
            heartbeat_s=_positive("CRYPTON_SSE_HEARTBEAT", 15.0),
            sse_queue=int(_positive("CRYPTON_SSE_QUEUE", 1000)),
            sse_streams_per_user=int(_positive("CRYPTON_SSE_STREAMS_PER_USER", 8)),
            header_timeout_s=_positive("CRYPTON_API_HEADER_TIMEOUT", 10.0),
        )
