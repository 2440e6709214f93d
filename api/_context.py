"""Everything a request handler needs, built once per app by ``create_app``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TypeAlias

from litestar.di import NamedDependency

from crypton.config import Settings
from crypton.domain.markets import Markets

from ._claims import Claims
from ._config import ApiConfig
from ._hub import Hub
from ._producer import CommandLog
from ._ratelimit import Buckets
from .metrics import Metrics
from .readmodel import LiveReadModel


@dataclass
class Context:
    settings: Settings
    config: ApiConfig
    markets: Markets
    metrics: Metrics
    readmodel: LiveReadModel
    hub: Hub
    commands: CommandLog
    secret: bytes
    """Keys the order ids; the same on every replica (``_config.api_secret``)."""
    claims: Claims = field(default_factory=Claims)
    rate_limits: Buckets | None = None
    """``None``: no rate limit (``CRYPTON_RATE_LIMIT=0``)."""
    precisions: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.precisions = {code: a.precision for code, a in self.markets.assets.items()}

    @staticmethod
    def now_ms() -> int:
        """Commands carry the API's clock: the dataflow never reads one (see DESIGN.md)."""
        return time.time_ns() // 1_000_000


Ctx: TypeAlias = NamedDependency[Context]
"""A handler's ``ctx`` parameter: the app's ``Context``, injected by name."""

User: TypeAlias = NamedDependency[str]
"""A handler's ``user`` parameter: the authenticated user id (``api.auth.current_user``)."""
