"""Delta snapshots (``dataflows.bases``): a machine restored from a base plus its inbox
since behaves exactly as the machine it was taken of, whatever else the inbox holds.

The inbox is in memory here (``MemoryBases``); ``tests/dataflows/test_crash.py`` runs
the same through Kafka with every state a delta, crashes included.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypton import schema
from crypton.config import load_markets
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    CancelOrder,
    Credit,
    DeadLetter,
    Message,
)
from dataflows import exchange, kafka_io
from dataflows.bases import DELTA, BaseWrite, MemoryBases, base_key, span_for
from dataflows.exchange import BookLogic, StateUnavailable, WalletLogic, _KeyLogic, _Steps
from dataflows.kafka_io import position
from loadtest.flow_instructions import _Log, _Source
from tests.domain.support import btc, contents, limit, usdt

MARKETS = load_markets()
ROUTES = schema.record_routes()


def _book_inbox() -> list[tuple[int, Message]]:
    """BTC-USDT orders and cancels of four users that trade, with another market's
    messages and undecodable records between them."""
    inbox: list[tuple[int, Message]] = []
    seqs: dict[str, int] = {}
    offset = 0
    for i in range(120):
        user = f"u{i % 4}"
        seqs[user] = seqs.get(user, 0) + 1
        seq = seqs[user]
        msg: Message
        if i % 5 == 4:
            msg = BookCancel("BTC-USDT", user, seq, f"{user}/o{i - 8}", i, seq - 1)
        else:
            side = "buy" if i % 3 else "sell"
            price = usdt("50000") + (i % 7 - 3) * usdt("10")
            cmd = limit(user, f"o{i}", side, price, btc("0.002") * (1 + i % 3), ts=i)
            msg = BookOrder(
                "BTC-USDT", user, seq, cmd, usdt("1000") if side == "buy" else 10**6, seq - 1
            )
        inbox.append((offset, msg))
        offset += 1 + i % 2  # offsets of this market are not contiguous
        if i % 7 == 0:
            other = limit("x", f"e{i}", "buy", usdt("2000"), btc("0.01"), market="ETH-USDT")
            inbox.append((offset, BookOrder("ETH-USDT", "x", i + 1, other, usdt("20"), i)))
            offset += 1
        if i % 11 == 0:
            dead = DeadLetter(topic="book", partition=0, offset=offset, key=b"BTC-USDT",
                              value=b"{", reason="undecodable")  # fmt: skip
            inbox.append((offset, dead))
            offset += 1
    return inbox


def _wallet_inbox() -> list[tuple[int, Message]]:
    """A market maker's commands (credits, orders, cancels) and another user's."""
    inbox: list[tuple[int, Message]] = [
        (0, Credit(user_id="mm", asset="USDT", amount=usdt("10000000"), transfer_id="f", ts=1)),
        (1, Credit(user_id="mm", asset="BTC", amount=btc("100"), transfer_id="g", ts=1)),
    ]
    for i in range(150):
        offset = 2 + 2 * i
        if i % 6 == 5:
            msg: Message = CancelOrder(user_id="mm", order_id=f"mm/o{i - 3}", ts=10 + i)
        else:
            side = "buy" if i % 2 else "sell"
            price = usdt("50000") + (1 if side == "sell" else -1) * (1 + i % 9) * usdt("10")
            msg = limit("mm", f"o{i}", side, price, btc("0.002"), ts=10 + i)
        inbox.append((offset, msg))
        other = Credit(user_id="y", asset="USDT", amount=1, transfer_id=f"t{i}", ts=10 + i)
        inbox.append((offset + 1, other))
    return inbox


def _feed(logic: _KeyLogic, batch: list[tuple[int, Message]]) -> list[Any]:
    """Feed (offset, message)s as the source does: each at its position, one a record."""
    outputs, _retain = logic.on_batch([[(position(o), m) for o, m in batch]])
    return [(topic, key, value) for tagged in outputs for _tag, topic, key, value in tagged]


def _mine(inbox: list[tuple[int, Message]], key: str, step: str) -> list[tuple[int, Message]]:
    spec = schema.WALLET_INBOX if step == "wallet" else schema.BOOK_INBOX
    return [(o, m) for o, m in inbox if type(m) is not DeadLetter and spec.key_of(m) == key]


def _state(logic: _KeyLogic) -> Any:
    """All a machine holds (a book's levels compared by content, not by packed bytes)."""
    machine = logic.machine
    return contents(machine) if type(logic) is BookLogic else machine.snapshot()


def _carries_on(logic: _KeyLogic, snapshot: bytes, bases: MemoryBases | None,
                more: list[tuple[int, Message]]) -> None:  # fmt: skip
    """A new process's logic resumed from ``snapshot`` (its bases in ``bases``) does with
    ``more`` what ``logic`` does, and ends in the same state."""
    restored = type(logic)(_Steps(logic.name, MARKETS, ROUTES, 10_000, bases=bases).here(),
                           snapshot)  # fmt: skip
    assert _feed(restored, more) == _feed(logic, more)
    assert _state(restored) == _state(logic)


CASES = {
    "book": (BookLogic, "BTC-USDT", _book_inbox),
    "wallet": (WalletLogic, "mm", _wallet_inbox),
}


@pytest.mark.parametrize("rebase", [5, 40, 10**6])
@pytest.mark.parametrize("step", ["book", "wallet"])
def test_a_machine_restored_from_any_delta_carries_on_exactly(step: str, rebase: int) -> None:
    logic_type, key, make = CASES[step]
    inbox = make()
    bases = MemoryBases({step: inbox}, inline_bytes=0, rebase_offsets=rebase)
    steps = _Steps(step, MARKETS, ROUTES, 10_000, bases=bases)
    mine = _mine(inbox, key, step)
    batches = [mine[i : i + 3] for i in range(0, len(mine), 3)]  # an epoch every 3 messages
    original = logic_type(steps.here(), None)
    snapshots, outputs = [], []
    for batch in batches:
        outputs.append(_feed(original, batch))
        snapshots.append(original.snapshot())
    assert all(s.startswith(b"\x96") for s in snapshots)  # every one a delta
    if rebase >= 10**6:
        assert len(bases.stored) == 1  # one base, then deltas on it
    else:
        assert len(bases.stored) > (10 if rebase == 5 else 1)
    for k in (0, len(batches) // 3, len(batches) // 2, len(batches) - 2):
        # A restart after the k-th epoch: a new process's logic, the same store.
        restored = logic_type(_Steps(step, MARKETS, ROUTES, 10_000, bases=bases).here(),
                              snapshots[k])  # fmt: skip
        later = [_feed(restored, batch) for batch in batches[k + 1 :]]
        assert later == outputs[k + 1 :]
        assert _state(restored) == _state(original)


def test_a_small_state_stays_whole_and_a_large_one_becomes_a_delta() -> None:
    inbox = _wallet_inbox()
    bases = MemoryBases({"wallet": inbox}, inline_bytes=2_000)
    logic = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases).here(), None)
    mine = _mine(inbox, "mm", "wallet")
    _feed(logic, mine[:2])
    assert not logic.snapshot().startswith(b"\x96")  # two credits: a few hundred bytes
    assert bases.stored == []
    _feed(logic, mine[2:])
    delta = logic.snapshot()
    assert delta.startswith(b"\x96") and DELTA.encode() in delta and len(delta) < 40
    assert len(bases.stored) == 1 and len(bases.stored[0]) > 2_000


