"""``KafkaBases`` on the real broker: a base larger than Kafka's default record limit
goes and comes back whole, a delta's replay reads exactly its key's inbox messages in
the offset range, as the source read them (a batch record's one by one), and a wallet
rebuilt that way is the wallet it was taken of; a base Kafka refuses leaves its wallet
whole."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import ConfigResource, NewTopic

from crypton import schema
from crypton.config import Settings, load_markets
from crypton.domain.messages import Credit, Message, PlaceOrder, Settlement
from crypton.kafka import admin, producer_config, topic_partitions
from crypton.logreader import read_topics
from crypton.topics import BASES, LEGACY_BASES, partition_for
from dataflows import bases as bases_module
from dataflows.bases import LEGACY, KafkaBases, key_needle
from dataflows.exchange import WalletLogic, _Steps
from dataflows.kafka_io import Inbound, _LogPartition, inbox_messages, position
from tests.api.support import wait_for
from tests.dataflows.kafka_support import produce, produce_raw
from tests.domain.support import btc, limit, usdt

pytestmark = pytest.mark.integration

MARKETS = load_markets()


def _inbox(settings: Settings) -> tuple[list[tuple[int, Message]], int]:
    """The wallet inbox as the source reads it: (offset, message), a batch's messages at
    their record's offset, dead letters left out (offsets of different partitions
    mixed: callers keep one user's); and how many records were batches (no key)."""
    topic = schema.WALLET_INBOX.name(settings.topic_prefix)
    out = []
    batches = 0
    for record in read_topics(settings, [topic]):
        try:
            messages = schema.WALLET_INBOX.decode_all(record.value or b"")
        except ValueError:
            continue
        batches += record.key is None
        out += [(record.offset, msg) for msg in messages]
    return out, batches


def _at(mine: list[tuple[int, Message]]) -> list[Inbound]:
    """(offset, message)s at their positions, as the source hands them to a step."""
    return [(position(offset), msg) for offset, msg in mine]


def _settled(user: str, seq: int) -> Settlement:
    return Settlement(user, "BTC-USDT", seq, seq - 1, "", 0, 0, 1, False, 7)


def _same_partition(settings: Settings, key: str, count: int) -> list[str]:
    """``count`` user ids starting with ``key`` that the wallet inbox puts in its partition."""
    topic = schema.WALLET_INBOX.name(settings.topic_prefix)
    partitions = len(topic_partitions(admin(settings), topic))
    home = partition_for(key.encode(), partitions)
    found = (f"{key}{i}" for i in range(10_000))
    return list(
        itertools.islice((k for k in found if partition_for(k.encode(), partitions) == home), count)
    )


def test_a_key_needle_is_the_key_as_json_or_nothing() -> None:
    assert key_needle("user-7.a_b") == b'"user-7.a_b"'
    assert key_needle("BTC-USDT") == b'"BTC-USDT"'
    for spelled_otherwise in ('a"b', "a\\b", "a/b", "caf\u00e9", "a b", "<x>", ""):
        assert key_needle(spelled_otherwise) is None


