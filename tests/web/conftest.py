"""Browser tests: the API fixtures, the real dataflow beside them, and Debian's Chromium."""

from tests.api.conftest import admin_client, api_server, new_user

__all__ = ["admin_client", "api_server", "new_user"]
