"""Effectively-once delivery: replays dropped, gaps parked until filled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crypton.domain.sequencing import Inbound, Outbound


def test_in_order_messages_are_due_at_once() -> None:
    inbox: Inbound[str] = Inbound()
    assert inbox.accept("a", 1, "a1") == ["a1"]
    assert inbox.accept("a", 2, "a2") == ["a2"]
    assert inbox.accept("b", 1, "b1") == ["b1"]  # origins are independent
    assert inbox.applied == {"a": 2, "b": 1}


def test_replays_are_dropped() -> None:
    inbox: Inbound[str] = Inbound()
    inbox.accept("a", 1, "a1")
    inbox.accept("a", 2, "a2")
    assert inbox.accept("a", 1, "a1") == []
    assert inbox.accept("a", 2, "a2") == []
    assert inbox.accept("a", 0, "zero") == []


def test_gaps_park_until_filled() -> None:
    inbox: Inbound[str] = Inbound()
    assert inbox.accept("a", 3, "a3") == []
    assert inbox.accept("a", 4, "a4") == []
    assert inbox.accept("a", 3, "a3") == []  # a replay of a parked message
    assert inbox.gaps == 2
    assert inbox.accept("a", 1, "a1") == ["a1"]
    assert inbox.accept("a", 2, "a2") == ["a2", "a3", "a4"]
    assert inbox.gaps == 0
    assert inbox.parked == {}


def test_snapshot_is_a_copy() -> None:
    inbox: Inbound[str] = Inbound()
    inbox.accept("a", 1, "a1")
    inbox.accept("a", 3, "a3")
    applied, parked = inbox.snapshot()
    inbox.accept("a", 2, "a2")
    assert applied == {"a": 1}
    assert parked == {"a": {3: "a3"}}
    restored: Inbound[str] = Inbound(applied, parked)
    assert restored.accept("a", 2, "a2") == ["a2", "a3"]


def test_outbound_counts_per_destination() -> None:
    out = Outbound()
    assert [out.next("x"), out.next("x"), out.next("y"), out.next("x")] == [1, 2, 1, 3]


@given(st.permutations(range(1, 30)), st.lists(st.integers(1, 29), max_size=20))
def test_any_delivery_order_with_duplicates_applies_each_once_in_order(
    order: list[int], duplicates: list[int]
) -> None:
    inbox: Inbound[int] = Inbound()
    applied: list[int] = []
    for seq in [*order, *duplicates]:
        applied += inbox.accept("src", seq, seq)
    assert applied == list(range(1, 30))
    assert inbox.gaps == 0
