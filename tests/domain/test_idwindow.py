"""The wallet's window of recent command ids, as digests: same rule as ``Recent``."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from crypton.domain.idwindow import IdWindow, id_digest
from crypton.domain.sequencing import Recent

SPAN = 10

# (clock step, id) pairs: the clock moves on by 0 to 2 spans, then the id is added.
_steps = st.lists(st.tuples(st.integers(0, 2 * SPAN), st.text(max_size=4)), max_size=60)


@given(_steps)
def test_a_window_of_digests_forgets_what_a_recent_set_forgets(
    steps: list[tuple[int, str]],
) -> None:
    """The reference is ``Recent`` with the wallet's use of it before digests (an id
    is added only if not remembered): same members, same swaps, same horizon."""
    window, reference = IdWindow(SPAN), Recent[None](SPAN)
    clock, keys = 0, set()
    for step, key in steps:
        clock += step
        assert window.tick(clock) == reference.tick(clock)
        if key not in reference:
            reference.put(key, None)
        window.add(key)
        keys.add(key)
        assert window.horizon == reference.horizon and window.since == reference.since
        assert len(window) == len(reference)
        assert {k for k in keys if k in window} == {k for k in keys if k in reference}


@given(_steps)
def test_a_window_survives_packing(steps: list[tuple[int, str]]) -> None:
    window, clock = IdWindow(SPAN), 0
    for step, key in steps:
        clock += step
        window.tick(clock)
        window.add(key)
    packed = msgspec.msgpack.encode(window.snapshot())
    shape = tuple[int, int, bytes, bytes]
    restored = IdWindow.restore(msgspec.msgpack.decode(packed, type=shape), SPAN)
    assert restored.snapshot() == window.snapshot()
    assert restored.current == window.current and restored.previous == window.previous
    assert all(key in restored for _, key in steps) == all(key in window for _, key in steps)


def test_a_generation_is_8_bytes_an_id_and_the_previous_is_packed_once() -> None:
    window = IdWindow(SPAN)
    for i in range(100):
        window.add(f"id-{i}")
    window.tick(SPAN)
    window.add("later")
    since, horizon, current, previous = window.snapshot()
    assert (since, horizon) == (SPAN, 0)
    assert (len(current), len(previous)) == (8, 800)
    assert previous[:8] == id_digest("id-0").to_bytes(8, "little")
    # Packed at the swap, not at each snapshot: the same object every time.
    assert window.snapshot()[3] is previous


def test_a_digest_is_stable_and_strings_only_are_members() -> None:
    # Fixed: a digest that changed between versions would forget every window on upgrade.
    assert id_digest("3f1c2b9e-6d2a-8c41-9b7e-0a5d4c3b2a19") == 0x9E2D6D64C1B745DB
    assert id_digest("a") == id_digest("a") != id_digest("b")
    window = IdWindow()
    window.add("a")
    assert "a" in window and 1 not in window and "b" not in window