def test_a_base_round_trips_whole_and_a_delta_replays_its_own_records(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    # What the book step sends a wallet, written by the dataflow's own sink: one batch
    # record (no key) of mm's two settlements.
    settlements = [_settled("mm", seq) for seq in (1, 2)]
    sink = _LogPartition(settings)
    encode = schema.record_encoder(settings.topic_prefix)
    sink.write_batch([[(position(0, i), *encode(m)) for i, m in enumerate(settlements)]])
    # Two more batches in mm's partition: one holds mm among others (the replay must
    # find it there), one holds only others, one of them named mm and more ("mm..."), which
    # the replay may skip without decoding (``key_needle``).
    others = _same_partition(settings, "mm", 2)
    mixed = [_settled(others[0], 1), _settled("mm", 3), _settled(others[1], 1)]
    settlements.append(mixed[1])
    sink.write_batch([[(position(1, i), *encode(m)) for i, m in enumerate(mixed)]])
    not_mine = [_settled(others[0], 2), _settled(others[1], 2)]
    sink.write_batch([[(position(2, i), *encode(m)) for i, m in enumerate(not_mine)]])
    sink.snapshot()
    sink.close()
    produce(settings, commands[250:])

    bases = KafkaBases(settings, inline_bytes=0, rebase_offsets=10**9)
    big = os.urandom(3 * 2**20)  # three times Kafka's default record limit
    where = bases.wait(bases.send("wallet", "probe", big, 3))
    assert bases.get("wallet", "probe", *where, 3) == big

    inbox, batches = _inbox(settings)
    assert batches == 3
    mine = [(o, m) for o, m in inbox if getattr(m, "user_id", None) == "mm"]
    first, last = mine[10][0], mine[-5][0]
    read: list[int] = []  # the offsets of the records the replay decoded

    def reading(record: Any, *args: Any) -> list[Any] | str:
        read.append(record.offset())
        return inbox_messages(record, *args)

    monkeypatch.setattr(bases_module, "inbox_messages", reading)
    replayed = list(bases.since("wallet", "mm", first, last))
    assert replayed == [m for o, m in mine if first < o <= last]
    [mixed_at] = {o for o, m in inbox if m in mixed}
    [not_mine_at] = {o for o, m in inbox if m in not_mine}
    assert mixed_at in read and not_mine_at not in read
    assert [m for m in replayed if not isinstance(m, PlaceOrder)] == settlements
    # One consumer does every read: a read behind the last one gets its own records.
    early, until = mine[2][0], mine[8][0]
    assert list(bases.since("wallet", "mm", early, until)) == [
        m for o, m in mine if early < o <= until
    ]

    # A wallet taken as a delta after 40 messages, rebuilt from Kafka, carries on exactly.
    original = WalletLogic(
        _Steps("wallet", MARKETS, schema.record_routes(), 100, bases=bases).here(), None
    )
    original.on_batch([_at(mine[:40])])
    assert len(original.snapshot()) > 40  # whole while its first base is on its way
    assert original.next_base is not None
    bases.wait(original.next_base[0])  # stored by the next close
    original.on_batch([_at(mine[40:80])])
    later = original.snapshot()
    assert len(later) < 40  # a delta on it
    restored = WalletLogic(
        _Steps("wallet", MARKETS, schema.record_routes(), 100, bases=bases).here(), later
    )
    restored.on_batch([_at(mine[80:81])])
    original.on_batch([_at(mine[80:81])])
    assert restored.machine.snapshot() == original.machine.snapshot()
    bases.close()


def test_a_base_kafka_refuses_leaves_the_wallet_whole_and_the_store_usable(
    settings: Settings,
) -> None:
    """A bases topic that takes records of at most 2,000 bytes refuses a larger wallet's
    base: the snapshot stays whole (and restores), the refusal is counted, and the
    producer goes on storing the bases that fit."""
    topic = schema.topic_name(BASES, settings.topic_prefix)
    client = admin(settings)  # kept: the future dies with its client
    client.create_topics([NewTopic(topic, 1, config={"max.message.bytes": "2000"})])[topic].result(
        30
    )
    commands: list[Message] = [
        Credit(user_id="mm", asset="BTC", amount=btc("50"), transfer_id="g", ts=1),
        *(
            limit("mm", f"o{i}", "sell", usdt("60000") + i * usdt("10"), btc("0.001"), ts=2 + i)
            for i in range(200)
        ),
    ]
    produce(settings, commands)
    inbox, _batches = _inbox(settings)
    mine = [(o, m) for o, m in inbox if getattr(m, "user_id", None) == "mm"]
    assert len(mine) == len(commands)
    bases = KafkaBases(settings, inline_bytes=0)
    steps = _Steps("wallet", MARKETS, schema.record_routes(), 100, bases=bases)
    wallet = WalletLogic(steps.here(), None)
    wallet.on_batch([_at(mine)])
    whole = wallet.snapshot()
    assert not whole.startswith(b"\x96") and len(whole) > 2000  # its base on its way
    assert wallet.next_base is not None
    with pytest.raises(KafkaException):
        bases.wait(wallet.next_base[0])  # refused
    restored = WalletLogic(_Steps("wallet", MARKETS, schema.record_routes(), 100).here(), whole)
    credit = Credit(user_id="mm", asset="USDT", amount=usdt("5"), transfer_id="h", ts=100)
    at = mine[-1][0] + 1
    for logic in (wallet, restored):
        logic.on_batch([[(position(at), credit)]])
    assert restored.machine.snapshot() == wallet.machine.snapshot()
    # The next close sees the refusal, counts it, and stays whole (sending it again).
    again = wallet.snapshot()
    assert not again.startswith(b"\x96") and len(again) > 2000
    assert steps.here().counts.base_failures == 1
    assert wallet.next_base is not None
    with pytest.raises(KafkaException):
        bases.wait(wallet.next_base[0])  # refused again
    small = b"x" * 100
    assert (
        bases.get("wallet", "small", *bases.wait(bases.send("wallet", "small", small, 0)), 0)
        == small
    )
    bases.close()


def test_the_topic_keeps_the_latest_base_of_each_slot_and_a_lost_one_is_never_misread(
    settings: Settings, broker_kind: str
) -> None:
    """The topic of bases is compacted by slot: once the cleaner has run, an older base
    of a slot is gone and asking for it is a LookupError, not the next record (another
    slot's base, or another machine's); the latest of each slot reads back. A delta from
    before the slots reads its base from the old topic."""
    if broker_kind != "kafka":
        pytest.skip("tansu does not compact")
    quick = dataclasses.replace(settings, state_segment_ms=300)  # segments roll at once
    bases = KafkaBases(quick, inline_bytes=0)
    written = {}
    for generation in range(6):  # slots 0, 1, 2, 0, 1, 2 of one wallet; one of a book
        slot = generation % 3
        state = f"wallet mm, base {generation}".encode()
        written[generation] = (slot, state, bases.wait(bases.send("wallet", "mm", state, slot)))
    book = bases.wait(bases.send("book", "BTC-USDT", b"the book", 0))
    topic = ConfigResource(ConfigResource.Type.TOPIC, bases.topic)
    client = admin(quick)  # kept: the future dies with its client
    [described] = client.describe_configs([topic]).values()
    assert described.result(30)["cleanup.policy"].value == "compact"
    time.sleep(1.0)
    # A record after segment.ms closes the segment holding the others: it compacts.
    bases.wait(bases.send("book", "BTC-USDT", b"the book, later", 1))

    def gone(generation: int) -> bool:
        slot, _state, (partition, offset) = written[generation]
        try:
            bases.get("wallet", "mm", partition, offset, slot)
        except LookupError:
            return True
        return False

    wait_for(lambda: all(gone(g) for g in range(3)), timeout=90, interval=1.0)
    for generation in range(3, 6):
        slot, state, (partition, offset) = written[generation]
        assert bases.get("wallet", "mm", partition, offset, slot) == state
    assert bases.get("book", "BTC-USDT", *book, 0) == b"the book"
    with pytest.raises(LookupError):  # the right record, asked for as another machine's
        bases.get("wallet", "other", *book, 0)

    # Before the slots: one topic, never compacted, a base keyed by its machine.
    legacy = schema.topic_name(LEGACY_BASES, settings.topic_prefix)
    client.create_topics([NewTopic(legacy, 1)])[legacy].result(30)
    producer = Producer(producer_config(settings))  # as the dataflow wrote it then
    producer.produce(legacy, key=b"wallet/mm", value=b"an old base")
    assert producer.flush(30) == 0
    assert bases.get("wallet", "mm", 0, 0, LEGACY) == b"an old base"
    bases.close()
