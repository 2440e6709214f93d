"""Effectively-once delivery in bounded memory: repeats dropped, gaps parked until
filled, idle peers forgotten without ever applying a message twice."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crypton.domain.sequencing import DEDUPE_WINDOW_MS as W
from crypton.domain.sequencing import Inbound, Outbound, Recent


def chain(seqs: list[int]) -> list[tuple[int, int]]:
    """(seq, prev) of a sender's messages to one destination numbered ``seqs``."""
    return list(zip(seqs, [0, *seqs[:-1]], strict=True))


def test_in_order_messages_are_due_at_once() -> None:
    inbox: Inbound[str] = Inbound()
    assert inbox.accept("a", 1, 0, "a1") == ["a1"]
    assert inbox.accept("a", 4, 1, "a4") == ["a4"]  # the sender wrote 2, 3 elsewhere
    assert inbox.accept("b", 1, 0, "b1") == ["b1"]  # origins are independent
    assert inbox.applied.current == {"a": 4, "b": 1}


def test_replays_are_dropped() -> None:
    inbox: Inbound[str] = Inbound()
    inbox.accept("a", 1, 0, "a1")
    inbox.accept("a", 2, 1, "a2")
    assert inbox.accept("a", 1, 0, "a1") == []
    assert inbox.accept("a", 2, 1, "a2") == []


def test_gaps_park_until_filled() -> None:
    inbox: Inbound[str] = Inbound()
    assert inbox.accept("a", 3, 2, "a3") == []
    assert inbox.accept("a", 4, 3, "a4") == []
    assert inbox.accept("a", 3, 2, "a3") == []  # a replay of a parked message
    assert inbox.gaps == 2
    assert inbox.accept("a", 1, 0, "a1") == ["a1"]
    assert inbox.accept("a", 2, 1, "a2") == ["a2", "a3", "a4"]
    assert inbox.gaps == 0
    assert inbox.parked == {}


def test_a_sender_that_forgot_starts_a_new_chain() -> None:
    inbox: Inbound[str] = Inbound()
    inbox.accept("a", 5, 0, "a5")
    assert inbox.accept("a", 90, 0, "a90") == ["a90"]  # prev 0: nothing to wait for
    assert inbox.accept("a", 7, 0, "a7") == []  # but an old number is still old


def test_snapshot_is_a_copy() -> None:
    inbox: Inbound[str] = Inbound()
    inbox.accept("a", 1, 0, "a1")
    inbox.accept("a", 3, 2, "a3")
    snapshot = inbox.snapshot()
    inbox.accept("a", 2, 1, "a2")
    assert snapshot == ((0, 0, {"a": 1}, {}), {"a": {2: (3, "a3")}}, 0)
    restored: Inbound[str] = Inbound.restore(snapshot)
    assert restored.accept("a", 2, 1, "a2") == ["a2", "a3"]


def test_outbound_counts_per_sender_and_links_per_destination() -> None:
    out = Outbound()
    links = [(out.link(d), out.count) for d in ("x", "x", "y", "x")]
    assert links == [(0, 1), (1, 2), (0, 3), (2, 4)]


def test_outbound_forgets_idle_destinations() -> None:
    out = Outbound()
    out.link("x")
    for clock in (W, 2 * W):
        out.last.tick(clock)
    assert out.link("x") == 0  # forgotten: a new chain
    assert out.count == 2  # the counter never goes back


def test_recent_keeps_a_key_for_at_least_a_window_after_its_use() -> None:
    seen: Recent[int] = Recent()
    seen.tick(0)
    seen.put("a", 1)
    seen.tick(W)
    assert seen.get("a") == 1  # used again: back in the current generation
    seen.tick(2 * W)
    seen.tick(3 * W - 1)
    assert "a" in seen
    seen.tick(3 * W)
    assert "a" not in seen and len(seen) == 0
    assert seen.horizon == 2 * W  # last used before the generation begun at 2W


def test_a_forgotten_origin_comes_back_and_its_old_messages_are_stale() -> None:
    book: Inbound[str] = Inbound(forgets=True)
    book.tick(0)
    assert book.accept("u", 3, 0, "old", ts=0) == ["old"]
    for clock in (W, 2 * W, 2 * W + 5):
        book.tick(clock)
    assert "u" not in book.applied
    assert book.accept("u", 3, 0, "old", ts=0) == []
    assert book.stale == 1
    assert book.accept("u", 8, 3, "new", ts=2 * W) == ["new"]
    assert book.accept("u", 3, 0, "old", ts=0) == []  # now known again: a repeat
    assert book.stale == 1


def test_an_origin_with_parked_messages_is_never_forgotten() -> None:
    book: Inbound[str] = Inbound(forgets=True)
    book.accept("u", 1, 0, "u1", ts=0)
    book.accept("u", 3, 2, "u3", ts=0)  # waits for 2
    for clock in (W, 2 * W, 3 * W, 4 * W):
        book.tick(clock)
    assert "u" in book.applied
    assert book.accept("u", 2, 1, "u2", ts=0) == ["u2", "u3"]


@given(st.permutations(range(1, 30)), st.lists(st.integers(1, 29), max_size=20))
def test_any_delivery_order_with_duplicates_applies_each_once_in_order(
    order: list[int], duplicates: list[int]
) -> None:
    links = dict(chain(list(range(1, 30))))
    inbox: Inbound[int] = Inbound()
    applied: list[int] = []
    for seq in [*order, *duplicates]:
        applied += inbox.accept("src", seq, links[seq], seq)
    assert applied == list(range(1, 30))
    assert inbox.gaps == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3 * W // 2), st.booleans()),
        min_size=1,
        max_size=120,
    )
)
def test_forgetting_never_applies_a_message_twice(script: list[tuple[int, int, bool]]) -> None:
    """Senders write in order, each message sometimes delivered again later; the
    receiver and the senders forget as the clock runs. Nothing is applied twice, and
    every message is applied when it first arrives."""
    book: Inbound[tuple[str, int]] = Inbound(forgets=True)
    outs = {f"u{i}": Outbound() for i in range(6)}
    clock, sent, applied = 0, [], []
    for who, step, again in script:
        clock += step
        src = f"u{who}"
        out = outs[src]
        out.last.tick(clock)
        prev = out.link("book")
        sent.append((src, out.count, prev, clock))
        for i, (s, seq, p, ts) in enumerate(sent):
            if i == len(sent) - 1 or (again and i % 3 == 0):
                book.tick(max(clock, ts))
                got = book.accept(s, seq, p, (s, seq), ts=ts)
                applied += got
                if i == len(sent) - 1:
                    assert got == [(s, seq)]
    assert len(applied) == len(set(applied))
