"""Broker faults under load: SIGKILL Kafka while clients trade over HTTP against ``crypton up``.

Each test runs the real exchange (``crypton up``: broker nodes, dataflow and API
under the supervisor), trades through the HTTP API from a few client threads
that retry 503s as told (``Retry-After``, same ids), kills broker nodes with
SIGKILL, lets the supervisor restart them, and ends with:

- no acknowledged command lost: every order and transfer the API answered 2xx
  for has its outcome on the state topics;
- nothing applied twice and every view a fold of the log: ``crypton audit`` CLEAN;
- a clean shutdown afterwards.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import ConfigResource

from crypton import topics
from crypton.config import Settings
from crypton.kafka import admin
from crypton.process import free_port, free_ports, settings_env
from tests.api.support import ADMIN_TOKEN, ApiUser, create_user
from tests.dataflows.kafka_support import state_view, wait_clean_audit
from tests.processes import SNAPSHOT_SECONDS, CryptonUp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 4
PAUSE_S = 0.05  # between two requests of one client: ~20 requests/s each
MAX_REQUESTS = 4_000  # per client, whatever happens
MARKET = "BTC-USDT"


# --- the exchange under test ------------------------------------------------------------


class Exchange(CryptonUp):
    """``crypton up`` with its Kafka nodes, dataflow and API."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def node_pid(self, node: int) -> int:
        """The process id of Kafka node ``node`` (a child of ``crypton up``)."""
        wanted = f"node-{node}/server.properties".encode()
        for pid, cmdline in self.children():
            if wanted in cmdline and b"kafka.Kafka" in cmdline:
                return pid
        raise AssertionError(f"no running Kafka node {node} under crypton up")

    def log(self, name: str) -> str:
        path = self.settings.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def exchange(
    request: pytest.FixtureRequest, broker_kind: str, tmp_path: Path
) -> Iterator[Exchange]:
    """``crypton up`` with ``request.param`` Kafka nodes, ready to trade."""
    if broker_kind != "kafka" or os.environ.get("CRYPTON_TEST_BOOTSTRAP"):
        pytest.skip("broker faults need the embedded Apache Kafka (tansu keeps nothing)")
    nodes: int = request.param
    settings = Settings(
        data_dir=tmp_path / "data",
        nodes=nodes,
        kafka_port=free_ports(2 * nodes),
        api_port=free_port(),
        snapshot_seconds=SNAPSHOT_SECONDS,
    )
    env = settings_env(settings) | {
        "CRYPTON_ADMIN_TOKEN": ADMIN_TOKEN,
        # A request waits at most this long for the broker before its 503.
        "CRYPTON_API_PRODUCE_TIMEOUT": "3",
    }
    out_path = tmp_path / "up.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crypton.cli", "up", "--grace", "15"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[1],
        )
    up = Exchange(settings, proc, out_path)
    try:
        up.wait_output("Ctrl-C stops everything", 150)
        _wait_ready(up.url, 90)
        yield up
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert proc.wait(90) == 0, up.output()
        print(f"crypton up stopped in {time.monotonic() - began:.1f}s")
        assert " stopped (code -9" not in up.output(), "a process needed SIGKILL to stop"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        print(f"crypton up output: {out_path}; logs: {settings.data_dir / 'logs'}")


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=3) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"{url}/ready did not answer 200 within {timeout}s")


# --- clients trading over HTTP -----------------------------------------------------------


@dataclass
class Ledger:
    """What the API acknowledged, and when it said 503."""

    orders: dict[str, str] = field(default_factory=dict)  # order id -> user
    transfers: set[tuple[str, str]] = field(default_factory=set)  # (user, transfer id)
    unavailable: list[float] = field(default_factory=list)  # when each 503 came
    acked: list[float] = field(default_factory=list)  # when each 2xx came
    unexpected: list[str] = field(default_factory=list)
    retry_after: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> str:
        return (
            f"{len(self.orders)} orders and {len(self.transfers)} transfers acknowledged,"
            f" {len(self.unavailable)} answers 503"
        )


