"""End-to-end fixtures: the API fixtures, reused with the real dataflow beside them."""

from tests.api.conftest import admin_client, api_server, new_user

__all__ = ["admin_client", "api_server", "new_user"]
