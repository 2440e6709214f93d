"""Fixtures for tests that talk to a real API server (reusable by end-to-end tests).

- ``api_server`` (function): uvicorn serving ``api.app:create_app`` on a free
  loopback port, on the shared ``settings`` (fresh topic prefix), ready (its
  read model caught up). An ``ApiServer``: ``.url``, ``.client(key)``, ``.stop()``.
- ``admin_client``: an ``httpx.Client`` on ``api_server`` with the admin token.
- ``new_user``: ``new_user(user_id=None) -> ApiUser`` (``user_id``, ``api_key``,
  ``client`` authenticated with the key).
- ``state_writer``: writes state records to ``settings``' topics as the dataflow would.

See ``tests/api/support.py`` for ``start_api`` (more servers, other env) and
``read_wallet_inbox``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from crypton.config import Settings

from .support import ADMIN_TOKEN, ApiServer, ApiUser, StateWriter, create_user, start_api


@pytest.fixture
def api_server(settings: Settings, tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(settings, tmp_path / "logs")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def admin_client(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client(ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
def new_user(admin_client: httpx.Client) -> Iterator[Callable[..., ApiUser]]:
    users: list[ApiUser] = []

    def make(user_id: str | None = None) -> ApiUser:
        user = create_user(admin_client, user_id)
        users.append(user)
        return user

    yield make
    for user in users:
        user.close()


@pytest.fixture
def state_writer(settings: Settings) -> StateWriter:
    return StateWriter(settings)