def test_a_base_that_cannot_be_read_stops_the_flow_rather_than_lose_messages() -> None:
    """Not a dead letter per message (the key would turn every later message into one):
    the process stops, and its supervisor starts it again from the snapshot."""
    inbox = _wallet_inbox()
    bases = MemoryBases({"wallet": inbox})
    logic = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases).here(), None)
    mine = _mine(inbox, "mm", "wallet")
    _feed(logic, mine[:10])
    delta = logic.snapshot()
    without = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000).here(), delta)
    with pytest.raises(StateUnavailable, match="no store of bases"):
        _feed(without, mine[10:11])
    bases.stored.clear()  # the base is gone
    lost = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases).here(), delta)
    with pytest.raises(StateUnavailable, match="mm"):
        _feed(lost, mine[10:11])


class _SlowBases(MemoryBases):
    """Bases whose writes stay in flight until ``acknowledge`` (or a ``wait``) settles
    them, as Kafka's do; with ``failing`` set, the writes in flight fail instead.
    ``waited`` counts the waits that found a write still in flight (round trips)."""

    def __init__(self, inboxes: dict[str, list[tuple[int, Message]]], **kwargs: Any) -> None:
        super().__init__(inboxes, **kwargs)
        self.in_flight: list[tuple[BaseWrite, int]] = []
        self.waited = 0
        self.failing = False

    def send(self, step: str, key: str, state: bytes, slot: int) -> BaseWrite:
        write = BaseWrite()
        self.in_flight.append((write, self._append(base_key(step, key, slot), state)))
        return write

    def acknowledge(self) -> None:
        for write, offset in self.in_flight:
            if self.failing:
                write.error = RuntimeError("not stored")
            else:
                write.where = (0, offset)
        self.in_flight.clear()

    def poll(self) -> None:
        """Writes settle only when the test says so."""

    def wait(self, write: BaseWrite) -> tuple[int, int]:
        if write.where is None and write.error is None:
            self.waited += 1
            self.acknowledge()
        if write.error is not None:
            raise write.error
        return super().wait(write)


