"""Assets and markets: the trading rules every order is checked against.

A market ``BASE-QUOTE`` quotes prices in quote units per whole base unit.
Inside, a price is an integer of the quote asset's smallest unit per whole
base unit, and a quantity an integer of the base asset's smallest unit.

>>> registry = parse_markets({
...     "assets": {"BTC": 8, "USDT": 6},
...     "markets": {"BTC-USDT": {"tick": "0.01", "step": "0.0001"}},
... })
>>> registry.market("BTC-USDT").tick
10000
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, final

from crypton.domain.money import AmountError, fee_ceil, mul_div, to_text, to_units

__all__ = ["Asset", "Market", "MarketConfigError", "Markets", "parse_markets"]

_MAX_FEE_BPS = 1000  # 10%: anything above is a typo, not a business model
_MAX_PRECISION = 18


class MarketConfigError(ValueError):
    """The market configuration is invalid; the message names the field."""


@final
class Asset:
    """An asset and its smallest unit. Read-only (``Final``): plain attributes, so that
    the compiled core (``make mypyc``) reads them as fields, not by name.

    >>> Asset("BTC", 8, 10**8) == Asset("BTC", 8, 10**8)
    True
    """

    __slots__ = ("code", "precision", "scale")

    def __init__(self, code: str, precision: int, scale: int) -> None:
        self.code: Final = code
        self.precision: Final = precision
        self.scale: Final = scale
        """Units per whole: ``10 ** precision`` (a field, not a property: the matching
        loop reads it for every fill)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Asset):
            return NotImplemented
        return (self.code, self.precision, self.scale) == (other.code, other.precision, other.scale)

    def __hash__(self) -> int:
        return hash((self.code, self.precision, self.scale))

    def __repr__(self) -> str:
        return f"Asset({self.code!r}, {self.precision}, {self.scale})"


def _scale(precision: int) -> int:
    scale: int = 10**precision  # int ** int is Any to mypy (negative powers)
    return scale


@final
class Market:
    """A market's rules, all amounts as integers of the smallest units. Read-only, like
    ``Asset``, and compared by value."""

    __slots__ = (
        "base",
        "maker_fee_bps",
        "min_notional",
        "min_quantity",
        "quote",
        "step",
        "symbol",
        "taker_fee_bps",
        "tick",
    )

    def __init__(
        self,
        *,
        symbol: str,
        base: Asset,
        quote: Asset,
        tick: int,
        step: int,
        min_quantity: int,
        min_notional: int,
        maker_fee_bps: int,
        taker_fee_bps: int,
    ) -> None:
        self.symbol: Final = symbol
        self.base: Final = base
        self.quote: Final = quote
        self.tick: Final = tick
        """Price increment, in quote units per whole base unit."""
        self.step: Final = step
        """Quantity increment, in base units."""
        self.min_quantity: Final = min_quantity
        self.min_notional: Final = min_notional
        """Smallest order value, in quote units."""
        self.maker_fee_bps: Final = maker_fee_bps
        self.taker_fee_bps: Final = taker_fee_bps

    def _key(self) -> tuple[object, ...]:
        return (
            self.symbol, self.base, self.quote, self.tick, self.step, self.min_quantity,
            self.min_notional, self.maker_fee_bps, self.taker_fee_bps,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Market):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Market({self.symbol!r})"

    def notional(self, price: int, quantity: int) -> int:
        """Exact quote value of ``quantity`` at ``price`` (see ``parse_markets``)."""
        return mul_div(price, quantity, self.base.scale)

    def fee(self, amount: int, bps: int) -> int:
        """A fee of ``bps`` on ``amount``, rounded up to a whole unit."""
        return fee_ceil(amount * bps)

    def price_text(self, price: int) -> str:
        return to_text(price, self.quote.precision)

    def quantity_text(self, quantity: int) -> str:
        return to_text(quantity, self.base.precision)

    def quote_text(self, amount: int) -> str:
        return to_text(amount, self.quote.precision)


class Markets:
    """The registry of assets and markets, read-only after loading."""

    def __init__(self, assets: Mapping[str, Asset], markets: Mapping[str, Market]) -> None:
        self.assets: dict[str, Asset] = dict(sorted(assets.items()))
        self.markets: dict[str, Market] = dict(sorted(markets.items()))
        self.assets_of: dict[str, tuple[str, str]] = {
            symbol: (m.base.code, m.quote.code) for symbol, m in self.markets.items()
        }
        """symbol -> (base asset code, quote asset code), for settlement."""

    def market(self, symbol: str) -> Market:
        """The market ``symbol``; ``KeyError`` if there is none."""
        return self.markets[symbol]

    def get(self, symbol: str) -> Market | None:
        return self.markets.get(symbol)

    def asset(self, code: str) -> Asset:
        return self.assets[code]

    def __iter__(self) -> Any:
        return iter(self.markets.values())

    def __len__(self) -> int:
        return len(self.markets)


