"""Locust scenarios against a Crypton API on this machine (loopback only).

    CRYPTON_ADMIN_TOKEN=... locust -f loadtest/locustfile.py --headless \
        -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

At start the admin creates ``CRYPTON_LOADTEST_ACCOUNTS`` trading accounts (default
20) and credits each with every asset. ``Trader`` users place limit orders around
a mid price per market (resting mostly, crossing now and then so trades happen),
cancel some of their open orders and read balances, orders and depth.
``MarketDataReader`` users read depth, trades and candles. Any host other than
loopback is refused: this file must never load someone else's server.

Amounts are built with ``Decimal`` from the market rules the API serves, so every
order is valid (a 400 is a failure of the run, not noise).
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
from locust import HttpUser, between, events, task
from locust.env import Environment

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


def _load_markets(session: requests.Session, host: str) -> list[MarketRules]:
    response = session.get(f"{host}/v1/markets", timeout=10)
    response.raise_for_status()
    rules = []
    for m in response.json()["items"]:
        if m["market"] in MID_PRICES:
            rules.append(
                MarketRules(
                    m["market"], Decimal(m["tick"]), Decimal(m["step"]),
                    Decimal(m["min_quantity"]), Decimal(m["min_notional"]),
                    MID_PRICES[m["market"]],
                )
            )  # fmt: skip
    if not rules:
        raise LoadTestError(f"none of {sorted(MID_PRICES)} is served by {host}")
    return rules


def create_accounts(host: str, count: int, token: str) -> list[Account]:
    """Create ``count`` users through the admin API and credit each with every asset."""
    run = uuid.uuid4().hex[:8]
    accounts = []
    with requests.Session() as admin:
        admin.headers["Authorization"] = f"Bearer {token}"
        POOL.markets = _load_markets(admin, host)
        for i in range(count):
            response = admin.post(
                f"{host}/v1/admin/users", json={"user_id": f"load-{run}-{i}"}, timeout=15
            )
            if response.status_code != 201:
                raise LoadTestError(f"creating a user: {response.status_code} {response.text}")
            body = response.json()
            accounts.append(Account(body["user_id"], body["api_key"]))
            for asset, amount in CREDIT.items():
                response = admin.post(
                    f"{host}/v1/admin/users/{body['user_id']}/credit",
                    json={"asset": asset, "amount": amount, "transfer_id": f"load-{run}-{asset}"},
                    timeout=15,
                )
                if response.status_code not in (200, 202):
                    raise LoadTestError(f"crediting: {response.status_code} {response.text}")
    return accounts


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--accounts", type=int, env_var="CRYPTON_LOADTEST_ACCOUNTS", default=20,
        help="trading accounts the admin creates at start (default 20)",
    )  # fmt: skip


@events.test_start.add_listener
def _create_accounts(environment: Environment, **_: Any) -> None:
    # Runs once, in the process that drives the test (headless or master).
    host = check_host(environment.host)
    accounts = max(1, int(getattr(environment.parsed_options, "accounts", 20) or 20))
    POOL.accounts = create_accounts(host, accounts, _admin_token())


@events.init.add_listener
def _refuse_other_hosts(environment: Environment, **_: Any) -> None:
    # Fail before any request: a wrong --host must not receive a single one.
    if environment.host is not None:
        check_host(environment.host)
    for user_class in environment.user_classes:
        if user_class.host:
            check_host(user_class.host)


class Trader(HttpUser):
    """A trading account: places, crosses, cancels and reads its own state."""

    weight = 3
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        check_host(self.host)
        self.account = POOL.take()
        self.client.headers["Authorization"] = f"Bearer {self.account.api_key}"

    def _place(self, cross: bool) -> None:
        market = random.choice(POOL.markets)
        side = random.choice(("buy", "sell"))
        price = market.price(side, cross)
        body = {
            "market": market.symbol, "side": side, "type": "limit",
            "price": str(price), "quantity": str(market.quantity(price)),
            "time_in_force": "IOC" if cross and random.random() < 0.5 else "GTC",
        }  # fmt: skip
        with self.client.post(
            "/v1/orders", json=body, name="/v1/orders [place]", catch_response=True
        ) as response:
            if response.status_code not in (200, 202):
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(6)
    def place_resting(self) -> None:
        self._place(cross=False)

    @task(1)
    def place_crossing(self) -> None:
        self._place(cross=True)

    @task(2)
    def cancel_one(self) -> None:
        response = self.client.get(
            "/v1/orders", params={"status": "open", "limit": 20}, name="/v1/orders [open]"
        )
        if response.status_code != 200:
            return  # counted as a failure by locust already
        items = response.json()["items"]
        if not items:
            return
        order_id = random.choice(items)["order_id"]
        with self.client.delete(
            f"/v1/orders/{order_id}", name="/v1/orders/{id}", catch_response=True
        ) as cancel:
            # 409 order_closed: it filled or was canceled since we listed it.
            if cancel.status_code in (200, 202, 409):
                cancel.success()
            else:
                cancel.failure(f"{cancel.status_code}: {cancel.text[:200]}")

    @task(2)
    def balances(self) -> None:
        self.client.get("/v1/balances")

    @task(1)
    def orders(self) -> None:
        self.client.get("/v1/orders", params={"limit": 50}, name="/v1/orders [all]")

    @task(1)
    def depth(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.client.get(f"/v1/markets/{market}/depth", name="/v1/markets/{m}/depth")


class MarketDataReader(HttpUser):
    """A public client polling market data; no account."""

    weight = 1
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        check_host(self.host)

    @task(3)
    def depth(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.client.get(f"/v1/markets/{market}/depth", params={"levels": 20},
                        name="/v1/markets/{m}/depth")  # fmt: skip

    @task(2)
    def trades(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.client.get(f"/v1/markets/{market}/trades", params={"limit": 50},
                        name="/v1/markets/{m}/trades")  # fmt: skip

    @task(1)
    def candles(self) -> None:
        market = random.choice(POOL.markets).symbol
        self.client.get(f"/v1/markets/{market}/candles", params={"interval": "1m"},
                        name="/v1/markets/{m}/candles")  # fmt: skip

    @task(1)
    def markets(self) -> None:
        self.client.get("/v1/markets")
