"""API key lifecycle: issue with scopes, list without secrets, revoke on every replica."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from crypton.config import Settings

from .support import ApiServer, create_user, start_api

pytestmark = pytest.mark.integration

ORDER = {"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "50000", "quantity": "1"}


def test_keys_issue_list_scope_and_revoke(
    api_server: ApiServer, admin_client: httpx.Client, settings: Settings, tmp_path: Path
) -> None:
    alice = create_user(admin_client, "alice")
    listed = admin_client.get("/v1/admin/users/alice/keys").json()["items"]
    assert [(k["scopes"]) for k in listed] == [["read", "trade"]]
    first_id = listed[0]["key_id"]

    made = admin_client.post("/v1/admin/users/alice/keys", json={"scopes": ["read"]})
    assert made.status_code == 201, made.text
    read_key = made.json()
    assert read_key["scopes"] == ["read"] and read_key["api_key"].startswith("crk_")
    listed = admin_client.get("/v1/admin/users/alice/keys").json()["items"]
    assert [k["key_id"] for k in listed] == [first_id, read_key["key_id"]]
    assert all("api_key" not in k and "hash" not in k for k in listed)

    with api_server.client(read_key["api_key"]) as reader:
        assert reader.get("/v1/balances").status_code == 200
        assert reader.get("/v1/orders").status_code == 200
        for response in (
            reader.post("/v1/orders", json=ORDER),
            reader.delete("/v1/orders/some-order"),
            reader.delete("/v1/orders/by-client-id/c1"),
            reader.delete("/v1/orders", params={"all": "true"}),
        ):
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "forbidden"
    assert admin_client.post("/v1/admin/users/alice/keys", json={"scopes": []}).status_code == 400
    assert (
        admin_client.post("/v1/admin/users/alice/keys", json={"scopes": ["x"]}).status_code == 400
    )
    assert admin_client.post("/v1/admin/users/nobody/keys").status_code == 404
    assert admin_client.get("/v1/admin/users/nobody/keys").status_code == 404
    assert admin_client.delete("/v1/admin/users/alice/keys/k-none").status_code == 404

    # Rotation: a second replica sees the first key revoked within a second.
    other = start_api(settings, tmp_path / "other")
    try:
        with other.client(alice.api_key) as there:
            assert there.get("/v1/balances").status_code == 200
            revoked = admin_client.delete(f"/v1/admin/users/alice/keys/{first_id}")
            assert revoked.status_code == 204, revoked.text
            assert alice.client.get("/v1/balances").status_code == 401
            deadline = time.monotonic() + 1.0
            while there.get("/v1/balances").status_code != 401:
                assert time.monotonic() < deadline, "still accepted a second after revocation"
                time.sleep(0.02)
        with other.client(read_key["api_key"]) as reader:
            assert reader.get("/v1/balances").status_code == 200
    finally:
        other.stop()
        alice.close()
    listed = admin_client.get("/v1/admin/users/alice/keys").json()["items"]
    assert [k["key_id"] for k in listed] == [read_key["key_id"]]
    assert admin_client.delete(f"/v1/admin/users/alice/keys/{first_id}").status_code == 404
    with httpx.Client(base_url=api_server.url) as anonymous:
        assert anonymous.get("/v1/admin/users/alice/keys").status_code == 401