def _delta(snapshot: bytes) -> tuple[Any, ...] | None:
    """The delta a snapshot is (DELTA, base partition, base offset, inbox offset at the
    base, last offset applied, slot), or None if it is whole."""
    return tuple(msgspec.msgpack.decode(snapshot)) if snapshot.startswith(b"\x96") else None


def _maker_on_slow_bases() -> tuple[list[tuple[int, Message]], _SlowBases, _Steps, _KeyLogic]:
    """The market maker's inbox messages, and its wallet on bases Kafka acknowledges
    only when the test says so, every state a delta."""
    inbox = _wallet_inbox()
    bases = _SlowBases({"wallet": inbox}, inline_bytes=0)
    steps = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases)
    return _mine(inbox, "mm", "wallet"), bases, steps, WalletLogic(steps.here(), None)


def test_a_first_base_on_its_way_leaves_the_snapshot_whole_without_a_wait() -> None:
    """A machine's first base is sent at the close and named from a later one, once
    stored: the close snapshots it whole rather than wait a round trip for Kafka."""
    mine, bases, _steps, logic = _maker_on_slow_bases()
    _feed(logic, mine[:4])
    whole = logic.snapshot()
    assert _delta(whole) is None and len(bases.stored) == 1 and bases.waited == 0
    _feed(logic, mine[4:6])
    assert _delta(logic.snapshot()) is None and len(bases.stored) == 1  # still in flight
    bases.acknowledge()
    _feed(logic, mine[6:8])
    assert _delta(logic.snapshot()) == (DELTA, 0, 0, mine[3][0], mine[7][0], 0)
    assert bases.waited == 0
    # Each whole snapshot restores, as any: the first one, fed what came after it.
    restored = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000).here(), whole)
    _feed(restored, mine[4:8])
    assert _state(restored) == _state(logic)


def test_a_close_sends_every_base_due_before_waiting_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``FIRST_WHOLE_BYTES`` of whole snapshots a close waits for the first bases,
    and two machines' cost one round trip, not one each."""
    monkeypatch.setattr(exchange, "FIRST_WHOLE_BYTES", 0)
    inbox = _wallet_inbox()
    bases = _SlowBases({"wallet": inbox}, inline_bytes=0)
    steps = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases)
    maker, other = WalletLogic(steps.here(), None), WalletLogic(steps.here(), None)
    _feed(maker, _mine(inbox, "mm", "wallet")[:4])
    _feed(other, _mine(inbox, "y", "wallet")[:4])
    assert _delta(maker.snapshot()) is not None
    assert len(bases.stored) == 2 and bases.waited == 1  # both sent, then one wait
    assert _delta(other.snapshot()) is not None
    assert bases.waited == 1