def _amount(where: str, raw: object, precision: int, *, allow_zero: bool = False) -> int:
    if not isinstance(raw, str):
        raise MarketConfigError(f'{where}: must be a decimal string such as "0.01", got {raw!r}')
    try:
        return to_units(raw, precision, allow_zero=allow_zero)
    except AmountError as exc:
        raise MarketConfigError(f"{where}: {exc}") from None


def _bps(where: str, raw: object) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= _MAX_FEE_BPS:
        raise MarketConfigError(f"{where}: must be an integer from 0 to {_MAX_FEE_BPS} (bps)")
    return raw


def parse_markets(data: Mapping[str, Any]) -> Markets:
    """Build and validate the registry from parsed TOML (see ``crypton/markets.toml``).

    Every error names the offending field, e.g.
    ``markets.BTC-USDT.tick: '0.001' has more than 6 decimals``.
    """
    raw_assets = data.get("assets")
    if not isinstance(raw_assets, Mapping) or not raw_assets:
        raise MarketConfigError("assets: need a table of asset = decimals")
    assets: dict[str, Asset] = {}
    for code, precision in raw_assets.items():
        if not isinstance(code, str) or not code.isalnum() or not code.isupper():
            raise MarketConfigError(f"assets.{code}: asset codes are upper-case letters/digits")
        if not isinstance(precision, int) or isinstance(precision, bool):
            raise MarketConfigError(f"assets.{code}: decimals must be an integer")
        if not 0 <= precision <= _MAX_PRECISION:
            raise MarketConfigError(f"assets.{code}: decimals must be 0..{_MAX_PRECISION}")
        assets[code] = Asset(code, precision, _scale(precision))

    raw_markets = data.get("markets")
    if not isinstance(raw_markets, Mapping) or not raw_markets:
        raise MarketConfigError("markets: need at least one [markets.BASE-QUOTE] table")
    markets: dict[str, Market] = {}
    for symbol, spec in raw_markets.items():
        where = f"markets.{symbol}"
        if not isinstance(spec, Mapping):
            raise MarketConfigError(f"{where}: must be a table")
        base_code, sep, quote_code = str(symbol).partition("-")
        if not sep or base_code not in assets or quote_code not in assets:
            raise MarketConfigError(f"{where}: name must be BASE-QUOTE of two listed assets")
        if base_code == quote_code:
            raise MarketConfigError(f"{where}: base and quote must differ")
        known = {"tick", "step", "min_quantity", "min_notional", "maker_fee_bps", "taker_fee_bps"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise MarketConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        base, quote = assets[base_code], assets[quote_code]
        tick = _amount(f"{where}.tick", spec.get("tick"), quote.precision)
        step = _amount(f"{where}.step", spec.get("step"), base.precision)
        min_quantity = _amount(
            f"{where}.min_quantity",
            spec.get("min_quantity", to_text(step, base.precision)),
            base.precision,
        )
        min_notional = _amount(
            f"{where}.min_notional",
            spec.get("min_notional", "0"),
            quote.precision,
            allow_zero=True,
        )
        maker = _bps(f"{where}.maker_fee_bps", spec.get("maker_fee_bps", 0))
        taker = _bps(f"{where}.taker_fee_bps", spec.get("taker_fee_bps", 0))
        if maker > taker:
            # The buy hold reserves the taker fee; a larger maker fee could overdraw it.
            raise MarketConfigError(f"{where}: maker_fee_bps must not exceed taker_fee_bps")
        if (tick * step) % base.scale:
            raise MarketConfigError(
                f"{where}: tick x step must be a whole {quote_code} unit so that every "
                "notional is exact; use a coarser tick or step"
            )
        if min_quantity % step:
            raise MarketConfigError(f"{where}.min_quantity: must be a multiple of step")
        markets[symbol] = Market(
            symbol=symbol,
            base=base,
            quote=quote,
            tick=tick,
            step=step,
            min_quantity=min_quantity,
            min_notional=min_notional,
            maker_fee_bps=maker,
            taker_fee_bps=taker,
        )
    return Markets(assets, markets)
