"""Locust scenarios against a Crypton API on this machine (loopback only).

    CRYPTON_ADMIN_TOKEN=... locust -f loadtest/locustfile.py --headless \
        -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

At start the admin creates ``CRYPTON_LOADTEST_ACCOUNTS`` trading accounts (default
20) and credits each with every asset. ``Trader`` users place limit orders around
a mid price per market (resting mostly, crossing now and then so trades happen),
cancel some of their open orders and read balances, orders and depth.
``MarketDataReader`` users read depth, trades, candles and tickers. Every request
goes through ``crypton.client``; ``ApiUser`` reports each to locust's statistics.
Any host other than loopback is refused: this file must never load someone else's
server. The API limits each key to ``CRYPTON_RATE_LIMIT`` requests a second: a 429 is
a failure of the run (too many users per account).

Amounts are built with ``Decimal`` from the market rules the API serves, so every
order is valid (a 400 is a failure of the run, not noise).
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from locust import User, between, events, task
from locust.env import Environment

from crypton.client import ApiError, Client

T = TypeVar("T")

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MID_PRICES = {"BTC-USDT": Decimal(60000), "ETH-USDT": Decimal(3000), "ETH-BTC": Decimal("0.05")}
CREDIT = {"BTC": "100", "ETH": "1000", "USDT": "10000000"}
SPREAD = Decimal("0.002")  # resting orders sit within 0.2% of the mid


class LoadTestError(RuntimeError):
    """The run cannot start; the message says why."""


def check_host(host: str | None) -> str:
    """``host`` if it is an http(s) URL on loopback; otherwise a LoadTestError."""
    if not host:
        raise LoadTestError("no host: pass --host http://127.0.0.1:8000")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK:
        raise LoadTestError(
            f"refusing to load {host!r}: this load test only targets the API on loopback"
            " (--host http://127.0.0.1:PORT)"
        )
    return host.rstrip("/")


@dataclass(frozen=True)
class MarketRules:
    symbol: str
    tick: Decimal
    step: Decimal
    min_quantity: Decimal
    min_notional: Decimal
    mid: Decimal

    def price(self, side: str, cross: bool) -> Decimal:
        """A price near the mid: buys below and sells above it, or the reverse to cross."""
        offset = self.mid * SPREAD * Decimal(random.randint(1, 10)) / 10
        below = (side == "buy") != cross
        raw = self.mid - offset if below else self.mid + offset
        return max(self.tick, (raw / self.tick).to_integral_value(ROUND_FLOOR) * self.tick)

    def quantity(self, price: Decimal) -> Decimal:
        """A few steps above both the minimum quantity and the minimum notional."""
        least = max(self.min_quantity, self.min_notional * Decimal("1.1") / price)
        steps = (least / self.step).to_integral_value(ROUND_CEILING)
        return (steps + random.randint(0, 4)) * self.step


@dataclass
class Account:
    user_id: str
    api_key: str


class _Pool:
    """The accounts created at start, handed out round-robin to the simulated users."""

    def __init__(self) -> None:
        self.accounts: list[Account] = []
        self.markets: list[MarketRules] = []
        self._next = itertools.count()
        self._lock = threading.Lock()

    def take(self) -> Account:
        with self._lock:
            if not self.accounts:
                raise LoadTestError("no accounts: the start-up step did not run")
            return self.accounts[next(self._next) % len(self.accounts)]


POOL = _Pool()


def _admin_token() -> str:
    token = os.environ.get("CRYPTON_ADMIN_TOKEN")
    if not token:
        raise LoadTestError("set CRYPTON_ADMIN_TOKEN to the API's admin token")
    return token


def _load_markets(admin: Client, host: str) -> list[MarketRules]:
    rules = [
        MarketRules(
            m.market, Decimal(m.tick), Decimal(m.step), Decimal(m.min_quantity),
            Decimal(m.min_notional), MID_PRICES[m.market],
        )
        for m in admin.markets()
        if m.market in MID_PRICES
    ]  # fmt: skip
    if not rules:
        raise LoadTestError(f"none of {sorted(MID_PRICES)} is served by {host}")
    return rules


def create_accounts(host: str, count: int, token: str) -> list[Account]:
    """Create ``count`` users through the admin API and credit each with every asset."""
    run = uuid.uuid4().hex[:8]
    accounts = []
    with Client(host, token) as admin:
        try:
            POOL.markets = _load_markets(admin, host)
            for i in range(count):
                user = admin.create_user(f"load-{run}-{i}")
                accounts.append(Account(user.user_id, user.api_key))
                for asset, amount in CREDIT.items():
                    admin.credit(user.user_id, asset, amount, f"load-{run}-{asset}")
        except (ApiError, httpx.HTTPError) as exc:
            raise LoadTestError(f"setting up accounts: {exc}") from None
    return accounts


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument(
        "--accounts", type=int, env_var="CRYPTON_LOADTEST_ACCOUNTS", default=20,
        help="trading accounts the admin creates at start (default 20)",
    )  # fmt: skip


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _create_accounts(environment: Environment, **_: Any) -> None:
    # Runs once, in the process that drives the test (headless or master).
    host = check_host(environment.host)
    accounts = max(1, int(getattr(environment.parsed_options, "accounts", 20) or 20))
    POOL.accounts = create_accounts(host, accounts, _admin_token())


@events.init.add_listener  # type: ignore[untyped-decorator]
def _refuse_other_hosts(environment: Environment, **_: Any) -> None:
    # Fail before any request: a wrong --host must not receive a single one.
    if environment.host is not None:
        check_host(environment.host)
    for user_class in environment.user_classes:
        if user_class.host:
            check_host(user_class.host)


class ApiUser(User):
    """A locust user speaking through ``crypton.client``; each call is reported to
    locust's statistics under a route name, with the answers that count as success."""

    abstract = True
    api: Client

    def connect(self, api_key: str | None) -> None:
        self.api = Client(check_host(self.host), api_key)

    def on_stop(self) -> None:
        self.api.close()

    def call(
        self, name: str, fn: Callable[..., T], *args: Any, ok: tuple[int, ...] = (), **kw: Any
    ) -> T | None:
        started = time.perf_counter()
        result: T | None = None
        failure: Exception | None = None
        try:
            result = fn(*args, **kw)
        except ApiError as exc:
            # e.g. 409 order_closed: it filled or was canceled since we listed it.
            failure = None if exc.status in ok else exc
        except httpx.HTTPError as exc:
            failure = exc
        self.environment.events.request.fire(
            request_type="HTTP", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=failure, context={},
        )  # fmt: skip
        return result