def test_a_changed_machine_put_away_sends_its_base_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A machine put away to make room in the epoch that changed it sends its base then
    and is snapshotted at the close, like any other: it never waits for Kafka on its
    own (a round trip per machine put away). Woken again and changed in the same epoch,
    it snapshots its latest state."""
    monkeypatch.setattr(exchange, "FIRST_WHOLE_BYTES", 0)  # a close that must wait, waits
    inbox = _wallet_inbox()
    mine, other = _mine(inbox, "mm", "wallet"), _mine(inbox, "y", "wallet")
    bases = _SlowBases({"wallet": inbox}, inline_bytes=0)
    tight = _Steps("wallet", MARKETS, ROUTES, 1, bases=bases).here()  # one machine decoded
    logic, neighbour = WalletLogic(tight, None), WalletLogic(tight, None)
    reference = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000).here(), None)
    assert _feed(logic, mine[:4]) == _feed(reference, mine[:4])
    _feed(neighbour, other[:1])  # ``logic`` is put away, changed
    assert logic.machine is None and len(bases.stored) == 1 and bases.waited == 0
    bases.acknowledge()
    assert _feed(logic, mine[4:6]) == _feed(reference, mine[4:6])  # woken, changed again
    _feed(neighbour, other[1:2])
    assert logic.machine is None and bases.waited == 0
    snapshot = logic.snapshot()
    assert _delta(snapshot) == (DELTA, 0, 0, mine[3][0], mine[5][0], 0)
    assert bases.waited == 0
    restored = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases).here(),
                           snapshot)  # fmt: skip
    assert _feed(restored, mine[6:8]) == _feed(reference, mine[6:8])
    assert _state(restored) == _state(reference)


def test_the_next_base_is_sent_ahead_and_named_once_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delta that has used half its span sends the next base and names the old one
    until the store has the new one; only a used-up span waits for it."""
    monkeypatch.setattr(exchange, "span_for", lambda size, rebase: rebase)  # a large base
    inbox = _wallet_inbox()
    mine = _mine(inbox, "mm", "wallet")
    at = [offset for offset, _msg in mine]
    bases = _SlowBases({"wallet": inbox}, inline_bytes=0, rebase_offsets=40)
    logic = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases).here(), None)
    _feed(logic, mine[:4])
    assert _delta(logic.snapshot()) is None  # its first base on its way
    bases.acknowledge()
    _feed(logic, mine[4:12])  # 16 offsets past the base: not yet half the span
    assert at[11] - at[3] == 16
    assert _delta(logic.snapshot()) == (DELTA, 0, 0, at[3], at[11], 0) and len(bases.stored) == 1
    _feed(logic, mine[12:16])  # 24 past it, more than half: the next base is sent
    assert _delta(logic.snapshot()) == (DELTA, 0, 0, at[3], at[15], 0) and len(bases.stored) == 2
    _feed(logic, mine[16:18])  # the next base is still in flight; the old one serves
    assert _delta(logic.snapshot()) == (DELTA, 0, 0, at[3], at[17], 0) and len(bases.stored) == 2
    bases.acknowledge()
    _feed(logic, mine[18:20])
    assert _delta(logic.snapshot()) == (DELTA, 0, 1, at[15], at[19], 1)
    assert bases.waited == 0  # none of the above waited
    # A machine fed more than the span in one epoch waits for its next base.
    _feed(logic, mine[20:60])
    assert _delta(logic.snapshot()) == (DELTA, 0, 2, at[59], at[59], 2)
    assert bases.waited == 1
    _carries_on(logic, logic.snapshot(), bases, mine[60:61])  # the last delta rebuilds it


