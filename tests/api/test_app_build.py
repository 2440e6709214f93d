"""Building the app connects to nothing, and its OpenAPI document reads well."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api._config import ApiConfig
from api.app import create_app
from crypton.config import Settings


def test_building_the_app_connects_to_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYPTON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CRYPTON_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    app = create_app(Settings.from_env(), ApiConfig())
    ctx = app.state.ctx
    assert ctx.commands._producer is None
    assert not ctx.readmodel._thread.is_alive()
    doc = app.openapi_schema.to_schema()
    ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z]*", i) for i in ids), ids
    assert {"placeOrder", "getOrderByClientId", "streamMe", "revokeKey"} <= set(ids)
    for path in ("/v1/stream/me", "/v1/stream/markets/{market}"):
        answer = doc["paths"][path]["get"]["responses"]["200"]
        assert list(answer["content"]) == ["text/event-stream"]
        assert "`live`" in answer["description"] and "`resync`" in answer["description"]
    assert "`fill`" in doc["paths"]["/v1/stream/me"]["get"]["responses"]["200"]["description"]