class Trader(threading.Thread):
    """One client: places limit orders around 100 and credits itself now and then; a
    503 is retried with the same ids after ``Retry-After``, as a client should."""

    def __init__(self, user: ApiUser, url: str, ledger: Ledger, stop: threading.Event) -> None:
        super().__init__(name=f"trader-{user.user_id}", daemon=True)
        self.user = user
        self.url = url
        self.ledger = ledger
        self.stop_event = stop
        self.rng = random.Random(user.user_id)

    def run(self) -> None:
        with (
            httpx.Client(
                base_url=self.url, timeout=20, headers=self._auth(self.user.api_key)
            ) as me,
            httpx.Client(base_url=self.url, timeout=20, headers=self._auth(ADMIN_TOKEN)) as adm,
        ):
            for n in range(MAX_REQUESTS):
                if self.stop_event.is_set():
                    return
                if n % 10 == 9:
                    transfer_id = f"{self.user.user_id}-t{n}"
                    body = {"asset": "USDT", "amount": "10", "transfer_id": transfer_id}
                    path = f"/v1/admin/users/{self.user.user_id}/credit"
                    if self._send(adm, path, body):
                        with self.ledger.lock:
                            self.ledger.transfers.add((self.user.user_id, transfer_id))
                else:
                    order = {
                        "market": MARKET,
                        "side": self.rng.choice(["buy", "sell"]),
                        "type": "limit",
                        "price": f"{100 + self.rng.randint(-30, 30) / 100:.2f}",
                        "quantity": f"{self.rng.randint(1000, 5000) / 10000:.4f}",
                        "client_order_id": f"c{n}",
                    }
                    answer = self._send(me, "/v1/orders", order)
                    if answer:
                        with self.ledger.lock:
                            self.ledger.orders[answer["order_id"]] = self.user.user_id
                time.sleep(PAUSE_S)

    @staticmethod
    def _auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def _send(self, client: httpx.Client, path: str, body: dict[str, str]) -> dict[str, str] | None:
        """POST until a 2xx (its body) or the end of the test (``None``)."""
        while not self.stop_event.is_set():
            try:
                response = client.post(path, json=body)
            except httpx.TransportError as exc:
                with self.ledger.lock:
                    self.ledger.unexpected.append(f"{path}: {exc!r}")
                time.sleep(0.5)
                continue
            now = time.monotonic()
            if response.status_code in (200, 202):
                with self.ledger.lock:
                    self.ledger.acked.append(now)
                data: dict[str, str] = response.json()
                return data
            if response.status_code == 503:
                retry_after = response.headers.get("Retry-After", "missing")
                with self.ledger.lock:
                    self.ledger.unavailable.append(now)
                    self.ledger.retry_after[retry_after] += 1
                time.sleep(float(retry_after) if retry_after.isdigit() else 1.0)
                continue
            with self.ledger.lock:
                self.ledger.unexpected.append(f"{path}: {response.status_code} {response.text}")
            return None
        return None


@dataclass
class Load:
    ledger: Ledger
    stop: threading.Event
    traders: list[Trader]

    def finish(self) -> None:
        self.stop.set()
        for trader in self.traders:
            trader.join(30)
            assert not trader.is_alive(), f"{trader.name} hangs"


def start_load(url: str) -> Load:
    """Create and fund the users, then start one trading thread per user."""
    ledger, stop = Ledger(), threading.Event()
    traders = []
    with httpx.Client(base_url=url, timeout=20, headers=Trader._auth(ADMIN_TOKEN)) as adm:
        for n in range(USERS):
            user = create_user(adm, f"trader{n}")
            for asset, amount in (("USDT", "1000000"), ("BTC", "10000")):
                transfer_id = f"fund-{asset}"
                response = adm.post(
                    f"/v1/admin/users/{user.user_id}/credit?wait=true",
                    json={"asset": asset, "amount": amount, "transfer_id": transfer_id},
                )
                assert response.status_code in (200, 202), response.text
                ledger.transfers.add((user.user_id, transfer_id))
            user.close()
            traders.append(Trader(user, url, ledger, stop))
    for trader in traders:
        trader.start()
    return Load(ledger, stop, traders)


# --- the checks every test ends with -----------------------------------------------------


def wait_acknowledged_settled(settings: Settings, ledger: Ledger, timeout: float) -> None:
    """Every acknowledged order has left NEW on the state topics, every acknowledged
    transfer is decided: no acknowledged command was lost."""
    deadline = time.monotonic() + timeout
    while True:
        view = state_view(settings)
        orders = [
            o for o in ledger.orders if o not in view.orders or view.orders[o].status == "NEW"
        ]
        transfers = [t for t in ledger.transfers if t not in view.transfers]
        if not orders and not transfers:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"acknowledged but without their outcome after {timeout}s:"
                f" {len(orders)} orders (e.g. {orders[:3]}), {len(transfers)} transfers"
                f" (e.g. {transfers[:3]})"
            )
        time.sleep(1)


