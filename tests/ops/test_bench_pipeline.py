"""``loadtest.bench_pipeline``'s reading of what a phase's epoch closes cost: the
difference between two scrapes of the dataflow's metrics, per step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest.bench_pipeline import _Closes


def _text(
    closes: int, fast: int, seconds: float, stored: float, bases: float, idle: int = 0
) -> str:
    """The wallet step's metrics after ``closes`` closes, ``fast`` of them under 5 ms, and
    ``idle`` bases taken while the flow was idle, 2 ms each."""
    return "\n".join(
        [
            f'crypton_dataflow_epoch_snapshot_seconds_bucket{{step="wallet",le="0.005"}} {fast}',
            f'crypton_dataflow_epoch_snapshot_seconds_bucket{{step="wallet",le="0.1"}} {closes}',
            f'crypton_dataflow_epoch_snapshot_seconds_bucket{{step="wallet",le="+Inf"}} {closes}',
            f'crypton_dataflow_epoch_snapshot_seconds_count{{step="wallet"}} {closes}',
            f'crypton_dataflow_epoch_snapshot_seconds_sum{{step="wallet"}} {seconds}',
            f'crypton_dataflow_snapshot_bytes_total{{step="wallet"}} {stored}',
            f'crypton_dataflow_base_bytes_total{{step="wallet"}} {bases}',
            f'crypton_dataflow_idle_bases_total{{step="wallet"}} {idle}',
            f'crypton_dataflow_idle_base_seconds_total{{step="wallet"}} {idle * 0.002}',
            'crypton_dataflow_snapshot_bytes_total{step="book"} 7',
            "",
        ]
    )


@pytest.fixture
def served() -> Iterator[tuple[list[str], int]]:
    """A loopback server answering /metrics with the last text in the list."""
    texts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = texts[-1].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield texts, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_phase_reports_its_own_closes_not_the_ones_before(
    served: tuple[list[str], int],
) -> None:
    texts, port = served
    texts.append(_text(closes=2, fast=1, seconds=0.06, stored=5e6, bases=0, idle=3))
    closes = _Closes(port)
    texts.append(_text(closes=6, fast=4, seconds=0.13, stored=5.02e6, bases=1.9e6, idle=13))
    line, result = closes.report()
    wallet = result["wallet"]
    assert wallet["closes"] == 4
    assert wallet["snapshot_ms"] == pytest.approx(70)
    assert wallet["median_close_ms_at_most"] == 5
    assert wallet["largest_close_ms_at_most"] == 100
    assert wallet["snapshot_bytes"] == pytest.approx(2e4)
    assert wallet["base_bytes"] == pytest.approx(1.9e6)
    assert wallet["idle_bases"] == 10 and wallet["idle_base_ms"] == pytest.approx(20)
    assert result["book"]["closes"] == 0 and result["book"]["snapshot_bytes"] == 0
    assert "wallet 4 in 70 ms, median <= 5 ms, largest <= 100 ms" in line
    assert "0.02 MB to the store, 1.90 MB of bases (10 taken idle, in 20 ms)" in line


def test_a_dataflow_that_does_not_answer_reads_as_no_closes() -> None:
    closes = _Closes(1)  # nothing listens on port 1
    _line, result = closes.report()
    assert result["wallet"]["closes"] == 0
