"""Exact amounts: integers of an asset's smallest unit inside, decimal strings at the edge.

Nothing in Crypton ever holds money in a float. An amount enters as a decimal
string, is checked digit by digit and becomes an ``int`` of the asset's
smallest unit (satoshi for BTC); it leaves the same way.

>>> to_units("1.5", 8)
150000000
>>> to_text(150000000, 8)
'1.5'
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "BPS",
    "MAX_UNITS",
    "AmountError",
    "fee_ceil",
    "in_range",
    "mul_div",
    "to_text",
    "to_units",
]

# Plain decimal notation only: no exponents, signs other than a leading minus,
# underscores, spaces or "NaN"/"inf", which Python's Decimal would accept. ASCII
# digits only: ``\d`` also matches full-width and other scripts' digits, which
# ``int()`` would happily read as numbers.
_DECIMAL = re.compile(r"(-)?([0-9]+)(?:\.([0-9]+))?")
# Longer strings are refused before any arithmetic: 40 digits already exceed
# every balance the exchange can hold, and this bounds the work per request.
_MAX_CHARS = 40
MAX_UNITS = 2**63 - 1
"""The largest amount we accept: it fits a signed 64-bit column (ksqlDB BIGINT)."""


def in_range(units: int) -> bool:
    """Whether ``0 < units <= MAX_UNITS``: a positive amount the exchange can hold.

    Written as a shift: compiled (``make mypyc``), ``MAX_UNITS`` is one bit too wide
    for a machine integer, and every comparison with it becomes a call.

    >>> in_range(1), in_range(MAX_UNITS), in_range(MAX_UNITS + 1), in_range(0)
    (True, True, False, False)
    """
    return units > 0 and not units >> 63


class AmountError(ValueError):
    """An amount that is not a valid decimal of the asset's precision."""


def to_units(text: object, precision: int, *, allow_zero: bool = False) -> int:
    """Parse a decimal string into an integer of the smallest unit.

    Rejects negatives, more decimals than ``precision``, exponents, NaN and
    infinities, and amounts beyond a signed 64-bit integer, with the reason.

    >>> to_units("0.00000001", 8)
    1
    >>> to_units("0.000000001", 8)
    Traceback (most recent call last):
    ...
    crypton.domain.money.AmountError: '0.000000001' has more than 8 decimals
    """
    if not isinstance(text, str):
        raise AmountError(f"amount must be a decimal string, not {type(text).__name__}")
    if len(text) > _MAX_CHARS:
        raise AmountError(f"amount has more than {_MAX_CHARS} characters")
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise AmountError(f"{text!r} is not a plain decimal number")
    minus, whole, fraction = match.groups()
    fraction = fraction or ""
    if len(fraction) > precision:
        stripped = fraction.rstrip("0")
        if len(stripped) > precision:
            raise AmountError(f"{text!r} has more than {precision} decimals")
        fraction = stripped
    units: int = int(whole) * 10**precision + int(fraction.ljust(precision, "0") or "0")
    if minus and units:
        raise AmountError(f"{text!r} is negative")
    if units == 0 and not allow_zero:
        raise AmountError(f"{text!r} must be greater than zero")
    if units > MAX_UNITS:
        raise AmountError(f"{text!r} is too large")
    return units


def to_text(units: int, precision: int) -> str:
    """Format an integer of the smallest unit as a decimal string, without trailing zeros.

    >>> to_text(123, 2)
    '1.23'
    >>> to_text(-5, 3)
    '-0.005'
    >>> to_text(100, 2)
    '1'
    """
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**precision)
    if precision == 0 or fraction == 0:
        return f"{sign}{whole}"
    digits = str(fraction).rjust(precision, "0").rstrip("0")
    return f"{sign}{whole}.{digits}"


BPS: Final = 10_000
"""Basis points in a whole: fee rates are integers of basis points."""


def fee_ceil(amount_bps: int) -> int:
    """Whole units of a fee given as amount times basis points, rounded up: a fee
    is never rounded in the payer's favour.

    >>> fee_ceil(500_000 * 20)  # 20 bps of 0.5 USDT (500,000 units)
    1000
    >>> fee_ceil(1)
    1
    """
    return -(-amount_bps // BPS)


def mul_div(a: int, b: int, d: int) -> int:
    """``a * b // d`` for ``d`` > 0, exactly, without forming ``a * b``: ``a`` splits into
    ``q * d + r`` and the result is ``q * b + r * b // d`` (``q * b`` is whole, so the
    floor is the same). Compiled (``make mypyc``), a product over 2**62 leaves machine
    integers for Python's big ones, some 800 instructions instead of a few, and a price
    times a quantity in units often is one (50,000 USDT times 1 BTC: 5e10 * 1e8).

    >>> mul_div(50_000_000_000, 100_000_000, 100_000_000)
    50000000000
    >>> mul_div(-7, 3, 2) == -7 * 3 // 2, mul_div(7, -3, 2) == 7 * -3 // 2
    (True, True)
    """
    q = a // d
    return q * b + (a - q * d) * b // d
