"""Schemathesis against the served OpenAPI document: no 5xx, and every response matches
the schema (status, content type, body). Bounded examples, loopback only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .support import ADMIN_TOKEN, ApiServer, ApiUser

pytestmark = pytest.mark.integration

CHECKS = "all"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def schemathesis(server: ApiServer, token: str, tmp_path: Path, *filters: str) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    argv = [
        str(Path(sys.executable).parent / "st"), "--config-file", str(CONFIG),
        "run", f"{server.url}/schema/openapi.json",
        "--header", f"Authorization: Bearer {token}", "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1",
        "--request-timeout", "10", "--workers", "1", *filters,
    ]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    (tmp_path / "st.out").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_user_and_public_routes_match_the_schema(
    api_server: ApiServer, new_user: Callable[..., ApiUser], tmp_path: Path
) -> None:
    user = new_user("fuzzer")
    # Streams never end, so a fuzzer cannot read them; they have their own tests.
    schemathesis(api_server, user.api_key, tmp_path, "--exclude-path-regex", "^/v1/(stream|admin)/")


def test_admin_routes_match_the_schema(api_server: ApiServer, tmp_path: Path) -> None:
    schemathesis(api_server, ADMIN_TOKEN, tmp_path, "--include-path-regex", "^/v1/admin/")


def test_openapi_document(api_server: ApiServer) -> None:
    with api_server.client() as client:
        doc = client.get("/schema/openapi.json").json()
        assert client.get("/schema").status_code == 200  # the interactive page
    order = doc["components"]["schemas"]["OrderView"]["properties"]
    for name in (
        "order_id", "client_order_id", "market", "side", "type", "price", "quantity", "funds",
        "filled_quantity", "filled_funds", "average_price", "status", "reason",
        "time_in_force", "post_only", "created_at", "updated_at",
    ):  # fmt: skip
        assert name in order, name
    assert doc["paths"]["/v1/orders"]["post"]["security"] == [{"bearer": []}]
    # Amounts are strings in the schema, never numbers.
    assert (
        doc["components"]["schemas"]["NewOrder"]["properties"]["price"]["oneOf"][0]["type"]
        == "string"
    )


def test_the_document_states_what_the_api_checks(api_server: ApiServer) -> None:
    with api_server.client() as client:
        doc = client.get("/schema/openapi.json").json()
        allow = {
            path: client.options(path).headers["allow"]
            for path in ("/v1/orders", "/v1/orders/o-1", "/v1/admin/users")
        }
    markets = ["BTC-USDT", "ETH-BTC", "ETH-USDT"]
    schemas = doc["components"]["schemas"]
    assert schemas["NewOrder"]["properties"]["market"]["enum"] == markets
    assert schemas["TransferRequest"]["properties"]["asset"]["enum"] == ["BTC", "ETH", "USDT"]
    assert schemas["NewOrder"]["additionalProperties"] is False
    depth = doc["paths"]["/v1/markets/{market}/depth"]["get"]["parameters"]
    assert [p["schema"]["enum"] for p in depth if p["name"] == "market"] == [markets]
    for path in ("/v1/orders", "/v1/fills"):
        [cursor] = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "cursor"]
        assert cursor["schema"]["pattern"].startswith("^[0-9]{1,19}")
    assert doc["paths"]["/v1/admin/users"]["post"]["requestBody"]["required"] is False
    assert allow == {
        "/v1/orders": "DELETE, GET, OPTIONS, POST",
        "/v1/orders/o-1": "DELETE, GET, OPTIONS",
        "/v1/admin/users": "OPTIONS, POST",
    }
