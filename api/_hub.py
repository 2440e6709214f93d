"""Fan-out of read-model changes on the event loop: SSE subscribers and waiters.

The read-model thread hands over one batch at a time with
``call_soon_threadsafe``; everything here then runs on the loop, so no lock is
needed. Delivery to a subscriber never waits: each has a bounded queue and one
that overflows is marked dropped (its stream sends ``resync`` and ends), so a
slow client can never hold up the others or the read model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from .readmodel import Change

T = TypeVar("T")


class Subscriber:
    def __init__(self, maxsize: int) -> None:
        # ``None`` in the queue only wakes the stream (see ``Hub.close``).
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(maxsize)
        self.dropped = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):  # a full queue wakes it anyway
            self.queue.put_nowait(None)

    def offer(self, change: Change) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.dropped = True


class Hub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.markets: dict[str, set[Subscriber]] = defaultdict(set)
        self.users: dict[str, set[Subscriber]] = defaultdict(set)
        self._waiters: dict[tuple[str, str], set[asyncio.Future[None]]] = defaultdict(set)
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def close(self) -> None:
        """End every stream: the server is shutting down. Without this, uvicorn would
        wait forever for the never-ending SSE responses to finish."""
        self.closed = True
        for registry in (self.markets, self.users):
            for subs in registry.values():
                for sub in subs:
                    sub.close()

    @staticmethod
    def unsubscribe(registry: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
        subs = registry.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del registry[key]

    def post(self, changes: list[Change]) -> None:
        """Called from the read-model thread."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between: shutting down
            loop.call_soon_threadsafe(self.dispatch, changes)

    def dispatch(self, changes: list[Change]) -> None:
        for change in changes:
            record = change.record
            if change.kind in ("trade", "depth"):
                for sub in self.markets.get(record.market, ()):
                    sub.offer(change)
                if change.kind == "trade":  # each side's fill
                    for user in (record.maker_user_id, record.taker_user_id):
                        for sub in self.users.get(user, ()):
                            sub.offer(change)
            elif change.kind in ("order", "balance"):
                for sub in self.users.get(record.user_id, ()):
                    sub.offer(change)
            self._wake(_wait_key(change))

    def _wake(self, key: tuple[str, str]) -> None:
        for future in self._waiters.pop(key, ()):
            if not future.done():
                future.set_result(None)

    async def wait_for(
        self, key: tuple[str, str], check: Callable[[], T | None], timeout: float
    ) -> T | None:
        """Wait until ``check()`` returns something, re-checking whenever a change to
        ``key`` arrives; ``None`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # check() and the registration below run without an await between them,
            # and dispatch() runs on this loop, so no change can slip through.
            found = check()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            future: asyncio.Future[None] = loop.create_future()
            self._waiters[key].add(future)
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return check()
            finally:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[key]


def _wait_key(change: Change) -> tuple[str, str]:
    r = change.record
    if change.kind == "order":
        return ("order", r.order_id)
    if change.kind == "transfer":
        return ("transfer", f"{r.user_id}/{r.transfer_id}")
    if change.kind == "user":
        return ("user", r.user_id)
    if change.kind == "balance":
        return ("balance", r.user_id)
    return (change.kind, r.market)
