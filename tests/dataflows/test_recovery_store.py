"""The recovery store with settled snapshots (``dataflows.recovery``), through real
Bytewax runs: a commit leaves in ``snaps`` only the epochs not yet committed, and a
store so kept resumes exactly as Bytewax's own store does, crash included, whether its
settled rows are moved back at start or read on demand."""

from __future__ import annotations

import pickle
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from crypton import schema
from crypton.config import load_markets
from crypton.domain.messages import Credit, Debit
from dataflows import recovery
from dataflows.exchange import STATE_STEPS, build_flow

MARKETS = load_markets()
USERS = [f"u{i}" for i in range(300)]


def _items() -> list[Any]:
    """Fund every user, end; then a few transfers and a crash; then more, and end."""
    messages: list[Credit | Debit] = [
        Credit(user_id=user, asset="USDT", amount=10**6, transfer_id="t1", ts=1) for user in USERS
    ]
    items: list[Any] = [(m.user_id, [(i, m)]) for i, m in enumerate(messages)]
    later: list[Credit | Debit] = [
        Credit(user_id="u7", asset="USDT", amount=5, transfer_id="t2", ts=2),
        Debit(user_id="u42", asset="USDT", amount=7, transfer_id="t2", ts=2),
        Credit(user_id="u42", asset="BTC", amount=9, transfer_id="t3", ts=3),
    ]
    last: list[Credit | Debit] = [
        Debit(user_id="u7", asset="USDT", amount=1, transfer_id="t4", ts=4),
        Credit(user_id="u299", asset="USDT", amount=2, transfer_id="t4", ts=4),
    ]
    offset = len(items)
    items.append(TestingSource.EOF())
    items += [(m.user_id, [(offset + i, m)]) for i, m in enumerate(later)]
    items.append(TestingSource.ABORT())
    items += [(m.user_id, [(offset + 10 + i, m)]) for i, m in enumerate(last)]
    return items


def _run(
    store: Path, items: list[Any], *, settle: int | None, on_demand: bool = False
) -> list[Any]:
    settled = None
    if settle is not None:
        # As `dataflows.exchange` does before Bytewax opens it.
        steps = STATE_STEPS if on_demand else ()
        recovery.prepare(store, settle_after=settle, on_demand=steps)
        settled = recovery.SettledSnapshots(store) if on_demand else None
    out: list[Any] = []
    flow = build_flow(MARKETS, TestingSource(items), TestingSink(out), settled=settled)
    # TestingSource.ABORT stops the run as a crash would, without a last snapshot.
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(store)))
    return out


