"""What a hostile but legitimate tester found in the API (issue 11), one test per finding.
Real broker, real uvicorn on loopback; every loop is bounded."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from api.validation import order_id_for
from crypton import codec, signing, topics
from crypton.config import Settings
from crypton.domain.messages import CancelAll, Credit, PlaceOrder, TransferState
from crypton.kafka import consumer_config, producer_config
from crypton.users import UserState, hash_key

from .records import order_state, state_of
from .support import (
    ADMIN_TOKEN,
    ApiServer,
    ApiUser,
    StateWriter,
    create_user,
    read_wallet_inbox,
    start_api,
    wait_for,
)
from .test_sse import stream

pytestmark = pytest.mark.integration


def test_an_empty_or_encoded_order_id_cancels_nothing(
    settings: Settings, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    state_writer.send(topics.ORDERS, "o-1", order_state("o-1", user="alice"))
    state_writer.flush()
    wait_for(lambda: alice.client.get("/v1/orders/o-1").status_code == 200)
    for method, path in [
        ("DELETE", "/v1/orders/"),
        ("DELETE", "/v1/orders//"),
        ("DELETE", "/v1/orders/%2F"),
        ("DELETE", "/v1/orders/%2f"),
        ("DELETE", "/v1/orders"),  # neither market nor all=true
        ("DELETE", "/v1/orders?market=BTC-USDT&all=true"),
        ("GET", "/v1/orders/%2F"),
        ("GET", "/v1/orders/"),
        ("GET", "/v1/orders//o-1"),
    ]:
        response = alice.client.request(method, path)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["code"] == "invalid_request"
    assert read_wallet_inbox(settings, expect=1, timeout=1.0) == []
    # Cancelling everything is its own explicit request.
    everything = alice.client.delete("/v1/orders", params={"all": "true"})
    assert everything.status_code == 202, everything.text
    assert everything.json()["order_ids"] == ["o-1"]
    [(_, command)] = read_wallet_inbox(settings, expect=1)
    assert isinstance(command, CancelAll) and command.market is None


ORDER = {
    "market": "BTC-USDT",
    "side": "buy",
    "type": "limit",
    "price": "50000",
    "quantity": "0.001",
}
JSON = {"content-type": "application/json"}
CREDIT = "/v1/admin/users/alice/credit"
DEBIT = "/v1/admin/users/alice/debit"


def test_deep_nesting_is_a_400_after_authentication_and_bodies_are_capped(
    api_server: ApiServer, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    nested = "[" * 1000 + "]" * 1000
    with api_server.client() as anonymous:
        response = anonymous.post("/v1/orders", content=nested, headers=JSON)
        assert response.status_code == 401, response.text
        huge = anonymous.post("/v1/orders", content=b"[" * 1_000_000, headers=JSON)
        assert huge.status_code == 401
    response = alice.client.post("/v1/orders", content=nested, headers=JSON)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    admin = api_server.client(ADMIN_TOKEN)
    for path in ("/v1/admin/users", "/v1/admin/users/alice/credit"):
        response = admin.post(path, content="{" * 500, headers=JSON)
        assert response.status_code == 400, (path, response.text)
    too_big = {**ORDER, "client_order_id": "c-1", "padding": " " * 3000}
    assert alice.client.post("/v1/orders", json=too_big).status_code == 413
    log = api_server.log_path.read_text()
    assert "Traceback" not in log and "RecursionError" not in log


def test_lenient_bodies_are_refused_with_the_reason(
    api_server: ApiServer, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    admin = api_server.client(ADMIN_TOKEN)
    cases: list[tuple[object, str, str | None]] = [
        ({**ORDER, "client_order_id": "c-1\n"}, "/v1/orders", "client_order_id"),
        ({**ORDER, "post_only": "true"}, "/v1/orders", "post_only"),
        ({**ORDER, "post_only": 1}, "/v1/orders", "post_only"),
        ({**ORDER, "price": "50000\n"}, "/v1/orders", "price"),
        ({"asset": "USDT", "amount": "1", "transfer_id": "t-1\n"}, CREDIT, "transfer_id"),
        ({"asset": "USDT\n", "amount": "1", "transfer_id": "t-1"}, CREDIT, "asset"),
        ({"user_id": "bob\n"}, "/v1/admin/users", "user_id"),
    ]  # fmt: skip
    for body, path, field in cases:
        client = alice.client if path == "/v1/orders" else admin
        response = client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field, (body, response.text)
    # Two markets: the last one used to win.
    twice = b'{"market":"ETH-USDT",' + msgspec.json.encode(ORDER)[1:]
    response = alice.client.post("/v1/orders", content=twice, headers=JSON)
    assert (response.status_code, response.json()["field"]) == (400, "market"), response.text
    body = msgspec.json.encode(ORDER)
    for headers in (
        {"content-type": "text/plain"},
        {},
        {"content-type": "application/x-www-form-urlencoded"},
    ):
        response = alice.client.post("/v1/orders", content=body, headers=headers)
        assert (response.status_code, response.json()["code"]) == (415, "unsupported_media_type")
    response = admin.post(
        "/v1/admin/users/alice/credit",
        content=b'{"asset":"USDT"}',
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 415
    # The strict reading still accepts what it should.
    assert (
        alice.client.post(
            "/v1/orders", content=body, headers={"content-type": "application/json; charset=utf-8"}
        ).status_code
        == 202
    )
    assert admin.post("/v1/admin/users").status_code == 201  # the body is optional there


def _in_thread(call: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Run ``call`` now in a thread; the returned function joins it and gives the answer."""
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()

    def join() -> httpx.Response:
        thread.join(20)
        return out[0]

    return join


