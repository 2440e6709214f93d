"""The read model's view file across restarts of the API: the same answers, the tail
resumed exactly where the last committed batch ended (also after ``kill -9``), retries of
orders and transfers long out of memory still idempotent, unusable files rebuilt."""

from __future__ import annotations

import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from api._view import VIEW_DIR, view_path
from crypton import topics
from crypton.config import Settings
from crypton.domain.messages import Balance, BalanceState, Credit, PlaceOrder, TransferState
from loadtest.bench_api import write_state_log

from .records import state_of
from .support import (
    ADMIN_TOKEN,
    ApiServer,
    StateWriter,
    create_user,
    read_wallet_inbox,
    start_api,
    wait_for,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

ORDER = {"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50000",
         "quantity": "0.001", "client_order_id": "long-ago"}  # fmt: skip
CREDIT = {"asset": "USDT", "amount": "5", "transfer_id": "t-long-ago"}


def _view(settings: Settings) -> Path:
    return view_path(settings.data_dir / VIEW_DIR, settings.topic_prefix)


def _read(server: ApiServer, logical: str) -> float:
    """Records of ``logical`` this run of the API consumed (its metric)."""
    topic = topics.topic_name(logical, server.settings.topic_prefix)
    with server.client() as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("crypton_api_readmodel_records_total{") and f'"{topic}"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def _committed(path: Path, logical: str, prefix: str) -> int:
    """The offsets the view file has committed for ``logical``, summed over partitions."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db, db:
        row = db.execute(
            "SELECT COALESCE(SUM(next), 0) FROM offsets WHERE topic = ?",
            (topics.topic_name(logical, prefix),),
        ).fetchone()
    return int(row[0])


def test_a_restart_answers_from_the_view_and_retries_stay_idempotent(
    settings: Settings, tmp_path: Path, state_writer: StateWriter
) -> None:
    server = start_api(settings, tmp_path / "logs")
    try:
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
            assert alice.client.post("/v1/orders", json=ORDER).status_code == 202
            credit = admin.post("/v1/admin/users/alice/credit", json=CREDIT)
            assert credit.status_code == 202
        commands = [c for _, c in read_wallet_inbox(settings, expect=2)]
        [place] = [c for c in commands if isinstance(c, PlaceOrder)]
        [deposit] = [c for c in commands if isinstance(c, Credit)]
        # Decided long ago: the order filled (out of memory: only open orders are hot).
        state_writer.send(topics.ORDERS, place.order_id, state_of(place, 3, "FILLED"))
        state_writer.send(
            topics.TRANSFERS, "alice/t-long-ago",
            TransferState(user_id="alice", transfer_id=deposit.transfer_id, direction="credit",
                          asset="USDT", amount=deposit.amount, status="ACCEPTED", ts=1),
        )  # fmt: skip
        balance = BalanceState(user_id="alice", version=1, balances={"USDT": Balance(5, 0)}, ts=1)
        state_writer.send(topics.BALANCES, "alice", balance)
        state_writer.flush()
        paths = [f"/v1/orders/{place.order_id}", "/v1/orders/by-client-id/long-ago",
                 "/v1/orders?status=all", "/v1/fills"]  # fmt: skip
        wait_for(lambda: alice.client.get("/v1/balances").json().get("USDT"))
        wait_for(lambda: alice.client.get(paths[0]).json().get("status") == "FILLED")
        before = {path: alice.client.get(path).json() for path in paths}
    finally:
        server.stop()
    # The log moves on while the API is down.
    state_writer.send(topics.BALANCES, "alice", BalanceState(
        user_id="alice", version=2, balances={"USDT": Balance(7, 0)}, ts=2,
    ))  # fmt: skip
    state_writer.flush()
    server = start_api(settings, tmp_path / "logs")
    try:
        client = server.client(alice.api_key)
        # Resumed from the view's offsets: only the record written since was read.
        assert (_read(server, topics.ORDERS), _read(server, topics.BALANCES)) == (0, 1)
        assert _read(server, topics.USERS) == 0  # the key below is served from the view
        assert {path: client.get(path).json() for path in paths} == before
        assert client.get("/v1/balances").json()["USDT"]["available"] == "0.000007"
        # A retry from outside any dedupe window: the same terms answer the order...
        again = client.post("/v1/orders", json=ORDER)
        assert again.status_code == 200 and again.json()["order_id"] == place.order_id
        # ...other terms are a conflict, never a second order.
        other = client.post("/v1/orders", json={**ORDER, "quantity": "0.002"})
        assert (other.status_code, other.json()["code"]) == (409, "order_conflict")
        with server.client(ADMIN_TOKEN) as admin:
            same = admin.post("/v1/admin/users/alice/credit", json=CREDIT)
            assert same.status_code == 200 and same.json()["status"] == "ACCEPTED"
            more = admin.post("/v1/admin/users/alice/credit", json={**CREDIT, "amount": "6"})
            assert (more.status_code, more.json()["code"]) == (409, "transfer_conflict")
        assert len(read_wallet_inbox(settings, expect=3, timeout=2.0)) == 2  # nothing new
        client.close()
    finally:
        alice.close()
        server.stop()


@pytest.mark.slow
def test_a_kill_between_batches_neither_loses_nor_repeats_a_record(
    settings: Settings, tmp_path: Path
) -> None:
    records = 200_000
    write_state_log(settings, records)
    path = _view(settings)
    server = start_api(settings, tmp_path / "logs", wait_ready=False)
    try:

        def partway() -> bool:
            try:
                return _committed(path, topics.ORDERS, settings.topic_prefix) > 0
            except sqlite3.OperationalError:  # not created yet
                return False

        wait_for(partway, timeout=60, interval=0.02)
        server.child.signal(signal.SIGKILL)
        server.child.wait(10)
    finally:
        server.stop()
    committed = _committed(path, topics.ORDERS, settings.topic_prefix)
    assert 0 < committed < records, "killed before or after the build, not in the middle"
    server = start_api(settings, tmp_path / "logs", ready_timeout=120)
    try:
        # Exactly the records after the last committed batch, each once.
        assert _read(server, topics.ORDERS) == records - committed
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db, db:
            (orders, open_orders, latest) = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(open), 0), MIN(version) FROM orders"
            ).fetchone()
            (trades,) = db.execute("SELECT COUNT(*) FROM trades").fetchone()
        assert (orders, open_orders, latest) == (records // 2, 0, 2)
        assert trades == records // 20
    finally:
        server.stop()
    assert _committed(path, topics.ORDERS, settings.topic_prefix) == records


@pytest.mark.parametrize("damage", ["corrupt", "ahead of the log", "another cluster"])
def test_an_unusable_view_is_discarded_and_rebuilt(
    settings: Settings, tmp_path: Path, state_writer: StateWriter, damage: str
) -> None:
    server = start_api(settings, tmp_path / "logs")
    try:
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
        state_writer.send(topics.BALANCES, "alice", BalanceState(
            user_id="alice", version=1, balances={"USDT": Balance(5, 0)}, ts=1,
        ))  # fmt: skip
        state_writer.flush()
        wait_for(lambda: alice.client.get("/v1/balances").json().get("USDT"))
    finally:
        server.stop()
    path = _view(settings)
    if damage == "corrupt":
        with open(path, "r+b") as f:
            f.write(b"\xff" * 4096)
        Path(f"{path}-wal").unlink(missing_ok=True)
    else:
        with closing(sqlite3.connect(path)) as db, db:
            if damage == "ahead of the log":
                db.execute("UPDATE offsets SET next = next + 1000")
            else:
                db.execute("UPDATE meta SET value = 'elsewhere' WHERE key = 'cluster'")
    server = start_api(settings, tmp_path / "logs", wait_ready=False)
    try:
        wait_until_ready(server, 60)
        # Rebuilt from the log: everything read again, the key and the balance back.
        assert (_read(server, topics.USERS), _read(server, topics.BALANCES)) == (1, 1)
        with server.client(alice.api_key) as client:
            assert client.get("/v1/balances").json()["USDT"]["available"] == "0.000005"
        time.sleep(0.2)
        log = server.log_path.read_text()
        assert "unusable" in log or "discarded" in log
    finally:
        alice.close()
        server.stop()