def test_a_small_base_spans_fewer_offsets_than_a_large_one() -> None:
    """A wallet's base of a few hundred bytes is written again after a short span, so
    that a restart replays little of its inbox; the span follows the latest base's size
    (``span_for``), and the last delta still rebuilds the machine."""
    inbox = _wallet_inbox()
    mine = _mine(inbox, "mm", "wallet")
    bases = MemoryBases({"wallet": inbox}, inline_bytes=0, rebase_offsets=2_000)
    steps = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases)
    logic = WalletLogic(steps.here(), None)
    _feed(logic, mine[:4])
    logic.snapshot()
    first = len(bases.stored[0] or b"")
    assert logic.span == span_for(first, 2_000) < 2_000
    fed = 4
    while len(bases.stored) == 1:
        _feed(logic, mine[fed : fed + 1])
        logic.snapshot()
        fed += 1
    # Sent at the first close past half the span, not half of ``rebase_offsets``.
    assert logic.span // 2 < mine[fed - 1][0] - mine[3][0] <= logic.span // 2 + 2
    _carries_on(logic, logic.snapshot(), bases, mine[fed : fed + 1])


def test_a_base_the_store_refused_leaves_the_snapshot_whole_and_is_sent_again() -> None:
    mine, bases, steps, logic = _maker_on_slow_bases()
    _feed(logic, mine[:4])
    whole = logic.snapshot()  # its first base on its way
    assert _delta(whole) is None
    bases.failing = True
    bases.acknowledge()  # refused
    bases.failing = False
    _feed(logic, mine[4:8])
    assert _delta(logic.snapshot()) is None  # the refusal seen: whole, and sent again
    assert steps.here().counts.base_failures == 1
    bases.acknowledge()
    _feed(logic, mine[8:10])
    assert _delta(logic.snapshot()) == (DELTA, 0, 1, mine[7][0], mine[9][0], 0)
    restored = WalletLogic(_Steps("wallet", MARKETS, ROUTES, 10_000).here(), whole)
    _feed(restored, mine[4:10])
    assert _state(restored) == _state(logic)


class _NoReads(MemoryBases):
    """A store of bases that counts what is read back from it."""

    reads = 0

    def get(self, step: str, key: str, partition: int, offset: int, slot: int) -> bytes:
        self.reads += 1
        return super().get(step, key, partition, offset, slot)

    def since(self, step: str, key: str, after: int, through: int) -> Any:
        self.reads += 1
        return super().since(step, key, after, through)