def check_log(exchange: Exchange, ledger: Ledger) -> None:
    assert not ledger.unexpected, ledger.unexpected[:5]
    assert set(ledger.retry_after) <= {"1"}, ledger.retry_after  # every 503 says when to retry
    wait_acknowledged_settled(exchange.settings, ledger, 180)
    report = wait_clean_audit(exchange.settings, 90)
    assert report.clean, "\n".join(report.lines)
    audit = subprocess.run(
        [sys.executable, "-m", "crypton.cli", "audit"],
        env=settings_env(exchange.settings), capture_output=True, text=True, timeout=180,
        check=False, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert audit.returncode == 0 and "verdict: CLEAN" in audit.stdout, audit.stdout + audit.stderr
    dataflow_log = exchange.log("dataflow")
    assert "SystemError" not in dataflow_log, dataflow_log[-3000:]
    # The flow prepared its recovery store at each start (``dataflows.recovery``).
    parts = sorted((exchange.settings.data_dir / "recovery").glob("part-*.sqlite3"))
    assert parts
    for part in parts:
        with closing(sqlite3.connect(part)) as store:
            triggers = {n for (n,) in store.execute("SELECT name FROM sqlite_master")}
        assert {"crypton_settle_on_commit", "crypton_settle_on_recommit"} <= triggers, part
    print(f"{ledger.summary()}; audit: {audit.stdout.splitlines()[0]}")


def outage(ledger: Ledger, killed_at: float, until: float) -> str:
    """How the API answered between a kill and ``until``: 503s, and when writes came back."""
    with ledger.lock:
        refused = [t for t in ledger.unavailable if killed_at <= t < until]
        acked = [t for t in ledger.acked if killed_at <= t < until]
    if not refused:
        first = min(acked, default=until) - killed_at
        return f"no 503 (first acknowledgement {first:.1f}s after the kill)"
    last = max(refused)
    back = min((t for t in acked if t > last), default=until) - killed_at
    return (
        f"{len(refused)} answers 503 from {min(refused) - killed_at:.1f}s to"
        f" {last - killed_at:.1f}s after the kill; writes acknowledged again at {back:.1f}s"
    )


def wait_acknowledgements(ledger: Ledger, after: float, count: int, timeout: float) -> float:
    """Until ``count`` commands were acknowledged after ``after``; returns when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ledger.lock:
            acked = sorted(t for t in ledger.acked if t > after)
        if len(acked) >= count:
            return acked[count - 1]
        time.sleep(0.2)
    raise AssertionError(
        f"fewer than {count} acknowledgements within {timeout}s: {ledger.summary()}"
    )


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", [1], indirect=True)
def test_sigkill_the_only_broker_and_everything_recovers_by_itself(exchange: Exchange) -> None:
    load = start_load(exchange.url)
    try:
        wait_acknowledgements(load.ledger, 0, 100, 60)
        mark = len(exchange.output())
        exchange.node_pid(1)  # it runs
        os.kill(exchange.node_pid(1), signal.SIGKILL)
        killed_at = time.monotonic()
        exchange.wait_output("broker restarted", 30, after=mark)
        # Writes come back by themselves (the clients only retry), then trading goes on.
        back = wait_acknowledgements(load.ledger, killed_at + 1, 100, 120)
        time.sleep(5)
    finally:
        load.finish()
    print(f"broker SIGKILL: {outage(load.ledger, killed_at, back + 5)}")
    check_log(exchange, load.ledger)


def _partition_leaders(settings: Settings) -> Counter[int]:
    """How many partitions of the exchange's topics each node leads."""
    names = [spec.name(settings.topic_prefix) for spec in topics.TOPICS]
    metadata = admin(settings).list_topics(timeout=10)
    return Counter(
        p.leader
        for name in names
        for p in metadata.topics[name].partitions.values()
        if p.leader >= 0
    )


def _wait_all_in_sync(settings: Settings, timeout: float) -> float:
    """Until every partition of the exchange's topics has all three replicas in sync."""
    names = [spec.name(settings.topic_prefix) for spec in topics.TOPICS]
    began = time.monotonic()
    client = admin(settings)
    while time.monotonic() - began < timeout:
        metadata = client.list_topics(timeout=10)
        if all(
            len(p.isrs) == 3 for name in names for p in metadata.topics[name].partitions.values()
        ):
            return time.monotonic() - began
        time.sleep(0.5)
    raise AssertionError(f"replicas not back in sync within {timeout}s")


def _check_replicated(settings: Settings) -> None:
    """Every partition of the exchange's topics on three nodes, two needed in sync."""
    client = admin(settings)  # kept alive until the answers: its futures die with it
    metadata = client.list_topics(timeout=10)
    for spec in topics.TOPICS:
        for partition in metadata.topics[spec.name(settings.topic_prefix)].partitions.values():
            assert len(partition.replicas) == 3, (spec.name(), partition.replicas)
    resource = ConfigResource("topic", topics.topic_name(topics.ORDERS, settings.topic_prefix))
    (described,) = client.describe_configs([resource]).values()
    assert described.result()["min.insync.replicas"].value == "2"


@pytest.mark.parametrize("exchange", [3], indirect=True)
def test_sigkill_a_partition_leader_twice_on_three_nodes(exchange: Exchange) -> None:
    settings = exchange.settings
    _check_replicated(settings)
    load = start_load(exchange.url)
    figures = []
    try:
        began = wait_acknowledgements(load.ledger, 0, 100, 60)
        for kill in (1, 2):
            leaders = _partition_leaders(settings)
            node, led = leaders.most_common(1)[0]
            mark = len(exchange.output())
            os.kill(exchange.node_pid(node), signal.SIGKILL)
            killed_at = time.monotonic()
            exchange.wait_output(f"broker-{node} restarted", 60, after=mark)
            back = wait_acknowledgements(load.ledger, killed_at, 100, 120)
            in_sync = _wait_all_in_sync(settings, 120)
            figures.append(
                f"kill {kill} (node {node}, leader of {led} partitions):"
                f" {outage(load.ledger, killed_at, back)}; all replicas in sync"
                f" {time.monotonic() - killed_at:.1f}s after the kill (waited {in_sync:.1f}s)"
            )
            time.sleep(3)
        assert began < killed_at
    finally:
        load.finish()
    for line in figures:
        print(line)
    check_log(exchange, load.ledger)