def _balances(outputs: list[Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """Each user's last balances record."""
    last: dict[str, dict[str, tuple[int, int]]] = {}
    for _key, tagged in outputs:
        for _offset, topic, _k, value in tagged:
            if topic.endswith("balances"):
                record = schema.BALANCES.decode(value)
                last[record.user_id] = {
                    asset: (b.available, b.held) for asset, b in record.balances.items()
                }
    return last


def _rows(db: Path, query: str) -> list[Any]:
    with closing(sqlite3.connect(db)) as store, store:
        return list(store.execute(query))


def _latest(db: Path) -> dict[tuple[str, str], bytes | None]:
    """Each key's latest snapshot, in any of the tables of the store (the partition
    ``db`` and the flow's file of settled rows beside it)."""
    tables = {name for (name,) in _rows(db, "SELECT name FROM sqlite_master")}
    rows = [
        row
        for table in ("snaps", recovery.SETTLED_TABLE)
        if table in tables
        for row in _rows(db, f"SELECT step_id, state_key, snap_epoch, ser_change FROM {table}")
    ]
    if (db.parent / recovery.SETTLED_FILE).exists():
        query = "SELECT step_id, state_key, snap_epoch, ser_change FROM settled"
        rows += _rows(db.parent / recovery.SETTLED_FILE, query)
    latest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    for step, key, epoch, change in rows:
        if (step, key) not in latest or latest[step, key][0] < epoch:
            latest[step, key] = (epoch, change)
    return {key: change for key, (_epoch, change) in latest.items()}


@pytest.mark.parametrize("on_demand", [False, True], ids=["moved-back", "on-demand"])
@pytest.mark.parametrize("settle_after", [0, 1])
def test_settled_store_resumes_as_bytewax_own_store(
    tmp_path: Path, settle_after: int, on_demand: bool
) -> None:
    """With ``settle_after`` 0 nearly every wallet is settled after the first run, so the
    later runs' transfers of u7, u42 and u299 start from settled rows: moved back into
    ``snaps`` for Bytewax, or read on demand by the flow."""
    stores = {}
    for name in ("plain", "settled"):
        stores[name] = tmp_path / name
        stores[name].mkdir()
        init_db_dir(stores[name], 1)
    items = _items()
    outputs: dict[str, list[Any]] = {"plain": [], "settled": []}
    for run in range(3):
        for name, store in stores.items():
            settle = settle_after if name == "settled" else None
            outputs[name] += _run(store, items, settle=settle, on_demand=on_demand)
        if run == 0:
            (plain,) = stores["plain"].iterdir()
            (settled,) = stores["settled"].glob("part-*.sqlite3")
            wallets = "SELECT COUNT(*) FROM {} WHERE step_id = 'crypton.wallet'"
            # Bytewax's own store keeps every user's row in `snaps`, which its commit
            # scans; the settled store keeps there only what is newer than the commit.
            assert _rows(plain, wallets.format("snaps"))[0][0] == len(USERS)
            if settle_after == 0:  # (the first run may be one epoch)
                assert _rows(settled, wallets.format("snaps"))[0][0] < 10
                settled_wallets = _rows(settled, wallets.format(recovery.SETTLED_TABLE))
                assert settled_wallets[0][0] > len(USERS) - 10
            (commit,) = _rows(settled, "SELECT commit_epoch FROM commits")[0]
            latest = "SELECT MAX(snap_epoch) FROM snaps GROUP BY step_id, state_key"
            assert all(e > commit - settle_after for (e,) in _rows(settled, latest))

    final = _balances(outputs["settled"])
    assert final == _balances(outputs["plain"])
    assert final["u7"]["USDT"] == (10**6 + 5 - 1, 0)
    assert final["u42"] == {"USDT": (10**6 - 7, 0), "BTC": (9, 0)}
    assert final["u299"]["USDT"] == (10**6 + 2, 0)
    assert len(final) == len(USERS)
    # Every wallet's and book's latest snapshot is the same in both stores. (Not the
    # testing source's position: where its last epoch ended depends on timing.)
    (plain,) = stores["plain"].iterdir()
    (settled,) = stores["settled"].glob("part-*.sqlite3")
    steps = STATE_STEPS
    machines = {k: v for k, v in _latest(settled).items() if k[0] in steps}
    assert len(machines) == len(USERS)
    assert machines == {k: v for k, v in _latest(plain).items() if k[0] in steps}


def test_a_commit_settles_idle_keys_and_prepare_moves_them_back(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 2)
    assert recovery.prepare(tmp_path, settle_after=0) == 0
    db = tmp_path / "part-0.sqlite3"
    with closing(sqlite3.connect(db)) as store, store:
        store.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change)"
            " VALUES ('s', 'a', 1, x'01'), ('s', 'a', 3, x'03'), ('s', 'b', 2, x'02'),"
            " ('s', 'c', 5, x'05')"
        )
        # Bytewax's commit of epoch 4: the trigger settles a@3 and b@2, drops a@1.
        store.execute("INSERT INTO commits (part_index, commit_epoch) VALUES (0, 4)")
    assert _rows(db, "SELECT state_key, snap_epoch FROM snaps") == [("c", 5)]
    settled = f"SELECT state_key, snap_epoch, ser_change FROM {recovery.SETTLED_TABLE}"
    assert sorted(_rows(db, settled)) == [("a", 3, b"\x03"), ("b", 2, b"\x02")]
    assert recovery.prepare(tmp_path, settle_after=2) == 2
    assert recovery.prepare(tmp_path, settle_after=2) == 0
    assert sorted(_rows(db, "SELECT state_key, snap_epoch FROM snaps")) == [
        ("a", 3),
        ("b", 2),
        ("c", 5),
    ]
    assert _rows(db, settled) == []
    # Settling after two epochs: the commit of 4 settles b (last written at 2), not a (3),
    # and the commit of 5 settles a.
    with closing(sqlite3.connect(db)) as store, store:
        store.execute("UPDATE commits SET commit_epoch = 4")
    assert sorted(_rows(db, "SELECT state_key, snap_epoch FROM snaps")) == [("a", 3), ("c", 5)]
    assert _rows(db, settled) == [("b", 2, b"\x02")]
    with closing(sqlite3.connect(db)) as store, store:
        store.execute("UPDATE commits SET commit_epoch = 5")
    assert _rows(db, "SELECT state_key, snap_epoch FROM snaps") == [("c", 5)]
    # b written again at 6 and idle after: the commit of 8 replaces its settled row.
    with closing(sqlite3.connect(db)) as store, store:
        store.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change)"
                      " VALUES ('s', 'b', 6, x'06')")  # fmt: skip
        store.execute("UPDATE commits SET commit_epoch = 8")
    assert sorted(_rows(db, settled)) == [("a", 3, b"\x03"), ("b", 6, b"\x06"), ("c", 5, b"\x05")]
    assert _rows(db, "SELECT state_key FROM snaps") == []


