"""``crypton demo``: a one-minute scripted trading session against a running exchange.

It talks to the exchange only through its HTTP API, as any client would:
creates two users, funds them, has them trade on BTC-USDT, cancels what is
left, and prints the trades, the book and the final balances.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from crypton.config import Settings

__all__ = ["main"]


class DemoError(RuntimeError):
    """The exchange answered something the demo cannot go on from."""


class _Client:
    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise DemoError(f"{method} {path} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DemoError(f"cannot reach the API at {self.base}: {exc}") from None


def _admin_token(settings: Settings) -> str:
    token = os.environ.get("CRYPTON_ADMIN_TOKEN")
    if token:
        return token
    path = settings.data_dir / "admin-token"
    try:
        return path.read_text().strip()
    except OSError:
        raise DemoError(
            "no admin token: set CRYPTON_ADMIN_TOKEN or run `crypton up` "
            f"(which keeps it in {path})"
        ) from None


def run(settings: Settings, base_url: str, say: Any = print) -> dict[str, Any]:
    """Play the session; return the final balances of both users."""
    admin = _Client(base_url, _admin_token(settings))
    tag = secrets.token_hex(3)
    alice = admin.call("POST", "/v1/admin/users", {"user_id": f"alice-{tag}"})
    bob = admin.call("POST", "/v1/admin/users", {"user_id": f"bob-{tag}"})
    say(f"created users {alice['user_id']} and {bob['user_id']}")
    for user, asset, amount in ((alice, "BTC", "2"), (bob, "USDT", "100000")):
        admin.call(
            "POST",
            f"/v1/admin/users/{user['user_id']}/credit?wait=true",
            {"asset": asset, "amount": amount, "transfer_id": f"demo-{tag}-{asset}"},
        )
        say(f"credited {amount} {asset} to {user['user_id']}")
    seller, buyer = _Client(base_url, alice["api_key"]), _Client(base_url, bob["api_key"])

    def place(client: _Client, who: str, **order: Any) -> dict[str, Any]:
        placed: dict[str, Any] = client.call(
            "POST", "/v1/orders?wait=true", {"market": "BTC-USDT", **order}
        )
        what = order.get("price") or f"market, funds {order.get('funds')}"
        say(
            f"  {who:<5} {order['side']:<4} {order.get('quantity') or '':<6} @ {what:<24}"
            f" -> {placed['status']}"
        )
        return placed

    say("placing orders on BTC-USDT:")
    asks = [
        place(seller, "alice", side="sell", type="limit", price=p, quantity="0.5")
        for p in ("50000", "50010", "50020")
    ]
    place(buyer, "bob", side="buy", type="limit", price="49990", quantity="0.3")
    place(buyer, "bob", side="buy", type="limit", price="50015", quantity="0.8")
    place(buyer, "bob", side="buy", type="market", funds="5000", time_in_force="IOC")
    for ask in asks:
        current = seller.call("GET", f"/v1/orders/{ask['order_id']}")
        if current["status"] in ("OPEN", "PARTIALLY_FILLED"):
            seller.call("DELETE", f"/v1/orders/{ask['order_id']}")
            say(f"  alice cancels the rest of {ask['order_id']}")
    trades = admin.call("GET", "/v1/markets/BTC-USDT/trades?limit=10")["items"]
    say("latest trades:")
    for trade in reversed(trades):
        say(
            f"  #{trade['seq']:<4} {trade['quantity']:>8} BTC @ {trade['price']:>10} USDT"
            f" (taker {trade['taker_side']})"
        )
    depth = admin.call("GET", "/v1/markets/BTC-USDT/depth?levels=5")
    say(f"book at seq {depth['seq']}: bids {depth['bids']} asks {depth['asks']}")
    balances = {
        "alice": seller.call("GET", "/v1/balances"),
        "bob": buyer.call("GET", "/v1/balances"),
    }
    for who, table in balances.items():
        shown = ", ".join(f"{a} {b['available']} (+{b['held']} held)" for a, b in table.items())
        say(f"{who}: {shown}")
    return balances


def main(settings: Settings, argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="crypton demo", description=__doc__)
    parser.add_argument(
        "--url",
        default=f"http://{settings.api_host}:{settings.api_port}",
        help="the API's base URL (default from CRYPTON_API_HOST/PORT)",
    )
    args = parser.parse_args(list(argv))
    try:
        run(settings, args.url)
    except DemoError as exc:
        print(f"crypton: error: {exc}", file=sys.stderr)
        return 2
    return 0