class Trader(ApiUser):
    """A trading account: places, crosses, cancels and reads its own state."""

    weight = 3
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.account = POOL.take()
        self.connect(self.account.api_key)

    def _place(self, cross: bool) -> None:
        market = random.choice(POOL.markets)
        side = random.choice(("buy", "sell"))
        price = market.price(side, cross)
        tif = "IOC" if cross and random.random() < 0.5 else "GTC"
        self.call(
            "/v1/orders [place]", self.api.place_order, market.symbol, side, "limit",
            price=str(price), quantity=str(market.quantity(price)), time_in_force=tif,
        )  # fmt: skip

    @task(6)
    def place_resting(self) -> None:
        self._place(cross=False)

    @task(1)
    def place_crossing(self) -> None:
        self._place(cross=True)

    @task(2)
    def cancel_one(self) -> None:
        page = self.call("/v1/orders [open]", self.api.orders, "open", limit=20)
        if not page or not page.items:
            return
        order_id = random.choice(page.items).order_id
        self.call("/v1/orders/{id}", self.api.cancel_order, order_id, ok=(409,))

    @task(2)
    def balances(self) -> None:
        self.call("/v1/balances", self.api.balances)

    @task(1)
    def orders(self) -> None:
        self.call("/v1/orders [all]", self.api.orders, limit=50)

    @task(1)
    def depth(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.call("/v1/markets/{m}/depth", self.api.depth, market)


class MarketDataReader(ApiUser):
    """A public client polling market data; no account."""

    weight = 1
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.connect(None)

    @task(3)
    def depth(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.call("/v1/markets/{m}/depth", self.api.depth, market, 20)

    @task(2)
    def trades(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.call("/v1/markets/{m}/trades", self.api.trades, market, 50)

    @task(1)
    def candles(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.call("/v1/markets/{m}/candles", self.api.candles, market, "1m")

    @task(1)
    def tickers(self) -> None:
        self.call("/v1/tickers", self.api.tickers)

    @task(1)
    def markets(self) -> None:
        self.call("/v1/markets", self.api.markets)
