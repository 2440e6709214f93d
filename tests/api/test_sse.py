"""Server-sent events: resume with Last-Event-ID sees every event exactly once."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent, connect_sse

from crypton import topics
from crypton.config import Settings
from crypton.domain.messages import Balance, BalanceState, DepthState

from .records import order_state, trade
from .support import ApiServer, ApiUser, StateWriter, start_api, wait_for

pytestmark = pytest.mark.integration


class Events:
    """An SSE connection read by a background thread, so a test can wait with a deadline
    (heartbeats would keep a plain read timeout from ever firing)."""

    def __init__(self, events: Iterator[ServerSentEvent]) -> None:
        self._queue: queue.Queue[ServerSentEvent | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(events,), daemon=True)
        self._thread.start()

    def _read(self, events: Iterator[ServerSentEvent]) -> None:
        try:
            for event in events:
                self._queue.put(event)
        except BaseException as exc:  # the connection closed: hand it to the test
            self._queue.put(exc)

    def take(self, n: int, timeout: float = 30.0) -> list[ServerSentEvent]:
        deadline = time.monotonic() + timeout
        out: list[ServerSentEvent] = []
        while len(out) < n:
            try:
                item = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(out)} of {n} events within {timeout}s: {out}"
                ) from None
            if isinstance(item, BaseException):
                raise AssertionError(f"stream ended after {out}") from item
            out.append(item)
        return out

    def next(self) -> ServerSentEvent:
        return self.take(1)[0]

    def next_data(self) -> ServerSentEvent:
        """The next event other than ``live``."""
        while (event := self.next()).event == "live":
            pass
        return event

    def until_live(self) -> list[ServerSentEvent]:
        """The snapshot or replay: every event before ``live``."""
        out = []
        while (event := self.next()).event != "live":
            out.append(event)
        return out


@contextmanager
def stream(
    server: ApiServer, path: str, key: str | None = None, last_id: str | None = None
) -> Iterator[Events]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    with httpx.Client(base_url=server.url, timeout=30) as client:
        source: EventSource
        with connect_sse(client, "GET", path, headers=headers) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            yield Events(source.iter_sse())


def user_event(e: ServerSentEvent) -> tuple[str, str]:
    data = json.loads(e.data)
    if e.event == "order":
        return ("order", f"{data['order_id']}@{data['updated_at']}")
    assert e.event == "balance", e.event
    return ("balance", data["BTC"]["available"])


def test_user_stream_resumes_without_gaps_or_repeats(
    api_server: ApiServer, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    w = state_writer

    def balance(version: int) -> None:
        w.send(
            topics.BALANCES,
            "alice",
            BalanceState(
                user_id="alice",
                version=version,
                balances={"BTC": Balance(version * 10**8, 0)},
                ts=0,
            ),
        )

    seen: list[tuple[str, str]] = []
    with stream(api_server, "/v1/stream/me", alice.api_key) as events:
        assert events.until_live() == []
        for oid in ("o1", "o2", "o3"):
            w.send(topics.ORDERS, oid, order_state(oid, user="alice", version=1))
        w.send(topics.ORDERS, "o1", order_state("o1", user="alice", version=2))
        w.send(topics.ORDERS, "x", order_state("x", user="bob", version=1))  # not alice's
        balance(1)
        w.flush()
        first = events.take(3)
    seen += [user_event(e) for e in first]
    last_id = first[-1].id
    assert last_id
    # While disconnected: new states, a stale replay and a duplicate.
    w.send(topics.ORDERS, "o2", order_state("o2", user="alice", version=2, status="FILLED"))
    w.send(topics.ORDERS, "o1", order_state("o1", user="alice", version=1))
    balance(2)
    balance(2)
    w.flush()
    with stream(api_server, "/v1/stream/me", alice.api_key, last_id) as events:
        seen += [user_event(e) for e in events.until_live()]
        # A sentinel written last must be the very next event: nothing repeats.
        w.send(topics.ORDERS, "o9", order_state("o9", user="alice", version=1))
        w.flush()
        # Records written before the reconnect may still arrive live, after the replay.
        while (event := user_event(events.next_data())) != ("order", "o9@11"):
            seen.append(event)
    expected = {
        ("order", "o1@11"), ("order", "o2@11"), ("order", "o3@11"), ("order", "o1@12"),
        ("balance", "1"), ("order", "o2@12"), ("balance", "2"),
    }  # fmt: skip
    assert sorted(seen) == sorted(expected)


def test_user_stream_starts_with_a_snapshot(
    api_server: ApiServer, new_user: Callable[..., ApiUser], state_writer: StateWriter
) -> None:
    alice = new_user("alice")
    state_writer.send(topics.ORDERS, "open", order_state("open", user="alice"))
    state_writer.send(topics.ORDERS, "done", order_state("done", user="alice", status="CANCELED"))
    state_writer.send(
        topics.BALANCES,
        "alice",
        BalanceState(user_id="alice", version=1, balances={"BTC": Balance(5, 0)}, ts=0),
    )
    state_writer.flush()
    # Each key may sit on its own partition: wait until the API has read all three.
    wait_for(
        lambda: (
            alice.client.get("/v1/orders/open").status_code == 200
            and alice.client.get("/v1/orders/done").status_code == 200
            and "BTC" in alice.client.get("/v1/balances").json()
        )
    )
    with stream(api_server, "/v1/stream/me", alice.api_key) as events:
        got = [(e.event, json.loads(e.data)) for e in events.until_live()]
    assert len(got) == 2
    assert got[0][0] == "balance" and got[0][1]["BTC"]["available"] == "0.00000005"
    assert got[1][0] == "order" and got[1][1]["order_id"] == "open"


def test_market_stream_resumes_without_gaps_or_repeats(
    api_server: ApiServer, state_writer: StateWriter
) -> None:
    w = state_writer
    seen: list[tuple[str, int]] = []

    def depth(seq: int) -> None:
        w.send(
            topics.DEPTH,
            "BTC-USDT",
            DepthState(market="BTC-USDT", seq=seq, bids=[(seq * 10_000, 10_000)], asks=[], ts=0),
        )

    def key(e: ServerSentEvent) -> tuple[str, int]:
        return (e.event, json.loads(e.data)["seq"])

    with stream(api_server, "/v1/stream/markets/BTC-USDT") as events:
        assert events.until_live() == []
        w.send(topics.TRADES, "BTC-USDT", trade(1))
        w.send(topics.TRADES, "BTC-USDT", trade(2))
        w.send(topics.TRADES, "ETH-USDT", trade(1, market="ETH-USDT"))
        depth(5)
        w.flush()
        first = events.take(2)
    seen += [key(e) for e in first]
    last_id = first[-1].id
    w.send(topics.TRADES, "BTC-USDT", trade(2))  # a sink replay
    w.send(topics.TRADES, "BTC-USDT", trade(3))
    depth(6)
    w.flush()
    with stream(api_server, "/v1/stream/markets/BTC-USDT", last_id=last_id) as events:
        # The trades not seen yet, and depth 6 (a snapshot: 5, if missed, is superseded).
        seen += [key(e) for e in events.until_live()]
        w.send(topics.TRADES, "BTC-USDT", trade(4))
        w.flush()
        # Trades and depth come from two topics: depth 6 may arrive live, before or
        # after trade 4, depending on which topic the read model fetched first.
        while ("trade", 4) not in seen or max((s for k, s in seen if k == "depth"), default=0) < 6:
            seen.append(key(events.next_data()))
    trades = [s for kind, s in seen if kind == "trade"]
    assert trades == [1, 2, 3, 4]
    assert max(s for kind, s in seen if kind == "depth") == 6


def test_heartbeats_keep_idle_streams_open(api_server: ApiServer) -> None:
    with (
        httpx.Client(base_url=api_server.url, timeout=10) as client,
        client.stream("GET", "/v1/stream/markets/ETH-BTC") as response,
    ):
        for line in response.iter_lines():
            if line.startswith(":"):
                assert "keep-alive" in line
                break


def test_unknown_market_stream_is_404(api_server: ApiServer) -> None:
    with api_server.client() as client:
        assert client.get("/v1/stream/markets/NOPE").status_code == 404
        assert client.get("/v1/stream/me").status_code == 401


def test_a_stream_resumes_on_another_replica(
    settings: Settings,
    api_server: ApiServer,
    new_user: Callable[..., ApiUser],
    state_writer: StateWriter,
    tmp_path: Path,
) -> None:
    """Replicas share nothing but the log: a key made on one works on the other, and an
    event id from one resumes the stream on the other."""
    other = start_api(settings, tmp_path / "replica")
    try:
        alice = new_user("alice")
        with other.client(alice.api_key) as on_other:
            wait_for(lambda: on_other.get("/v1/balances").status_code == 200)
        w = state_writer
        with stream(api_server, "/v1/stream/me", alice.api_key) as events:
            assert events.until_live() == []
            for oid in ("a", "b"):
                w.send(topics.ORDERS, oid, order_state(oid, user="alice"))
            w.flush()
            first = events.take(1)
        w.send(topics.ORDERS, "c", order_state("c", user="alice"))
        w.flush()
        seen = [user_event(e) for e in first]
        with stream(other, "/v1/stream/me", alice.api_key, first[-1].id) as events:
            w.send(topics.ORDERS, "z", order_state("z", user="alice"))
            w.flush()
            while (event := user_event(events.next_data())) != ("order", "z@11"):
                seen.append(event)
        assert sorted(seen) == [("order", "a@11"), ("order", "b@11"), ("order", "c@11")]
    finally:
        other.stop()
