"""The audit's checks of the links between the inboxes, without a broker."""

from __future__ import annotations

import pytest

from crypton.audit import _applied_problems, _chain_problems, _Replay, _unanswered_problems
from crypton.config import load_markets
from crypton.domain import wallet
from crypton.domain.idwindow import id_digest
from crypton.domain.matching import BookMachine
from crypton.domain.messages import BookOrder, Credit, PlaceOrder
from crypton.topics import WALLET_INBOX

MARKETS = load_markets()
T0 = 1_700_000_000_000
WINDOW = 600_000


def _order(user: str, ts: int, seq: int, prev: int) -> BookOrder:
    cmd = PlaceOrder(user_id=user, order_id=f"{user}-{seq}", client_order_id=str(seq),
                     market="BTC-USDT", side="buy", type="limit", price=50_000 * 10**6,
                     quantity=10_000, time_in_force="IOC", ts=ts)  # fmt: skip
    return BookOrder(market="BTC-USDT", src=user, seq=seq, order=cmd, hold=10**9, prev=prev)


def test_a_broken_chain_is_a_problem() -> None:
    assert _chain_problems({("M", "u", 1): 0, ("M", "u", 4): 1, ("M", "u", 9): 0}) == []
    assert _chain_problems({("M", "u", 1): 0, ("M", "u", 4): 2}) == [
        "('M', 'u', 4): prev 2, but the message before it on the link is 1"
    ]


def test_a_stale_drop_is_clean_when_a_repeat_and_a_problem_when_a_loss() -> None:
    book = BookMachine(MARKETS.market("BTC-USDT"))
    old = _order("u", T0, 1, 0)
    received = [("BTC-USDT", "u", 1)]
    book.handle(old)
    for i in range(1, 40):
        book.handle(_order(f"x{i}", T0 + i * 60_000, 1, 0))
        received.append(("BTC-USDT", f"x{i}", 1))
    book.handle(old)  # a repeat, stale: nothing lost
    assert book.inbound.stale == 1
    assert _applied_problems({"BTC-USDT": book}, received) == []
    late = _order("u", T0 + 1, 2, 1)  # a new message, but far behind the others
    book.handle(late)
    assert book.inbound.stale == 2
    received.append(("BTC-USDT", "u", 2))
    assert _applied_problems({"BTC-USDT": book}, received) == [
        "BTC-USDT: 41 distinct messages received, 40 applied and 0 waiting (2 stale)"
    ]


@pytest.mark.skipif(wallet.__file__.endswith(".so"), reason="patches the interpreted wallet")
def test_an_order_dropped_as_a_digest_collision_is_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ids that share a digest (``id_digest`` is 64 bits: about 2**-64 a pair, so
    made to collide here): the wallet drops the second silently, as it would a repeat,
    and the audit's "answered" check names it; a true repeat stays clean."""
    first, second = "order-a", "order-b"
    monkeypatch.setattr(wallet, "id_digest", lambda key: id_digest(first if key == second else key))
    assert wallet.id_digest(first) == wallet.id_digest(second)
    replay = _Replay(MARKETS)
    replay.feed(
        WALLET_INBOX,
        Credit(user_id="u", asset="USDT", amount=10**12, transfer_id="t", ts=T0),
        "inbox@0",
    )
    for offset, order_id in enumerate((first, first, second), start=1):
        cmd = PlaceOrder(user_id="u", order_id=order_id, client_order_id=order_id,
                         market="BTC-USDT", side="buy", type="limit", price=50_000 * 10**6,
                         quantity=10_000, ts=T0 + offset)  # fmt: skip
        replay.feed(WALLET_INBOX, cmd, f"inbox@{offset}")
    assert _unanswered_problems(replay.commands, replay.view) == [
        f"('order', '{second}') (inbox@3) has no record and was not refused"
    ]