def test_a_reused_transfer_id_never_confirms_another_transfer(
    settings: Settings, admin_client: httpx.Client, new_user: Callable[..., ApiUser],
    state_writer: StateWriter,
) -> None:  # fmt: skip
    new_user("alice")
    # Another replica's USDT credit wins the race; this BTC credit waits for the outcome.
    btc = {"asset": "BTC", "amount": "2", "transfer_id": "t-race"}
    waiting = _in_thread(lambda: admin_client.post(CREDIT, params={"wait": "true"}, json=btc))
    [(_, command)] = read_wallet_inbox(settings, expect=1)
    assert isinstance(command, Credit) and command.asset == "BTC"
    state_writer.send(
        topics.TRANSFERS, "alice/t-race",
        TransferState(
            user_id="alice", transfer_id="t-race", direction="credit", asset="USDT",
            amount=1_000_000, status="ACCEPTED", ts=1,
        ),
    )  # fmt: skip
    state_writer.flush()
    response = waiting()
    assert (response.status_code, response.json()["code"]) == (409, "transfer_conflict")
    usdt = {"asset": "USDT", "amount": "1", "transfer_id": "t-race"}
    decided = admin_client.post(CREDIT, json=usdt)
    assert decided.status_code == 200
    assert (decided.json()["asset"], decided.json()["amount"]) == ("USDT", "1")
    # On one replica the second request is refused before it is written.
    first = admin_client.post(CREDIT, json={**usdt, "transfer_id": "t-2"})
    assert first.status_code == 202
    for path, body in [
        (CREDIT, {**btc, "transfer_id": "t-2"}),
        (DEBIT, {**usdt, "transfer_id": "t-2"}),
    ]:
        response = admin_client.post(path, json=body)
        assert (response.status_code, response.json()["code"]) == (409, "transfer_conflict")
    assert admin_client.post(CREDIT, json={**usdt, "transfer_id": "t-2"}).status_code == 202
    assert len(read_wallet_inbox(settings, expect=4, timeout=2.0)) == 3  # not the 409s


