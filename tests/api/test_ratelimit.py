"""Rate limits: per API key on private routes, per client address on public ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from api._ratelimit import Buckets
from crypton.config import Settings

from .support import ADMIN_TOKEN, create_user, start_api

pytestmark = pytest.mark.integration


def test_buckets_refill_at_the_rate_up_to_the_burst() -> None:
    buckets = Buckets(rate=10, burst=5)
    assert [buckets.take("a", 0.0)[0] for _ in range(6)] == [True] * 5 + [False]
    assert buckets.take("b", 0.0)[0], "every key has its own bucket"
    assert buckets.take("a", 0.1)[0] and not buckets.take("a", 0.1)[0]
    assert buckets.take("a", 100.0) == (True, 4.0), "never more than the burst"
    assert buckets.retry_after(0.0) == 1
    assert dict(buckets.headers(4.0)) == {
        b"ratelimit-limit": b"5",
        b"ratelimit-remaining": b"4",
        b"ratelimit-reset": b"1",
    }


def test_over_the_limit_is_a_429_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    server = start_api(
        settings, tmp_path, env={"CRYPTON_RATE_LIMIT": "1", "CRYPTON_RATE_BURST": "5"}
    )
    try:
        with server.client(ADMIN_TOKEN) as admin, server.client() as public:
            alice = create_user(admin)
            first = public.get("/v1/markets")
            assert first.status_code == 200
            assert first.headers["RateLimit-Limit"] == "5"
            assert first.headers["RateLimit-Remaining"] == "4"
            assert int(first.headers["RateLimit-Reset"]) >= 1
            codes = [public.get("/v1/markets").status_code for _ in range(6)]
            assert codes.count(429) >= 2
            limited = public.get("/v1/time")
            assert limited.status_code == 429
            assert limited.json()["code"] == "rate_limited"
            assert int(limited.headers["Retry-After"]) >= 1
            # The key has its own bucket, untouched by the address's requests.
            mine = alice.client.get("/v1/balances")
            assert mine.status_code == 200 and mine.headers["RateLimit-Remaining"] == "4"
            # A made-up key spends from the address's bucket: no way around the limit.
            fake = public.get("/v1/time", headers={"Authorization": "Bearer made-up"})
            assert fake.status_code == 429
            # Probes are never limited; neither is the operator's admin token.
            assert public.get("/health").status_code == 200
            assert all(admin.get("/v1/markets").status_code == 200 for _ in range(10))
            alice.close()
    finally:
        server.stop()
