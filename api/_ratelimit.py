"""Rate limits: a token bucket per API key, or per client address without a valid key.

Every response carries ``RateLimit-Limit`` (the bucket size: the burst),
``RateLimit-Remaining`` (whole requests left now) and ``RateLimit-Reset``
(seconds until the bucket is full again); over the limit the answer is a 429
``rate_limited`` with ``Retry-After``. A request with the key of a known user
spends from that key's bucket, whatever address it comes from (the admin
token is the operator's and is not limited); any other request spends from
its address's bucket, so made-up keys buy nothing. The buckets live in each
API replica (``CRYPTON_RATE_LIMIT`` is per replica): behind a load balancer
spreading one client over N replicas, the client's ceiling is N times it.

>>> buckets = Buckets(rate=2, burst=3)
>>> [buckets.take("k", now=0.0)[0] for _ in range(4)]
[True, True, True, False]
>>> buckets.take("k", now=0.5)[0]
True
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from crypton.users import hash_key
from crypton.wire import ErrorBody

if TYPE_CHECKING:
    from ._context import Context

EXEMPT: Final = frozenset({"/health", "/ready", "/metrics"})
"""Probes and scrapes: an orchestrator must never be told to slow down."""
ADMIN: Final = "admin"
"""The admin token's requests: the operator's, never limited."""
_SWEEP_AT: Final = 10_000
"""Buckets kept before full (idle) ones are forgotten: a full bucket is a fresh one."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Buckets:
    """Token buckets by key: ``rate`` tokens a second, at most ``burst``."""

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, now: float) -> tuple[bool, float]:
        """Spend one token of ``key``'s bucket if there is one; return whether it was
        spent and the tokens left."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _SWEEP_AT:
                self._sweep(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True, bucket.tokens
        return False, bucket.tokens

    def _sweep(self, now: float) -> None:
        full = [
            k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]

    def headers(self, tokens: float) -> list[tuple[bytes, bytes]]:
        reset = math.ceil((self.burst - tokens) / self.rate)
        return [
            (b"ratelimit-limit", str(self.burst).encode()),
            (b"ratelimit-remaining", str(math.floor(tokens)).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]

    def retry_after(self, tokens: float) -> int:
        return max(1, math.ceil((1 - tokens) / self.rate))


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class RateLimitMiddleware:
    """The ASGI side of ``Buckets``; the app's context tells which keys are known."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        ctx: Context = scope["app"].state.ctx
        buckets = ctx.rate_limits
        if buckets is None:
            await self.app(scope, receive, send)
            return
        key = self._key(scope, ctx)
        if key == ADMIN:
            await self.app(scope, receive, send)
            return
        allowed, tokens = buckets.take(key, time.monotonic())
        headers = buckets.headers(tokens)
        if not allowed:
            ctx.metrics.rate_limited.labels(key.partition(":")[0]).inc()
            retry = buckets.retry_after(tokens)
            body = msgspec.json.encode(
                ErrorBody("rate_limited", f"over {buckets.rate} requests/s; retry in {retry} s")
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", str(retry).encode()),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _key(scope: Scope, ctx: Context) -> str:
        token = _bearer(scope)
        if token is not None:
            admin = ctx.config.admin_token
            if admin is not None and hmac.compare_digest(token.encode(), admin.encode()):
                return ADMIN
            digest = hash_key(token)
            with ctx.readmodel.read() as model:
                known = model.user_by_key_hash(digest) is not None
            if known:
                return f"key:{digest}"
        client = scope.get("client")
        return f"address:{client[0] if client else '-'}"
