"""Fixtures of the operations tests: a real API server on the session's broker.

- ``api_server``: uvicorn serving the API on a free loopback port, on ``settings``
  (fresh topic prefix), ready; started as tests/api does (``tests.api.support``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crypton.config import Settings
from tests.api.support import ApiServer, start_api


@pytest.fixture
def api_server(settings: Settings, tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(settings, tmp_path / "logs")
    try:
        yield server
    finally:
        server.stop()
