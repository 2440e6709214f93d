"""Scale-out under ``crypton up``: two dataflow processes (one Timely cluster) and two API
replicas on one broker, trading through both replicas.

The exchange runs as an operator would start it (``crypton up --dataflow-processes 2
--api-replicas 2``). Users are created and funded on one replica and trade on the
other, so each replica serves what the other wrote; one dataflow process is
SIGKILLed mid-stream and the supervisor restarts the cluster from its snapshot. The
test ends with ``crypton audit`` CLEAN and a clean shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from crypton.config import Settings
from crypton.process import free_ports, settings_env
from tests.api.support import ADMIN_TOKEN
from tests.dataflows.kafka_support import state_view, wait_clean_audit
from tests.processes import SNAPSHOT_SECONDS, CryptonUp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[1]
MARKET = "BTC-USDT"
USERS = 6  # spread over the inbox partitions, so both processes hold wallets


@dataclass
class Cluster(CryptonUp):
    """``crypton up`` with two dataflow processes and two API replicas."""

    metrics_port: int

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.settings.api_port + i}" for i in range(2)]

    def dataflow_pids(self) -> dict[int, int]:
        """Process id -> pid of the ``bytewax.run`` children of ``crypton up``."""
        found = {}
        for pid, cmdline in self.children():
            words = cmdline.split(b"\0")
            if b"bytewax.run" in words and b"-i" in words:
                found[int(words[words.index(b"-i") + 1])] = pid
        return found


@pytest.fixture
def cluster(broker_kind: str, tmp_path: Path) -> Iterator[Cluster]:
    if broker_kind != "kafka" or os.environ.get("CRYPTON_TEST_BOOTSTRAP"):
        pytest.skip("runs its own embedded Apache Kafka (a restart must keep the log)")
    settings = Settings(
        data_dir=tmp_path / "data",
        kafka_port=free_ports(2),
        api_port=free_ports(2),
        partitions=4,
        snapshot_seconds=SNAPSHOT_SECONDS,
    )
    metrics_port = free_ports(2)
    env = settings_env(settings) | {
        "CRYPTON_ADMIN_TOKEN": ADMIN_TOKEN,
        "CRYPTON_RATE_LIMIT": "0",
        "CRYPTON_DATAFLOW_METRICS_PORT": str(metrics_port),
    }
    out_path = tmp_path / "up.out"
    argv = ["up", "--dataflow-processes", "2", "--api-replicas", "2", "--grace", "15"]
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crypton.cli", *argv],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    up = Cluster(settings, proc, out_path, metrics_port)
    try:
        up.wait_output("Ctrl-C stops everything", 180)
        assert "Crypton is up." in up.output(), up.output()
        yield up
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, up.output()
        assert " stopped (code -9" not in up.output(), "a process needed SIGKILL to stop"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        print(f"crypton up output: {out_path}; logs: {settings.data_dir / 'logs'}")


def _post(
    client: httpx.Client, path: str, body: dict[str, str], timeout: float = 60
) -> httpx.Response:
    """POST until the answer is neither 401 nor 404 (a user or key made on the other
    replica takes a moment to reach this one's read model) nor 503."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.post(path, json=body)
        if response.status_code not in (401, 404, 503) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_two_dataflow_processes_and_two_api_replicas_trade_and_audit_clean(
    cluster: Cluster,
) -> None:
    pids = cluster.dataflow_pids()
    assert sorted(pids) == [0, 1], cluster.output()
    for i in range(2):  # each process serves its own metrics
        httpx.get(f"http://127.0.0.1:{cluster.metrics_port + i}/metrics").raise_for_status()
    a, b = cluster.urls
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    keys: dict[str, str] = {}
    with httpx.Client(base_url=a, headers=admin, timeout=30) as on_a:
        for n in range(USERS):
            made = on_a.post("/v1/admin/users", json={"user_id": f"u{n}"})
            assert made.status_code in (200, 201), made.text
            keys[f"u{n}"] = made.json()["api_key"]
    # Funded through the other replica, with ?wait=true: the dataflow answered.
    with httpx.Client(base_url=b, headers=admin, timeout=30) as on_b:
        for user in keys:
            for asset, amount in (("BTC", "10"), ("USDT", "1000000")):
                body = {"asset": asset, "amount": amount, "transfer_id": f"fund-{asset}"}
                done = _post(on_b, f"/v1/admin/users/{user}/credit?wait=true", body)
                assert done.status_code in (200, 202), done.text

    placed: list[str] = []

    def trade_round(round_: int) -> None:
        """Every user sells on one replica, then buys on the other, in an order where each
        buy takes the oldest resting sell, a neighbour's (never its own: no self-trade)."""
        users = list(keys)
        for side, order_of_users, replicas in (
            ("sell", users, (a, b)),
            ("buy", users[1:] + users[:1], (b, a)),
        ):
            for n, user in enumerate(order_of_users):
                url = replicas[users.index(user) % 2]
                with httpx.Client(base_url=url, timeout=30) as client:
                    client.headers["Authorization"] = f"Bearer {keys[user]}"
                    order = {
                        "market": MARKET, "side": side, "type": "limit", "price": "100",
                        "quantity": "0.1", "client_order_id": f"r{round_}-{side}",
                    }  # fmt: skip
                    answer = _post(client, "/v1/orders?wait=true", order)
                    assert answer.status_code in (200, 202), (n, answer.text)
                    placed.append(answer.json()["order_id"])

    trade_round(0)
    mark = len(cluster.output())
    os.kill(pids[1], signal.SIGKILL)  # a whole cluster restarts from its last snapshot
    cluster.wait_output("dataflow restarted", 60, after=mark)
    # Whichever process the supervisor finds ended first: the killed one (-9), or its
    # peer, which panics when the connection drops (code 1).
    assert "dataflow exited with code" in cluster.output()[mark:]
    trade_round(1)

    deadline = time.monotonic() + 120
    while True:
        view = state_view(cluster.settings)
        pending = [o for o in placed if o not in view.orders or view.orders[o].status == "NEW"]
        if not pending:
            break
        assert time.monotonic() < deadline, f"orders without an outcome: {pending[:5]}"
        time.sleep(1)
    with httpx.Client(timeout=10) as client:
        for url in cluster.urls:  # both replicas serve the trades, whoever placed them
            trades = client.get(f"{url}/v1/markets/{MARKET}/trades?limit=100").json()["items"]
            assert len(trades) >= USERS, (url, trades)
    report = wait_clean_audit(cluster.settings, 90)
    assert report.clean, "\n".join(report.lines)
    audit = subprocess.run(
        [sys.executable, "-m", "crypton.cli", "audit"],
        env=settings_env(cluster.settings), capture_output=True, text=True, timeout=180,
        check=False, cwd=ROOT,
    )  # fmt: skip
    assert audit.returncode == 0 and "verdict: CLEAN" in audit.stdout, audit.stdout + audit.stderr
    print(f"{len(placed)} orders through two replicas; audit: {audit.stdout.splitlines()[0]}")