@pytest.mark.parametrize("step", ["book", "wallet"])
def test_a_delta_machine_put_away_wakes_without_reading_its_base(step: str) -> None:
    """A machine whose snapshot is a delta, put away to make room (one machine kept
    decoded per step here), wakes from the whole state it kept, not from Kafka, and
    carries on exactly as a machine never put away; what Bytewax stores stays a delta."""
    logic_type, key, make = CASES[step]
    inbox = make()
    mine = _mine(inbox, key, step)
    other = next(m for m in inbox if type(m[1]) is not DeadLetter and m not in mine)
    bases = _NoReads({step: inbox}, inline_bytes=0)
    tight = _Steps(step, MARKETS, ROUTES, 1, bases=bases).here()  # one machine decoded
    logic, neighbour = logic_type(tight, None), logic_type(tight, None)
    reference = logic_type(_Steps(step, MARKETS, ROUTES, 10_000, bases=MemoryBases(
        {step: inbox}, inline_bytes=0)).here(), None)  # fmt: skip
    thirds = [mine[: len(mine) // 3], mine[len(mine) // 3 : -1], mine[-1:]]
    for part in thirds:
        assert _feed(logic, part) == _feed(reference, part)
        assert _delta(logic.snapshot()) is not None
        _feed(neighbour, [other])  # wakes the neighbour: ``logic`` is put away
        assert logic.machine is None and logic.resident is not None
        assert _delta(logic.snapshot()) is not None  # Bytewax still gets the delta
    assert bases.reads == 0
    _feed(logic, [])  # nothing to wake it
    assert logic.machine is None
    # A restart (a new process) has no resident state: it reads the base, as before.
    restored = logic_type(_Steps(step, MARKETS, ROUTES, 10_000, bases=bases).here(),
                          logic.snapshot())  # fmt: skip
    extra = [(mine[-1][0] + 1000, mine[-1][1])]
    assert _feed(restored, extra) == _feed(reference, extra)
    assert bases.reads == 2 and _state(restored) == _state(reference)


@pytest.mark.parametrize("step", ["book", "wallet"])
@settings(
    max_examples=int(os.environ.get("CRYPTON_PROPERTY_EXAMPLES", "150")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_compaction_never_takes_a_base_a_restart_could_resume_from(
    step: str, data: st.DataObject
) -> None:
    """The topic of bases is compacted: Kafka keeps the latest record of each slot and
    may drop the others at any time. Whatever the schedule (batches, epoch closes,
    machines put away mid-epoch, bases taken while the flow is idle, writes acknowledged
    late, restarts from either of the
    last two snapshots with the crashed run's bases left behind), every snapshot a restart could
    resume from (the key's last two handed to Bytewax) still restores exactly the state
    it was taken of, with the store compacted after every step."""
    logic_type, key, make = CASES[step]
    inbox = make()
    mine = _mine(inbox, key, step)
    other = next(m for m in inbox if type(m[1]) is not DeadLetter and m not in mine)
    rebase = data.draw(st.sampled_from([4, 12, 40]), label="rebase offsets")
    bases = _SlowBases({step: inbox}, inline_bytes=0, rebase_offsets=rebase)

    def start(packed: bytes | None) -> tuple[_KeyLogic, _KeyLogic]:
        tight = _Steps(step, MARKETS, ROUTES, 1, bases=bases).here()  # one decoded
        return logic_type(tight, packed), logic_type(tight, None)

    logic, neighbour = start(None)
    fed = closed = 0  # messages fed, and fed at the last close
    # The snapshots a restart could resume from, latest last: (snapshot, state, fed).
    handed: list[tuple[bytes, Any, int]] = []
    restores = 0
    for _ in range(80):
        action = data.draw(
            st.sampled_from(["feed", "feed", "close", "away", "idle", "ack", "restart"])
        )
        if action == "feed" and fed < len(mine):
            n = data.draw(st.integers(1, 12))
            _feed(logic, mine[fed : fed + n])
            fed = min(fed + n, len(mine))
        elif action == "close" and fed > closed:  # Bytewax snapshots the keys fed since
            packed = logic.snapshot()
            if logic.machine is None:  # put away: wake it (from memory) to see its state
                logic._wake(mine[0][1])
            handed = [*handed[-1:], (packed, _state(logic), fed)]
            closed = fed
        elif action == "away":
            _feed(neighbour, [other])  # wakes the neighbour: ``logic`` is put away
        elif action == "idle":  # the source found nothing to read: one base due, or all
            logic.step.take_bases(data.draw(st.sampled_from([0.0, 60.0])))
        elif action == "ack":
            bases.acknowledge()
        elif action == "restart" and handed:
            # A crash: resume from the latest snapshot, or the one before if the last
            # close was not committed; what came since is fed again, and the bases the
            # crashed run wrote since stay in the topic.
            resumed = handed[-1] if len(handed) == 1 or data.draw(st.booleans()) else handed[0]
            logic, neighbour = start(resumed[0])
            handed, fed = [resumed], resumed[2]
            closed = fed
        bases.compact()
        for packed, state, _fed in handed:
            if _delta(packed) is not None:
                restored = logic_type(_Steps(step, MARKETS, ROUTES, 10_000, bases=bases).here(),
                                      packed)  # fmt: skip
                restored._wake(mine[0][1])
                assert _state(restored) == state
                restores += 1
    assert restores or all(_delta(packed) is None for packed, _state, _fed in handed)


def test_a_base_due_is_taken_while_the_flow_is_idle_and_the_close_only_names_it() -> None:
    """A machine due a base is packed and sent while the flow waits for input
    (``_Step.take_bases``, which the source calls through ``kafka_io.when_idle``), one
    machine at a time: the close then names that base in a delta without packing the
    machine again, and the delta restores the machine exactly."""
    mine, bases, steps, logic = _maker_on_slow_bases()
    other = WalletLogic(steps.here(), None)
    step = steps.here()
    _feed(logic, mine[:4])
    _feed(other, _mine(_wallet_inbox(), "y", "wallet")[:2])
    assert list(step.due) == [logic, other]  # both due their first base
    step.take_bases(0.0)  # a budget spent at once still takes one machine
    assert len(bases.stored) == 1 and list(step.due) == [other]
    step.take_bases(60.0)
    assert len(bases.stored) == 2 and not step.due
    assert step.counts.idle_bases == 2 and step.counts.idle_base_s > 0
    bases.acknowledge()
    _feed(logic, mine[4:6])  # changed since its base: a delta replays it
    assert not step.due  # taken this epoch: not due again before the close
    packed: list[Any] = []
    real = exchange._pack
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exchange, "_pack", lambda state: packed.append(state) or real(state))
        snapshot = logic.snapshot()
    assert _delta(snapshot) == (DELTA, 0, 0, mine[3][0], mine[5][0], 0)
    assert [state[0] for state in packed] == [DELTA]  # the delta alone: no whole state
    assert len(bases.stored) == 2 and bases.waited == 0
    _carries_on(logic, snapshot, bases, mine[6:8])


def test_a_close_leaves_a_half_used_span_to_the_next_idle_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the flow has been idle in an epoch, a close does not pack a machine whose
    delta has used half its span but not all of it: it names the old base, and the next
    idle moment sends the next one. A span used up is still rebased at the close."""
    monkeypatch.setattr(exchange, "span_for", lambda size, rebase: rebase)  # a large base
    inbox = _wallet_inbox()
    mine = _mine(inbox, "mm", "wallet")
    at = [offset for offset, _msg in mine]
    bases = _SlowBases({"wallet": inbox}, inline_bytes=0, rebase_offsets=40)
    step = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases).here()
    logic = WalletLogic(step, None)
    _feed(logic, mine[:4])
    step.take_bases(60.0)  # its first base, while idle
    bases.acknowledge()
    _feed(logic, mine[4:16])  # 24 offsets past the base: more than half the span
    assert at[15] - at[3] == 24
    step.take_bases(60.0)  # idle, but already based this epoch: the close's to decide
    assert len(bases.stored) == 1
    assert _delta(logic.snapshot()) == (DELTA, 0, 0, at[3], at[15], 0)  # deferred
    assert len(bases.stored) == 1 and list(step.due) == [logic]
    step.take_bases(60.0)  # unchanged since the close: nothing to take yet
    assert len(bases.stored) == 1 and not step.due
    _feed(logic, mine[16:18])  # changed: due again, taken at the next idle moment
    assert list(step.due) == [logic]
    step.take_bases(60.0)
    assert len(bases.stored) == 2
    bases.acknowledge()
    assert _delta(logic.snapshot()) == (DELTA, 0, 1, at[17], at[17], 1)
    # A close with no idle moment in its epoch rebases as before.
    _feed(logic, mine[18:30])
    assert at[29] - at[17] > 20
    logic.snapshot()
    assert len(bases.stored) == 3
    _carries_on(logic, logic.snapshot(), bases, mine[30:31])


def test_idle_work_runs_only_while_every_inbox_partition_comes_up_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The source calls ``kafka_io.when_idle``'s work from a poll that found nothing,
    and only when every other partition of the thread found nothing at its last poll:
    a burst never waits for it. After a slice of work the partitions are all polled
    again before the next (``IDLE_BUDGET_S``)."""
    monkeypatch.setattr(kafka_io._idle, "empty", {})
    monkeypatch.setattr(kafka_io._idle, "work", [])
    monkeypatch.setattr(kafka_io._idle, "next_at", 0.0)

    def later() -> None:  # the gap after a slice has passed
        kafka_io._idle.next_at = 0.0

    budgets: list[float] = []

    class Step:
        def take(self, budget: float) -> None:
            budgets.append(budget)

    step = Step()
    kafka_io.when_idle(step.take)
    _topic, key, value = schema.record_encoder()(
        Credit(user_id="u", asset="USDT", amount=1, transfer_id="t", ts=1)
    )
    busy, quiet = _Log(), _Log()
    busy.append(key, value)
    reading = _Source(busy, schema.WALLET_INBOX, kafka_io.WalletBatch)
    waiting = _Source(quiet, schema.WALLET_INBOX, kafka_io.WalletBatch)
    assert waiting.next_batch() == [] and budgets == []  # the other not polled yet
    assert [k for k, _batch in reading.next_batch()] == ["u"]
    assert waiting.next_batch() == [] and budgets == []  # the other had a record
    assert reading.next_batch() == [] and budgets == [kafka_io.IDLE_BUDGET_S]
    assert waiting.next_batch() == [] and len(budgets) == 1  # the gap after a slice
    later()
    assert waiting.next_batch() == [] and len(budgets) == 2
    later()
    busy.append(key, value)
    assert reading.next_batch() != []
    assert waiting.next_batch() == [] and len(budgets) == 2
    # The work is held weakly: a flow's steps go with it, and their work with them.
    reading.next_batch()
    assert len(budgets) == 3
    later()
    del step
    assert waiting.next_batch() == [] and len(budgets) == 3 and kafka_io._idle.work == []


def test_a_book_packs_its_base_ahead_a_slice_per_idle_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the flow is idle, a book due a base packs it a slice of levels per poll
    (``WARM_ORDERS`` resting orders, a level at least) and sends it once every level is
    packed: a command arriving meanwhile waits for one slice, not for the whole book.
    The base restores the book exactly."""
    monkeypatch.setattr(exchange, "WARM_ORDERS", 1)  # one level a slice
    inbox = _book_inbox()
    mine = _mine(inbox, "BTC-USDT", "book")
    bases = _SlowBases({"book": inbox}, inline_bytes=0)
    step = _Steps("book", MARKETS, ROUTES, 10_000, bases=bases).here()
    logic = BookLogic(step, None)
    _feed(logic, mine[:60])
    book = logic.machine.book
    levels = len(book.bids.levels) + len(book.asks.levels)
    assert levels > 3 and list(step.due) == [logic]
    polls = 0
    while not bases.stored:
        step.take_bases(0.0)  # each poll's budget spent by its first slice
        polls += 1
    assert polls == levels and step.counts.idle_bases == 1 and not step.due
    bases.acknowledge()
    _feed(logic, mine[60:70])
    snapshot = logic.snapshot()
    assert _delta(snapshot) == (DELTA, 0, 0, mine[59][0], mine[69][0], 0)
    _carries_on(logic, snapshot, bases, mine[70:])


def test_with_the_epoch_known_bases_are_taken_idle_only_late_in_it() -> None:
    """A base taken early in an epoch would often be used up by the close and taken
    again there: with the epoch's length known, the idle flow takes bases only in its
    last ``IDLE_LEAD``, counted from the step's last close (a close that snapshotted
    none of its keys still counts: epochs close at a steady pace)."""
    inbox = _wallet_inbox()
    bases = _SlowBases({"wallet": inbox}, inline_bytes=0)
    step = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=bases, epoch_s=10.0).here()
    logic = WalletLogic(step, None)
    _feed(logic, _mine(inbox, "mm", "wallet")[:4])
    step.closed_at = time.monotonic() - 1.0  # an epoch closed a second ago
    step.take_bases(60.0)
    assert bases.stored == [] and list(step.due) == [logic] and step.idled
    step.closed_at = time.monotonic() - 28.0  # 8 s into the third epoch since
    step.take_bases(60.0)
    assert len(bases.stored) == 1 and not step.due


def test_the_epoch_length_is_learned_from_the_closes() -> None:
    """The setting gives the epoch's length until two closes measured it: the first gap
    replaces it, and only a shorter gap changes it after (a step none of whose keys
    changed in an epoch skips that close). Without a setting, bases are taken at any
    idle moment, and nothing is learned."""
    step = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=MemoryBases({}), epoch_s=10.0).here()
    step.closed(100.0)
    assert step.epoch_s == 10.0  # the setting, until a gap is measured
    step.closed(101.0)  # run with another ``-s`` than the setting
    assert step.epoch_s == 1.0
    step.closed(104.0)  # two epochs without a change of this step's
    assert step.epoch_s == 1.0 and step.closed_at == 104.0
    free = _Steps("wallet", MARKETS, ROUTES, 10_000, bases=MemoryBases({})).here()
    free.closed(100.0)
    free.closed(101.0)
    assert free.epoch_s is None
