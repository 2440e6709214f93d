"""The HTTP protocol the API is served with: uvicorn's h11 protocol with a bound on how
long a client may take to send a request's head.

uvicorn times out idle keep-alive connections but not a request whose headers
never finish, so a client trickling (or stalling on) header bytes holds a
connection forever. Serve with ``uvicorn --http api._server:HeaderTimeoutH11Protocol``.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._config import ApiConfig

log = logging.getLogger("crypton.api.server")

PROTOCOL = "api._server:HeaderTimeoutH11Protocol"
"""The value of uvicorn's ``--http`` option."""


@cache
def _header_timeout_s() -> float:
    return ApiConfig.from_env().header_timeout_s


class HeaderTimeoutH11Protocol(H11Protocol):
    """Closes a connection whose request head is not complete within
    ``CRYPTON_API_HEADER_TIMEOUT`` seconds of its first byte (or of the connection)."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # Between requests the keep-alive timeout applies; the first byte of the next
        # request starts this one.
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(_header_timeout_s(), self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing %s: no complete request head in time", self.client)
            self.transport.close()
