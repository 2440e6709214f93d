"""Market configuration: validation names the field; the packaged defaults load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crypton.config import ConfigError, load_markets
from crypton.domain.markets import MarketConfigError, parse_markets


def config(**market: Any) -> dict[str, Any]:
    spec = {"tick": "0.01", "step": "0.0001", **market}
    return {"assets": {"BTC": 8, "USDT": 6}, "markets": {"BTC-USDT": spec}}


def test_packaged_defaults_load() -> None:
    markets = load_markets()
    assert list(markets.markets) == ["BTC-USDT", "ETH-BTC", "ETH-USDT"]
    btc = markets.market("BTC-USDT")
    assert (btc.base.code, btc.quote.code) == ("BTC", "USDT")
    assert (btc.tick, btc.step, btc.min_quantity) == (10_000, 10_000, 10_000)
    assert btc.min_notional == 5_000_000
    assert (btc.maker_fee_bps, btc.taker_fee_bps) == (10, 20)
    eth_btc = markets.market("ETH-BTC")
    assert (eth_btc.tick, eth_btc.step, eth_btc.min_notional) == (1000, 100_000, 10_000)
    for market in markets:
        assert market.tick * market.step % market.base.scale == 0


def test_defaults_fill_optional_fields() -> None:
    market = parse_markets(config()).market("BTC-USDT")
    assert market.min_quantity == market.step == 10_000
    assert (market.min_notional, market.maker_fee_bps, market.taker_fee_bps) == (0, 0, 0)


def test_market_arithmetic() -> None:
    market = load_markets().market("BTC-USDT")
    assert market.notional(50_000_000000, 10_000) == 5_000_000
    assert market.fee(5_000_000, 20) == 10_000
    assert market.fee(1, 20) == 1  # rounded up: never zero on a non-zero amount
    assert market.fee(0, 20) == 0
    assert market.price_text(50_000_010000) == "50000.01"
    assert market.quantity_text(10_000) == "0.0001"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"markets": {}}, "assets: need a table"),
        ({"assets": {"btc": 8}, "markets": {}}, "assets.btc: asset codes"),
        ({"assets": {"BTC": "8"}, "markets": {}}, "assets.BTC: decimals must be an integer"),
        ({"assets": {"BTC": True}, "markets": {}}, "assets.BTC: decimals must be an integer"),
        ({"assets": {"BTC": 19}, "markets": {}}, r"assets.BTC: decimals must be 0..18"),
        ({"assets": {"BTC": 8}}, "markets: need at least one"),
        ({"assets": {"BTC": 8}, "markets": {"BTC-XYZ": {}}}, "markets.BTC-XYZ: name must be"),
        ({"assets": {"BTC": 8}, "markets": {"BTCUSDT": {}}}, "markets.BTCUSDT: name must be"),
        ({"assets": {"BTC": 8}, "markets": {"BTC-BTC": {}}}, "markets.BTC-BTC: base and quote"),
        ({"assets": {"BTC": 8, "USDT": 6}, "markets": {"BTC-USDT": 1}}, "BTC-USDT: must be a"),
        (config(tick=0.01), r"markets.BTC-USDT.tick: must be a decimal string"),
        (config(tick="0.0000001"), r"markets.BTC-USDT.tick: .* more than 6 decimals"),
        (config(tick="0"), r"markets.BTC-USDT.tick: .* greater than zero"),
        (config(step="-1"), r"markets.BTC-USDT.step: .* negative"),
        (config(step=None), r"markets.BTC-USDT.step: must be a decimal string"),
        (config(min_quantity="0.00015"), r"markets.BTC-USDT.min_quantity: must be a multiple"),
        (config(min_notional="x"), r"markets.BTC-USDT.min_notional: 'x' is not"),
        (config(maker_fee_bps=1001), r"markets.BTC-USDT.maker_fee_bps: must be an integer"),
        (config(taker_fee_bps=-1), r"markets.BTC-USDT.taker_fee_bps: must be an integer"),
        (config(taker_fee_bps=2.5), r"markets.BTC-USDT.taker_fee_bps: must be an integer"),
        (config(maker_fee_bps=30, taker_fee_bps=20), "maker_fee_bps must not exceed"),
        (config(tick="0.000001", step="0.00000001"), r"BTC-USDT: tick x step must be a whole"),
        (config(lot="1"), r"markets.BTC-USDT: unknown field\(s\) lot"),
    ],
)
def test_validation_errors_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(MarketConfigError, match=message):
        parse_markets(data)


def test_load_markets_reports_the_file(tmp_path: Path) -> None:
    path = tmp_path / "markets.toml"
    path.write_text('[assets]\nBTC = 8\nUSDT = 6\n[markets.BTC-USDT]\ntick = "0.01"\n')
    with pytest.raises(ConfigError, match=rf"{path}: markets.BTC-USDT.step: must be"):
        load_markets(path)
    path.write_text("[assets\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_markets(path)
    with pytest.raises(ConfigError, match="cannot read markets file"):
        load_markets(tmp_path / "missing.toml")


def test_load_markets_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "markets.toml"
    path.write_text(
        '[assets]\nBTC = 8\nUSDT = 6\n[markets.BTC-USDT]\ntick = "0.1"\nstep = "0.001"\n'
        'min_notional = "10"\ntaker_fee_bps = 5\n'
    )
    market = load_markets(path).market("BTC-USDT")
    assert (market.tick, market.step, market.min_notional) == (100_000, 100_000, 10_000_000)
    assert (market.maker_fee_bps, market.taker_fee_bps) == (0, 5)