def test_a_reused_client_order_id_with_other_terms_is_a_conflict(
    settings: Settings, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    bodies = [{**ORDER, "price": str(50000 + i), "client_order_id": "c-par"} for i in range(10)]
    answers = [_in_thread(lambda b=b: alice.client.post("/v1/orders", json=b)) for b in bodies]
    responses = [join() for join in answers]
    assert sorted(r.status_code for r in responses) == [202] + [409] * 9
    [accepted] = [r.json() for r in responses if r.status_code == 202]
    [(_, command)] = read_wallet_inbox(settings, expect=2, timeout=2.0)
    assert isinstance(command, PlaceOrder) and command.price is not None
    assert accepted["price"] == str(command.price // 1_000_000)  # the terms that were written
    # Once decided: the same terms answer the order, other terms a 409.
    state_writer.send(topics.ORDERS, command.order_id, state_of(command))
    state_writer.flush()
    same = {**ORDER, "price": accepted["price"], "client_order_id": "c-par"}
    wait_for(lambda: alice.client.get(f"/v1/orders/{command.order_id}").status_code == 200)
    assert alice.client.post("/v1/orders", json=same).status_code == 200
    other = alice.client.post("/v1/orders", json={**same, "quantity": "0.002"})
    assert (other.status_code, other.json()["code"]) == (409, "order_conflict")
    # Another replica's request won the race while this one waited.
    body = {**ORDER, "client_order_id": "c-w"}
    waiting = _in_thread(
        lambda: alice.client.post("/v1/orders", params={"wait": "true"}, json=body)
    )
    [_, (_, mine)] = read_wallet_inbox(settings, expect=2)
    assert isinstance(mine, PlaceOrder) and mine.client_order_id == "c-w"
    state_writer.send(topics.ORDERS, mine.order_id, state_of(mine, price=1))
    state_writer.flush()
    response = waiting()
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "order_conflict"


def test_a_made_up_last_event_id_gets_a_resync_and_is_never_echoed(
    api_server: ApiServer, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    long_cursor = ",".join(f"o{p}=1" for p in range(1500))  # ~10 KB, partitions not there
    cases = [
        ("/v1/stream/me", alice.api_key, long_cursor),
        ("/v1/stream/me", alice.api_key, "o999=5"),
        ("/v1/stream/me", alice.api_key, "o0=1,o0=2"),
        ("/v1/stream/me", alice.api_key, "not a cursor"),
        ("/v1/stream/markets/BTC-USDT", None, "x" * 3000),
        ("/v1/stream/markets/BTC-USDT", None, "1:2,3"),
    ]
    for path, key, last_id in cases:
        with stream(api_server, path, key, last_id) as events:
            event = events.next()
            assert event.event == "resync", (path, last_id[:40], event)
            assert event.id == "" and last_id not in event.data


def test_streams_per_user_are_capped(settings: Settings, tmp_path: Path) -> None:
    server = start_api(settings, tmp_path, env={"CRYPTON_SSE_STREAMS_PER_USER": "2"})
    try:
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
        with contextlib.ExitStack() as streams:
            for _ in range(2):
                events = streams.enter_context(stream(server, "/v1/stream/me", alice.api_key))
                assert events.next().event == "live"
            with alice.client.stream("GET", "/v1/stream/me") as third:
                assert third.status_code == 429
                assert msgspec.json.decode(third.read())["code"] == "too_many_streams"

        # Closed streams free their places (the server notices at its next heartbeat).
        def reopened() -> bool:
            with alice.client.stream("GET", "/v1/stream/me") as response:
                return response.status_code == 200

        wait_for(reopened, timeout=10)
        alice.close()
    finally:
        server.stop()


def test_a_connection_that_never_finishes_its_headers_is_closed(
    settings: Settings, tmp_path: Path
) -> None:
    server = start_api(settings, tmp_path, env={"CRYPTON_API_HEADER_TIMEOUT": "1"})
    try:
        host, port = server.url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            started = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server, well before our timeout
            assert time.monotonic() - started < 5
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            assert idle.recv(1024) == b""  # nothing sent at all
        with server.client() as client:  # a normal request is not affected
            assert client.get("/health").status_code == 200
    finally:
        server.stop()


def test_order_ids_do_not_reveal_who_placed_the_order(
    api_server: ApiServer, settings: Settings, new_user: Callable[..., ApiUser]
) -> None:
    alice = new_user("alice")
    placed = alice.client.post("/v1/orders", json={**ORDER, "client_order_id": "c-1"})
    assert placed.status_code == 202
    order_id = placed.json()["order_id"]
    # Anyone could compute the unkeyed id from a guessable client order id.
    namespace = uuid.UUID("5b0f3a52-51c1-4d55-9d8e-0c7a3e6b1f00")
    assert order_id != str(uuid.uuid5(namespace, "alice\x00c-1"))
    secret_file = settings.data_dir / "api-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert order_id == order_id_for(secret_file.read_text().strip().encode(), "alice", "c-1")
    # /ready is public: it says ready, not how many users and orders there are.
    with api_server.client() as anonymous:
        ready = anonymous.get("/ready").json()
    assert ready["status"] == "ready"
    assert not {"users", "orders"} & set(ready.get("detail") or {})


def test_replicas_share_the_secret_from_the_environment(settings: Settings, tmp_path: Path) -> None:
    env = {"CRYPTON_API_SECRET": "a-secret-shared-by-all-replicas"}
    server = start_api(settings, tmp_path, env=env)
    try:
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
        placed = alice.client.post("/v1/orders", json={**ORDER, "client_order_id": "c-1"})
        alice.close()
        assert placed.json()["order_id"] == order_id_for(
            env["CRYPTON_API_SECRET"].encode(), "alice", "c-1"
        )
        assert not (settings.data_dir / "api-secret").exists()
    finally:
        server.stop()


def test_a_state_record_with_invalid_utf8_is_counted_not_fatal(
    api_server: ApiServer, settings: Settings, new_user: Callable[..., ApiUser],
    state_writer: StateWriter,
) -> None:  # fmt: skip
    """Found by tests/test_codec_fuzz.py: msgspec raises UnicodeDecodeError (not its
    DecodeError) for invalid UTF-8 inside a string, which stopped the read model."""
    alice = new_user("alice")
    good = codec.encode(order_state("o-2", user="alice"))
    bad = good.replace(b'"o-2"', b'"o-\xff"', 1)
    producer = Producer(producer_config(settings))
    orders = topics.topic_name(topics.ORDERS, settings.topic_prefix)
    producer.produce(orders, key=b"o-2", value=bad)
    producer.flush(10)
    state_writer.send(topics.ORDERS, "o-2", order_state("o-2", user="alice"))
    state_writer.flush()
    wait_for(lambda: alice.client.get("/v1/orders/o-2").status_code == 200)
    with api_server.client() as client:
        metrics = client.get("/metrics").text
    assert any(
        line.startswith("crypton_api_readmodel_decode_errors_total{") and line.endswith(" 1.0")
        for line in metrics.splitlines()
    ), metrics


def test_with_a_secret_the_api_signs_what_it_writes_and_ignores_forged_users(
    settings: Settings, tmp_path: Path, state_writer: StateWriter
) -> None:
    secret = "a-secret-the-api-and-the-dataflow-share"
    server = start_api(settings, tmp_path, env={signing.ENV: secret})
    try:
        with server.client(ADMIN_TOKEN) as admin:
            alice = create_user(admin, "alice")
            credit = {"asset": "USDT", "amount": "1", "transfer_id": "t-1"}
            assert admin.post(CREDIT, json=credit).status_code == 202
        inbox = topics.topic_name(topics.WALLET_INBOX, settings.topic_prefix)
        consumer = Consumer(consumer_config(settings, **{"group.id": f"t-{uuid.uuid4().hex}"}))
        partitions = consumer.list_topics(inbox, timeout=10).topics[inbox].partitions
        consumer.assign([TopicPartition(inbox, p, OFFSET_BEGINNING) for p in partitions])
        records = []
        for _ in range(50):  # bounded: at most ~10 s
            records += [m for m in consumer.consume(10, 0.2) if m.error() is None]
            if records:
                break
        consumer.close()
        [record] = records
        assert signing.verify(
            secret.encode(), inbox, record.key() or b"", record.value() or b"", record.headers()
        )
        # Anyone who reaches Kafka could replace alice's key; unsigned, it is ignored.
        forged_key = "crk_forged"
        forged = UserState(
            user_id="alice", key_hashes=[hash_key(forged_key)], created_at=1, version=9
        )
        state_writer.send(topics.USERS, "alice", forged)
        state_writer.flush()
        with server.client() as client:
            wait_for(lambda: "crypton_api_readmodel_unsigned_total{" in client.get("/metrics").text)
        with server.client(forged_key) as mallory:
            assert mallory.get("/v1/balances").status_code == 401
        assert alice.client.get("/v1/balances").status_code == 200
        alice.close()
    finally:
        server.stop()
