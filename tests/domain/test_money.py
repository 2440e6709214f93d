"""Exact amounts: parsing and formatting of decimal strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypton.domain.money import MAX_UNITS, AmountError, fee_ceil, mul_div, to_text, to_units


@pytest.mark.parametrize(
    ("text", "precision", "units"),
    [
        ("1", 8, 100_000_000),
        ("1.5", 8, 150_000_000),
        ("0.00000001", 8, 1),
        ("0.10000000000", 8, 10_000_000),  # trailing zeros beyond the precision are exact
        ("007", 0, 7),
        ("9223372036854775807", 0, MAX_UNITS),
    ],
)
def test_to_units_parses_plain_decimals(text: str, precision: int, units: int) -> None:
    assert to_units(text, precision) == units


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.000000001", "more than 8 decimals"),
        ("-1", "negative"),
        ("0", "greater than zero"),
        ("1e3", "not a plain decimal"),
        ("NaN", "not a plain decimal"),
        ("inf", "not a plain decimal"),
        (" 1", "not a plain decimal"),
        ("1_000", "not a plain decimal"),
        ("+1", "not a plain decimal"),
        (".5", "not a plain decimal"),
        ("1.", "not a plain decimal"),
        ("", "not a plain decimal"),
        ("1" * 41, "more than 40 characters"),
        ("92233720368.54775808", "too large"),
    ],
)
def test_to_units_rejects_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(AmountError, match=reason):
        to_units(text, 8)


@pytest.mark.parametrize("text", ["\uff11", "\u0663", "1.\u0665", "\u096710"])
def test_to_units_rejects_non_ascii_digits(text: str) -> None:
    # str.isdigit-style matching would read full-width or Arabic-Indic digits as numbers.
    with pytest.raises(AmountError, match="not a plain decimal"):
        to_units(text, 8)


def test_to_units_rejects_non_strings() -> None:
    with pytest.raises(AmountError, match="decimal string, not float"):
        to_units(1.5, 8)  # type: ignore[arg-type]


def test_zero_is_allowed_only_when_asked() -> None:
    assert to_units("0", 2, allow_zero=True) == 0
    assert to_units("0.00", 2, allow_zero=True) == 0
    assert to_units("-0", 2, allow_zero=True) == 0


@pytest.mark.parametrize(
    ("units", "precision", "text"),
    [(123, 2, "1.23"), (100, 2, "1"), (-5, 3, "-0.005"), (7, 0, "7"), (1, 8, "0.00000001")],
)
def test_to_text(units: int, precision: int, text: str) -> None:
    assert to_text(units, precision) == text


@given(st.integers(1, MAX_UNITS), st.integers(0, 18))
def test_to_text_round_trips(units: int, precision: int) -> None:
    assert to_units(to_text(units, precision), precision) == units


def test_fees_round_up_to_a_whole_unit() -> None:
    assert fee_ceil(0) == 0
    assert fee_ceil(10_000) == 1
    assert fee_ceil(10_001) == 2


@given(
    a=st.integers(-(2**80), 2**80),
    b=st.integers(-(2**80), 2**80),
    d=st.integers(1, 2**70),
)
def test_mul_div_is_the_floor_of_the_product_over_the_divisor(a: int, b: int, d: int) -> None:
    assert mul_div(a, b, d) == a * b // d


@given(
    price=st.integers(1, MAX_UNITS),
    quantity=st.integers(0, MAX_UNITS),
    scale=st.sampled_from([1, 10**2, 10**6, 10**8, 10**18]),
)
def test_mul_div_matches_the_notional_at_every_size(price: int, quantity: int, scale: int) -> None:
    """A price times a quantity, over the base's scale, as ``Market.notional`` takes it:
    the same whether the product fits a machine integer or not."""
    assert mul_div(price, quantity, scale) == price * quantity // scale
