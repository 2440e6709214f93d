"""``KafkaBases`` on the real broker: a base larger than Kafka's default record limit
goes and comes back whole, a delta's replay reads exactly its key's inbox records in
the offset range, as the source read them, and a wallet rebuilt that way is the wallet
it was taken of."""

from __future__ import annotations

import os

import pytest

from crypton import schema
from crypton.config import Settings, load_markets
from crypton.domain.messages import Credit, Message, PlaceOrder
from crypton.logreader import read_topics
from dataflows.bases import KafkaBases
from dataflows.exchange import WalletLogic, _Steps
from tests.dataflows.kafka_support import produce, produce_raw
from tests.domain.support import btc, limit, usdt

pytestmark = pytest.mark.integration

MARKETS = load_markets()


def _inbox(settings: Settings) -> list[tuple[int, Message]]:
    """The wallet inbox as the source reads it: (offset, message), dead letters left out
    (offsets of different partitions mixed: callers keep one user's)."""
    topic = schema.WALLET_INBOX.name(settings.topic_prefix)
    out = []
    for record in read_topics(settings, [topic]):
        try:
            out.append((record.offset, schema.WALLET_INBOX.decode(record.value or b"")))
        except ValueError:
            continue
    return out


def test_a_base_round_trips_whole_and_a_delta_replays_its_own_records(settings: Settings) -> None:
    commands: list[Message] = [
        Credit(user_id="mm", asset="USDT", amount=usdt("1000000"), transfer_id="f", ts=1),
        Credit(user_id="mm", asset="BTC", amount=btc("50"), transfer_id="g", ts=1),
    ]
    for i in range(300):
        side = "buy" if i % 2 else "sell"
        price = usdt("50000") + (1 if side == "sell" else -1) * (1 + i % 9) * usdt("10")
        commands.append(limit("mm", f"o{i}", side, price, btc("0.002"), ts=10 + i))
        commands.append(Credit(user_id="other", asset="USDT", amount=1, transfer_id=f"t{i}", ts=5))
    produce(settings, commands[:250])
    produce_raw(settings, b"{not json", key=b"mm")  # a dead letter in the middle
    produce(settings, commands[250:])

    bases = KafkaBases(settings, inline_bytes=0, rebase_offsets=10**9)
    big = os.urandom(3 * 2**20)  # three times Kafka's default record limit
    assert bases.get(*bases.put("wallet", "probe", big)) == big

    inbox = _inbox(settings)
    mine = [(o, m) for o, m in inbox if getattr(m, "user_id", None) == "mm"]
    first, last = mine[10][0], mine[-5][0]
    replayed = list(bases.since("wallet", "mm", first, last))
    assert replayed == [m for o, m in mine if first < o <= last]
    assert all(isinstance(m, PlaceOrder) for m in replayed)

    # A wallet taken as a delta after 40 messages, rebuilt from Kafka, carries on exactly.
    original = WalletLogic(
        _Steps("wallet", MARKETS, schema.record_encoder(), 100, bases=bases).here(), None
    )
    original.on_batch([mine[:40]])
    delta = original.snapshot()
    assert len(delta) < 40
    original.on_batch([mine[40:80]])
    later = original.snapshot()
    restored = WalletLogic(
        _Steps("wallet", MARKETS, schema.record_encoder(), 100, bases=bases).here(), later
    )
    restored.on_batch([mine[80:81]])
    original.on_batch([mine[80:81]])
    assert restored.machine.snapshot() == original.machine.snapshot()
