"""The view store (``crypton.viewstore``): the SQL fold equals the in-memory fold of the
audit (``crypton.views``) on the same records, history pages, unusable files. Pure: no
broker."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypton import schema
from crypton.domain.messages import Balance, BalanceState, DepthState, TransferState
from crypton.readmodel import ReadModel
from crypton.users import UserState
from crypton.views import View
from crypton.viewstore import TABLES, ViewStore, ViewStoreError

from .records import order_state, trade

USERS = ["alice", "bob"]


def _record(kind: str, key: int, version: int, payload: int) -> Any:
    user = USERS[key % 2]
    if kind == "order":
        status = "FILLED" if payload % 3 == 0 else "OPEN"
        return order_state(f"o{key}", version, status, user, created=key, price=payload)
    if kind == "balance":
        return BalanceState(
            user_id=user, version=version, balances={"BTC": Balance(payload, 0)}, ts=0
        )
    if kind == "transfer":
        return TransferState(
            user_id=user, transfer_id=f"t{key}", direction="credit", asset="BTC",
            amount=payload, status="ACCEPTED", ts=version,
        )  # fmt: skip
    if kind == "trade":
        return trade(key, payload, 1, 1_000 * key)
    if kind == "depth":
        return DepthState(market="BTC-USDT", seq=version, bids=[(payload, 1)], asks=[], ts=0)
    return UserState(user_id=user, key_hashes=[f"h{payload}"], created_at=0, version=version)


_records = st.lists(
    st.builds(
        _record,
        st.sampled_from(["order", "balance", "transfer", "trade", "depth", "user"]),
        st.integers(1, 4),
        st.integers(1, 4),
        st.integers(1, 1000),
    ),
    max_size=80,
)


@settings(max_examples=100, deadline=None)
@given(_records, st.integers(1, 5))
def test_the_sql_fold_is_the_fold_of_the_audit(records: list[Any], batch: int) -> None:
    """Same records, same rules (``crypton.schema``): the same state and the same answer
    to "did this record change the view", whatever the batching."""
    view = View()
    expected = [view.apply(r) for r in records]
    store = ViewStore.memory()
    got: list[bool] = []
    for start in range(0, len(records), batch):
        got += store.apply(records[start : start + batch], {("t", 0): start})
    assert got == expected
    for table in TABLES:
        held = view.tables[table.spec.logical]
        stored = {
            (tuple(row[:-1]) if len(table.identity) > 1 else row[0]): table.spec.decode(row[-1])
            for row in store._db.execute(
                f"SELECT {', '.join(table.identity)}, data FROM {table.name}"
            )
        }
        assert stored == held, table.name


def test_replays_change_nothing_and_offsets_ride_with_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "view.sqlite"
    store = ViewStore(path)
    records = [order_state("o1", 1), order_state("o1", 2, "FILLED"), order_state("o1", 1)]
    assert store.apply(records, {("orders", 0): 3}) == [True, True, False]
    with pytest.raises(RuntimeError), store.transaction():
        store._db.execute("INSERT OR REPLACE INTO offsets VALUES ('orders', 0, 99)")
        raise RuntimeError("killed before the commit")
    store.close()
    again = ViewStore(path)
    assert again.offsets() == {("orders", 0): 3}
    state = again.order("o1")
    assert state is not None and (state.version, state.status) == (2, "FILLED")


def test_an_unusable_file_is_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ViewStoreError):
        ViewStore(corrupt)
    other = tmp_path / "other.sqlite"
    ViewStore(other).set_meta("format", "0")
    with pytest.raises(ViewStoreError):
        ViewStore(other)
    ViewStore.discard(corrupt)
    assert not corrupt.exists()
    ViewStore(corrupt).close()  # a fresh, empty view


def test_a_users_whole_history_pages_newest_first() -> None:
    model = ReadModel()
    rng = random.Random(7)
    expected = []
    for i in range(250):
        market = rng.choice(["BTC-USDT", "ETH-USDT"])
        status = rng.choice(["OPEN", "FILLED", "CANCELED"])
        model.apply(order_state(f"o{i:03d}", 1, status, "alice", created=i // 3, market=market))
        expected.append((i // 3, f"o{i:03d}", market, status))
    model.apply(order_state("x", 1, "OPEN", "bob"))
    for open_only in (False, True):
        for market in (None, "ETH-USDT"):
            want = [
                oid
                for _, oid, m, status in sorted(expected, reverse=True)
                if (market is None or m == market) and (not open_only or status == "OPEN")
            ]
            seen: list[str] = []
            cursor = None
            while True:
                page = model.list_orders(
                    "alice", open_only=open_only, market=market, limit=7, cursor=cursor
                )
                seen += [o.order_id for o in page.items]
                if page.next_cursor is None:
                    break
                created, _, oid = page.next_cursor.partition(".")
                cursor = (int(created), oid)
            assert seen == want, (open_only, market)


def test_hot_state_is_reloaded_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "view.sqlite"
    model = ReadModel(ViewStore(path), trade_window=3)
    model.apply_batch(
        [
            order_state("open", 1),
            order_state("done", 2, "FILLED"),
            *[trade(seq) for seq in range(1, 6)],
            DepthState(market="BTC-USDT", seq=9, bids=[(1, 1)], asks=[], ts=0),
        ],
        {("orders", 0): 2},
    )
    model.store.close()
    again = ReadModel(ViewStore(path), trade_window=3).load()
    assert [o.order_id for o in again.open_orders("alice")] == ["open"]
    done = again.order_of("alice", "done")
    assert done is not None and done.status == "FILLED"
    log = again.trade_log("BTC-USDT")
    assert [t.seq for t in log.before(None, 10)] == [5, 4, 3]
    assert log.after(1) is None and [t.seq for t in log.after(4) or []] == [5]
    assert again.depth["BTC-USDT"].seq == 9
    assert sum(c.trades for c in again.candle_list("BTC-USDT", "1w", 10)) == 5
    assert len(again.fills("alice", market=None, limit=100, cursor=None).items) == 5


def test_every_state_topic_has_a_table() -> None:
    folded = {spec.logical for spec in schema.SPECS if isinstance(spec.fold, schema.Upsert)}
    folded |= {spec.logical for spec in schema.SPECS if isinstance(spec.fold, schema.FirstWins)}
    assert {table.spec.logical for table in TABLES} == folded
