"""``crypton demo``: a one-minute scripted trading session against a running exchange.

It talks to the exchange only through its HTTP API with ``crypton.client``, as
any client would:
creates two users, funds them, has them trade on BTC-USDT, cancels what is
left, and prints the trades, the book and the final balances.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import httpx
import msgspec

from crypton.client import ApiError, Client
from crypton.config import Settings
from crypton.wire import OrderView

__all__ = ["main"]

SETTLE_S = 10.0
"""How long the demo waits for its cancels to reach the book's depth and the wallet."""


class DemoError(RuntimeError):
    """The exchange answered something the demo cannot go on from."""


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
    try:
        return _session(settings, base_url, say)
    except ApiError as exc:
        raise DemoError(str(exc)) from None
    except httpx.TransportError as exc:
        raise DemoError(f"cannot reach the API at {base_url}: {exc}") from None


def _session(settings: Settings, base_url: str, say: Any) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    with Client(base_url, _admin_token(settings)) as admin:
        alice = admin.create_user(f"alice-{tag}")
        bob = admin.create_user(f"bob-{tag}")
        say(f"created users {alice.user_id} and {bob.user_id}")
        for user, asset, amount in ((alice, "BTC", "2"), (bob, "USDT", "100000")):
            admin.credit(user.user_id, asset, amount, f"demo-{tag}-{asset}", wait=True)
            say(f"credited {amount} {asset} to {user.user_id}")
        with Client(base_url, alice.api_key) as seller, Client(base_url, bob.api_key) as buyer:
            return _trade(admin, seller, buyer, say)


def _trade(admin: Client, seller: Client, buyer: Client, say: Any) -> dict[str, Any]:
    def place(client: Client, who: str, side: Any, type: Any = "limit", **terms: Any) -> OrderView:
        placed = client.place_order("BTC-USDT", side, type, wait=True, **terms)
        what = terms.get("price") or f"market, funds {terms.get('funds')}"
        say(
            f"  {who:<5} {side:<4} {terms.get('quantity') or '':<6} @ {what:<24} -> {placed.status}"
        )
        return placed

    say("placing orders on BTC-USDT:")
    asks = [
        place(seller, "alice", "sell", price=p, quantity="0.5") for p in ("50000", "50010", "50020")
    ]
    place(buyer, "bob", "buy", price="49990", quantity="0.3")
    place(buyer, "bob", "buy", price="50015", quantity="0.8")
    place(buyer, "bob", "buy", "market", funds="5000", time_in_force="IOC")
    before = admin.depth("BTC-USDT", levels=1).seq
    canceled = 0
    for ask in asks:
        current = seller.order(ask.order_id)
        if current.status in ("OPEN", "PARTIALLY_FILLED"):
            closed = seller.cancel_order(ask.order_id, wait=True)
            say(f"  alice cancels the rest of {ask.order_id} -> {closed.status}")
            canceled += 1
    # A cancel is done when the book closes the order; the book's depth follows on its
    # own topic, and the wallet frees the hold from the book's report a step later. Wait
    # (bounded) for both, so that what is printed next shows the exchange after them.
    settled = _until(
        lambda: (
            admin.depth("BTC-USDT", levels=1).seq >= before + canceled
            and all(Decimal(b.held) == 0 for b in seller.balances().values())
        ),
        SETTLE_S,
    )
    if not settled:
        say(
            f"  (the cancels had not reached the book's depth and alice's wallet in {SETTLE_S:g} s)"
        )
    trades = admin.trades("BTC-USDT", limit=10).items
    say("latest trades:")
    for trade in reversed(trades):
        say(
            f"  #{trade.seq:<4} {trade.quantity:>8} BTC @ {trade.price:>10} USDT"
            f" (taker {trade.taker_side})"
        )
    depth = admin.depth("BTC-USDT", levels=5)
    say(f"book at seq {depth.seq}: bids {depth.bids} asks {depth.asks}")
    balances = {
        "alice": msgspec.to_builtins(seller.balances()),
        "bob": msgspec.to_builtins(buyer.balances()),
    }
    for who, table in balances.items():
        shown = ", ".join(f"{a} {b['available']} (+{b['held']} held)" for a, b in table.items())
        say(f"{who}: {shown}")
    return balances


def _until(done: Callable[[], bool], seconds: float) -> bool:
    """Poll ``done`` until it holds or ``seconds`` pass; say which."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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