def test_resume_epoch_is_bytewax_own(tmp_path: Path) -> None:
    """The latest execution's resume epoch, raised per worker by its frontiers, lowest
    worker first; None for a store never run."""
    init_db_dir(tmp_path, 2)
    assert recovery.resume_epoch(tmp_path) is None
    part0, part1 = tmp_path / "part-0.sqlite3", tmp_path / "part-1.sqlite3"
    with sqlite3.connect(part0) as store:
        store.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 2, 1)")
        store.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (0, 0, 9)")
    assert recovery.resume_epoch(tmp_path) == 1  # worker 1 wrote no frontier: still at 1
    with sqlite3.connect(part1) as store:
        store.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (0, 1, 7)")
    assert recovery.resume_epoch(tmp_path) == 7
    with sqlite3.connect(part1) as store:  # a later execution, resumed at 7, one worker
        store.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (1, 1, 7)")
    assert recovery.resume_epoch(tmp_path) == 7
    with sqlite3.connect(part0) as store:
        store.execute(
            "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (1, 0, 12)"
        )
    assert recovery.resume_epoch(tmp_path) == 12


def test_on_demand_leaves_settled_rows_and_drops_what_follows_the_resume_epoch(
    tmp_path: Path,
) -> None:
    for name, parts in (("all", 2), ("pod", 2)):
        (tmp_path / name).mkdir()
        init_db_dir(tmp_path / name, parts)
    (tmp_path / "pod" / "part-1.sqlite3").unlink()  # a pod's volume: partition 1 elsewhere
    assert recovery.complete(tmp_path / "all")
    assert not recovery.complete(tmp_path / "pod")
    store = tmp_path / "all"
    db = store / "part-0.sqlite3"
    recovery.prepare(store, settle_after=0)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change)"
            " VALUES ('s', 'a', 1, ?), ('s', 'b', 2, ?), ('s', 'd', 2, NULL)",
            (pickle.dumps(b"a1"), pickle.dumps(b"b2")),
        )
        conn.execute("INSERT INTO commits (part_index, commit_epoch) VALUES (0, 3)")
        # A run resumed at 3 that wrote b at 5 but finished only epoch 4 before a crash.
        conn.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 1, 3)")
        conn.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (0, 0, 5)")
        conn.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change)"
            " VALUES ('s', 'b', 5, ?), ('s', 'c', 4, ?)",
            (pickle.dumps(b"b5"), pickle.dumps(b"c4")),
        )
    assert recovery.prepare(store, settle_after=0, on_demand=["s"]) == 3  # a, b and d
    assert recovery.prepare(store, settle_after=0, on_demand=["s"]) == 0
    # b@5 is from no finished epoch: Bytewax would not resume from it, nor may it later
    # pass for b's latest; c@4 is what Bytewax resumes c from.
    assert sorted(_rows(db, "SELECT state_key, snap_epoch FROM snaps")) == [("c", 4)]
    assert _rows(db, f"SELECT * FROM {recovery.SETTLED_TABLE}") == []
    settled = recovery.SettledSnapshots(store)
    assert (settled.get("s", "a"), settled.get("s", "b")) == (b"a1", b"b2")
    assert settled.get("s", "c") is None  # Bytewax resumes it
    assert settled.get("s", "d") is None  # discarded
    assert settled.get("t", "a") is None


def test_the_positions_of_the_former_inputs_go_to_the_one_input(tmp_path: Path) -> None:
    """A store written when each inbox was an input of its own resumes reading where it
    stood: its input positions become the merged input's partitions."""
    from dataflows.exchange import _FORMER_INPUTS  # noqa: PLC0415 - the flow's own table

    init_db_dir(tmp_path, 1)
    db = tmp_path / "part-0.sqlite3"
    with sqlite3.connect(db) as store:
        store.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES"
            " ('crypton.wallet_inbox', '3', 7, x'01'), ('crypton.book_inbox', '0', 7, x'02'),"
            " ('crypton.wallet', 'u1', 7, x'03')"
        )
    assert recovery.rename_inputs(tmp_path, _FORMER_INPUTS) == 2
    assert recovery.rename_inputs(tmp_path, _FORMER_INPUTS) == 0
    rows = "SELECT step_id, state_key, ser_change FROM snaps ORDER BY ser_change"
    assert _rows(db, rows) == [
        ("crypton.inboxes", "wallet/3", b"\x01"),
        ("crypton.inboxes", "book/0", b"\x02"),
        ("crypton.wallet", "u1", b"\x03"),
    ]
