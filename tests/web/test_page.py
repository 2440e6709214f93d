"""The live market page in a real browser (Playwright driving Debian's Chromium).

The demo trades first; the page must then show the book, the trades and a candle
(its first market stream is cut and must resume from its cursor), and an order
placed from its form must show up as open, live in the book, and be cancellable.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from crypton.config import Settings
from crypton.process import Child, settings_env
from tests.api.support import ADMIN_TOKEN, ApiServer, ApiUser
from tests.browser import SHOTS, chromium_page
from tests.dataflows.kafka_support import start_dataflow

pytestmark = pytest.mark.integration

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
expect = sync_api.expect


@pytest.fixture
def browser_page() -> Iterator[sync_api.Page]:
    with chromium_page() as page:
        yield page


def _credit(admin: httpx.Client, user: str, asset: str, amount: str) -> None:
    response = admin.post(
        f"/v1/admin/users/{user}/credit?wait=true",
        json={"asset": asset, "amount": amount, "transfer_id": f"web-{asset}"},
    )
    assert response.status_code == 200, response.text


def test_market_page_shows_the_market_and_trades_from_the_form(
    settings: Settings,
    spawn: Callable[..., Child],
    api_server: ApiServer,
    admin_client: httpx.Client,
    new_user: Callable[..., ApiUser],
    browser_page: sync_api.Page,
) -> None:
    start_dataflow(spawn, settings)
    demo = subprocess.run(
        [sys.executable, "-m", "crypton.cli", "demo", "--url", api_server.url],
        env=settings_env(settings) | {"CRYPTON_ADMIN_TOKEN": ADMIN_TOKEN},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    carol = new_user("carol")
    _credit(admin_client, "carol", "BTC", "1")
    _credit(admin_client, "carol", "USDT", "10000")
    # An ask of carol's own, so the book has both sides (the demo's asks were taken or canceled).
    ask = carol.client.post(
        "/v1/orders?wait=true",
        json={"market": "BTC-USDT", "side": "sell", "type": "limit", "price": "51000",
              "quantity": "0.1"},
    )  # fmt: skip
    assert ask.json()["status"] == "OPEN", ask.text

    page = browser_page
    # The first market stream is cut: the page must reconnect, resuming from its cursor.
    cursors: list[str | None] = []

    def cut_the_first(route: sync_api.Route) -> None:
        cursors.append(route.request.headers.get("last-event-id"))
        if len(cursors) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/v1/stream/markets/**", cut_the_first)
    page.goto(f"{api_server.url}/?market=BTC-USDT")
    expect(page.locator("#conn")).to_have_text("live")
    assert len(cursors) == 2 and cursors[0] == cursors[1], cursors
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", cursors[1] or ""), cursors  # trade:depth
    expect(page.locator("#bids tr").first).to_contain_text("49990")
    expect(page.locator("#asks tr").last).to_contain_text("51000")
    expect(page.locator("#spread")).to_contain_text("spread 1010")
    expect(page.locator("#trades tr").first).to_be_visible()
    assert int(page.locator("#chart").get_attribute("data-candles") or 0) >= 1
    expect(page.locator("#chart canvas").first).to_be_visible()
    expect(page.locator("#t-last")).to_contain_text("500")

    # The API key is kept in sessionStorage only.
    page.fill("#api-key", carol.api_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#balances")).to_contain_text("USDT")
    assert page.evaluate("sessionStorage.getItem('crypton.apiKey')") == carol.api_key
    assert page.evaluate("localStorage.length") == 0
    expect(page.locator("#open-orders tr")).to_have_count(1)  # the ask, from the stream

    # A limit buy from the form rests: open in the account, and live in the book.
    page.check("input[name=side][value=buy]")
    page.fill("input[name=price]", "45000")
    page.fill("input[name=quantity]", "0.01")
    page.click("#place")
    expect(page.locator("#order-result")).to_contain_text("OPEN")
    row = page.locator("#open-orders tr", has_text="45000")
    expect(row).to_contain_text("OPEN")
    expect(page.locator("#bids")).to_contain_text("45000")
    expect(page.locator("#balances")).to_contain_text("450")  # held for the buy (plus fee)

    # A post-only buy that would cross is refused, and the page says why.
    page.fill("input[name=price]", "52000")
    page.check("input[name=post_only]")
    page.click("#place")
    expect(page.locator("#order-result.error")).to_contain_text("REJECTED")
    page.uncheck("input[name=post_only]")
    page.screenshot(path=str(SHOTS / "market-page.png"))

    row.locator("button.cancel").click()
    expect(page.locator("#open-orders tr", has_text="45000")).to_have_count(0)
    expect(page.locator("#order-result")).to_contain_text("CANCELED")
    expect(page.locator("#bids")).not_to_contain_text("45000")
