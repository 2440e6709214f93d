"""The read model's materialized view: the state topics folded into SQLite.

A rebuildable cache of the log, one file per API replica. Each state topic's
records land in one table, folded by that topic's rule from ``crypton.schema``
(one SQL statement per rule, built from the rule's type, below), and the next
offset of every consumed partition is written in the same transaction as the
rows it covers: after a crash (even ``kill -9`` between a batch and its commit)
the file holds exactly the records up to its offsets, and the tail resumes there.

* ``Upsert``: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE excluded.version >
  version``: a higher version replaces, a replay or a stale copy changes nothing;
* ``FirstWins``: ``INSERT OR IGNORE``: the first record of an identity stands.

Every statement runs once per record so that its row count says whether the
record changed the view (push streams and waiters react to exactly those).
SQLite is opened with ``synchronous=OFF``: a committed transaction survives the
death of the process (it is in the operating system's cache); a machine crash
may lose or corrupt the file, which is then discarded and rebuilt from the log.

>>> from crypton.domain.messages import BalanceState
>>> store = ViewStore.memory()
>>> store.apply([BalanceState(user_id="a", version=2, balances={}, ts=0)], {})
[True]
>>> store.apply([BalanceState(user_id="a", version=1, balances={}, ts=0)], {("t", 0): 7})
[False]
>>> store.balance("a").version, store.offsets()
(2, {('t', 0): 7})
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from crypton import schema
from crypton.candles import INTERVALS, WEEK_ORIGIN, Candle, candle_start
from crypton.domain.messages import (
    TERMINAL,
    BalanceState,
    DepthState,
    OrderState,
    Trade,
    TransferState,
)
from crypton.users import UserState, key_table

__all__ = ["FORMAT", "TABLES", "Table", "ViewStore", "ViewStoreError"]

FORMAT: Final = "2"
"""The layout of the file; a file of another layout is discarded and rebuilt."""

Offsets = Mapping[tuple[str, int], int]
"""(topic, partition) -> the next offset to consume."""


class ViewStoreError(Exception):
    """The file is not a view this code can use (corrupt, foreign, another layout)."""


@dataclass(frozen=True)
class Table:
    """Where one state topic's records are folded: the table, its identity columns (the
    spec's fold identity) and the indexed columns beside the record itself (``data``)."""

    spec: schema.TopicSpec
    name: str
    identity: tuple[str, ...]
    columns: tuple[str, ...]
    """Every column but ``data``, identity first; ``version`` for an ``Upsert``."""
    row: Callable[[Any], tuple[Any, ...]]
    """The values of ``columns`` for a record."""
    indexes: tuple[str, ...] = ()


def _order_row(o: OrderState) -> tuple[Any, ...]:
    return (
        o.order_id, o.user_id, o.client_order_id, o.market, o.created_at,
        o.status not in TERMINAL, o.version,
    )  # fmt: skip


def _trade_row(t: Trade) -> tuple[Any, ...]:
    return (t.market, t.seq, t.time, t.maker_user_id, t.taker_user_id)


TABLES: Final = (
    Table(
        schema.ORDERS, "orders", ("order_id",),
        ("order_id", "user_id", "client_order_id", "market", "created_at", "open", "version"),
        _order_row,
        ("orders_client ON orders(user_id, client_order_id)",
         "orders_user ON orders(user_id, created_at, order_id)",
         # Covering: a restart reads the open orders from this index alone, not from
         # pages scattered over the whole history (10 s instead of 1 s at 10M orders).
         "orders_open ON orders(open, data) WHERE open"),
    ),
    Table(
        schema.BALANCES, "balances", ("user_id",), ("user_id", "version"),
        lambda b: (b.user_id, b.version),
    ),
    Table(
        schema.TRANSFERS, "transfers", ("user_id", "transfer_id"), ("user_id", "transfer_id"),
        lambda t: (t.user_id, t.transfer_id),
    ),
    Table(
        schema.TRADES, "trades", ("market", "seq"),
        ("market", "seq", "time", "maker_user_id", "taker_user_id"), _trade_row,
        ("trades_maker ON trades(maker_user_id, time, market, seq)",
         "trades_taker ON trades(taker_user_id, time, market, seq)"),
    ),
    Table(
        schema.DEPTH, "depth", ("market",), ("market", "version"), lambda d: (d.market, d.seq),
    ),
    Table(
        schema.USERS, "users", ("user_id",), ("user_id", "version"),
        lambda u: (u.user_id, u.version),
    ),
)  # fmt: skip
"""One table per state topic the API folds."""


def _upsert(table: Table) -> str:
    names = ", ".join((*table.columns, "data"))
    marks = ", ".join("?" * (len(table.columns) + 1))
    updates = ", ".join(
        f"{c} = excluded.{c}" for c in (*table.columns, "data") if c not in table.identity
    )
    return (
        f"INSERT INTO {table.name} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(table.identity)}) DO UPDATE SET {updates} "
        f"WHERE excluded.version > {table.name}.version"
    )


def _first_wins(table: Table) -> str:
    names = ", ".join((*table.columns, "data"))
    marks = ", ".join("?" * (len(table.columns) + 1))
    return f"INSERT OR IGNORE INTO {table.name} ({names}) VALUES ({marks})"


_STATEMENT: Final[dict[type[Any], Callable[[Table], str]]] = {
    schema.Upsert: _upsert,
    schema.FirstWins: _first_wins,
}
"""Fold rule -> the SQL statement that applies it (``Append`` topics are not views)."""


def fold_statement(table: Table) -> str:
    """The statement folding one record into ``table`` by its topic's rule.

    >>> fold_statement(TABLES[2])
    'INSERT OR IGNORE INTO transfers (user_id, transfer_id, data) VALUES (?, ?, ?)'
    """
    return _STATEMENT[type(table.spec.fold)](table)


def _schema_sql() -> list[str]:
    out = [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        "CREATE TABLE offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL, "
        "next INTEGER NOT NULL, PRIMARY KEY (topic, partition)) WITHOUT ROWID",
        # A candle is folded from the trades the trades table accepted (once each).
        "CREATE TABLE candles (market TEXT NOT NULL, interval TEXT NOT NULL, "
        "start INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (market, interval, start)) "
        "WITHOUT ROWID",
        "CREATE TABLE user_keys (digest TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
        "scopes BLOB NOT NULL) WITHOUT ROWID",
        "CREATE INDEX user_keys_user ON user_keys(user_id)",
    ]
    for table in TABLES:
        columns = ", ".join((*table.columns, "data BLOB NOT NULL"))
        out.append(
            f"CREATE TABLE {table.name} ({columns}, PRIMARY KEY ({', '.join(table.identity)}))"
        )
        out += [f"CREATE INDEX {index}" for index in table.indexes]
    return out


_BY_TYPE: Final = {kind: table for table in TABLES for kind in table.spec.types}
_candle_encode = msgspec.msgpack.Encoder().encode
_candle_decode = msgspec.msgpack.Decoder(Candle).decode
_scopes_encode = msgspec.json.Encoder().encode
_scopes_decode = msgspec.json.Decoder(tuple[str, ...]).decode
_ORIGINS: Final = {name: WEEK_ORIGIN if name == "1w" else 0 for name in INTERVALS}


class ViewStore:
    """The SQLite file of the view; every method is called by one thread at a time (the
    caller serialises access: the API's read model holds its lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if "meta" not in tables:
                self._create()
            elif self.meta("format") != FORMAT:
                raise ViewStoreError(f"{path}: layout {self.meta('format')!r}, not {FORMAT}")
        except sqlite3.DatabaseError as exc:
            raise ViewStoreError(f"{path}: {exc}") from exc
        self._statements = {table.name: fold_statement(table) for table in TABLES}

    @classmethod
    def memory(cls) -> ViewStore:
        """A view in memory: for folds without a file (tests, one-off reads)."""
        return cls(":memory:")

    def _create(self) -> None:
        with self.transaction():
            for statement in _schema_sql():
                self._db.execute(statement)
            self._db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def discard(path: Path) -> None:
        """Delete the file of a view (and its write-ahead log)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    class _Transaction:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN")

        def __exit__(self, kind: object, *_: object) -> None:
            self.db.execute("ROLLBACK" if kind is not None else "COMMIT")

    def transaction(self) -> ViewStore._Transaction:
        return ViewStore._Transaction(self._db)

    # --- folding ------------------------------------------------------------------

    def apply(
        self, records: Sequence[Any], offsets: Offsets, raws: Sequence[bytes | None] = ()
    ) -> list[bool]:
        """Fold ``records`` in log order and store ``offsets``, in one transaction; return,
        per record, whether it changed the view. ``raws`` are the records as read (their
        encoding is stored as is), else they are encoded again."""
        changed: list[bool] = []
        candles: dict[tuple[str, str, int], Candle] = {}
        with self.transaction():
            for i, record in enumerate(records):
                table = _BY_TYPE[type(record)]
                raw = raws[i] if i < len(raws) else None
                data = raw if raw is not None else table.spec.encode(record)
                cursor = self._db.execute(self._statements[table.name], (*table.row(record), data))
                accepted = cursor.rowcount > 0
                changed.append(accepted)
                if accepted:
                    if table.name == "users":
                        self._index_keys(record)
                    elif table.name == "trades":
                        self._fold_candles(record, candles)
            for (market, interval, start), candle in candles.items():
                self._db.execute(
                    "INSERT OR REPLACE INTO candles VALUES (?, ?, ?, ?)",
                    (market, interval, start, _candle_encode(candle)),
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                [(topic, partition, nxt) for (topic, partition), nxt in offsets.items()],
            )
        return changed

    def _index_keys(self, state: UserState) -> None:
        self._db.execute("DELETE FROM user_keys WHERE user_id = ?", (state.user_id,))
        self._db.executemany(
            "INSERT OR REPLACE INTO user_keys VALUES (?, ?, ?)",
            [
                (digest, state.user_id, _scopes_encode(key.scopes))
                for digest, key in key_table(state).items()
            ],
        )

    def _fold_candles(self, trade: Trade, batch: dict[tuple[str, str, int], Candle]) -> None:
        for name, interval in INTERVALS.items():
            start = candle_start(trade.time, interval, _ORIGINS[name])
            key = (trade.market, name, start)
            candle = batch.get(key) or self._candle(*key)
            if candle is None:
                batch[key] = Candle.of(start, trade)
            else:
                candle.add(trade)
                batch[key] = candle

    def _candle(self, market: str, interval: str, start: int) -> Candle | None:
        row = self._db.execute(
            "SELECT data FROM candles WHERE market = ? AND interval = ? AND start = ?",
            (market, interval, start),
        ).fetchone()
        return None if row is None else _candle_decode(row[0])

    # --- meta and offsets ---------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to consume of every partition folded so far."""
        rows = self._db.execute("SELECT topic, partition, next FROM offsets")
        return {(str(t), int(p)): int(n) for t, p, n in rows}

    # --- queries ------------------------------------------------------------------

    def _one(self, decode: Callable[[bytes], Any], sql: str, params: Sequence[Any]) -> Any:
        row = self._db.execute(sql, params).fetchone()
        return None if row is None else decode(row[0])

    def order(self, order_id: str) -> OrderState | None:
        return self._one(  # type: ignore[no-any-return]
            _decode_order, "SELECT data FROM orders WHERE order_id = ?", (order_id,)
        )

    def order_by_client_id(self, user_id: str, client_order_id: str) -> OrderState | None:
        return self._one(  # type: ignore[no-any-return]
            _decode_order,
            "SELECT data FROM orders WHERE user_id = ? AND client_order_id = ?",
            (user_id, client_order_id),
        )

    def orders_before(
        self, user_id: str, market: str | None, cursor: tuple[int, str] | None, limit: int
    ) -> list[OrderState]:
        """Up to ``limit`` orders of the user before ``cursor`` (created_at, order_id),
        newest first."""
        sql = "SELECT data FROM orders WHERE user_id = ?"
        params: list[Any] = [user_id]
        if cursor is not None:
            sql += " AND (created_at, order_id) < (?, ?)"
            params += cursor
        if market is not None:
            sql += " AND market = ?"
            params.append(market)
        sql += " ORDER BY created_at DESC, order_id DESC LIMIT ?"
        params.append(limit)
        return [_decode_order(r[0]) for r in self._db.execute(sql, params)]

    def open_orders(self) -> Iterator[OrderState]:
        for (data,) in self._db.execute("SELECT data FROM orders WHERE open"):
            yield _decode_order(data)

    def balance(self, user_id: str) -> BalanceState | None:
        return self._one(  # type: ignore[no-any-return]
            _decode_balance, "SELECT data FROM balances WHERE user_id = ?", (user_id,)
        )

    def transfer(self, user_id: str, transfer_id: str) -> TransferState | None:
        return self._one(  # type: ignore[no-any-return]
            _decode_transfer,
            "SELECT data FROM transfers WHERE user_id = ? AND transfer_id = ?",
            (user_id, transfer_id),
        )

    def user(self, user_id: str) -> UserState | None:
        return self._one(  # type: ignore[no-any-return]
            _decode_user, "SELECT data FROM users WHERE user_id = ?", (user_id,)
        )

    def key(self, digest: str) -> tuple[str, tuple[str, ...]] | None:
        row = self._db.execute(
            "SELECT user_id, scopes FROM user_keys WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None else (str(row[0]), _scopes_decode(row[1]))

    def depths(self) -> list[DepthState]:
        return [_decode_depth(r[0]) for r in self._db.execute("SELECT data FROM depth")]

    def trade_markets(self) -> list[str]:
        """Every market with a trade, by skipping through the primary key."""
        out: list[str] = []
        while True:
            row = self._db.execute(
                "SELECT MIN(market) FROM trades WHERE market > ?", (out[-1] if out else "",)
            ).fetchone()
            if row is None or row[0] is None:
                return out
            out.append(str(row[0]))

    def trades_newest(self, market: str, limit: int) -> list[Trade]:
        """The newest ``limit`` trades of ``market``, oldest first."""
        rows = self._db.execute(
            "SELECT data FROM trades WHERE market = ? ORDER BY seq DESC LIMIT ?", (market, limit)
        ).fetchall()
        return [_decode_trade(r[0]) for r in reversed(rows)]

    def trades_of_user(
        self, user_id: str, market: str | None, cursor: tuple[int, str, int] | None, limit: int
    ) -> list[tuple[str, Trade]]:
        """Up to ``limit`` (role, trade) of the user before ``cursor`` (time, market, seq),
        newest first; a trade with oneself comes once per role."""
        parts: list[str] = []
        params: list[Any] = []
        for role in ("maker", "taker"):
            sql = f"SELECT '{role}', time, market, seq, data FROM trades WHERE {role}_user_id = ?"
            params.append(user_id)
            if cursor is not None:
                sql += " AND (time, market, seq) < (?, ?, ?)"
                params += cursor
            if market is not None:
                sql += " AND market = ?"
                params.append(market)
            parts.append(sql)
        query = (
            f"SELECT * FROM ({parts[0]}) UNION ALL SELECT * FROM ({parts[1]}) "
            "ORDER BY 2 DESC, 3 DESC, 4 DESC, 1 DESC LIMIT ?"
        )
        params.append(limit)
        return [(str(r[0]), _decode_trade(r[4])) for r in self._db.execute(query, params)]

    def candles(
        self, market: str, interval: str, start: int | None, end: int | None, limit: int
    ) -> list[Candle]:
        """Candles starting in ``[start, end)``, oldest first: from ``start`` on when it is
        given, else the newest ``limit`` before ``end``."""
        sql = "SELECT data FROM candles WHERE market = ? AND interval = ?"
        params: list[Any] = [market, interval]
        if end is not None:
            sql += " AND start < ?"
            params.append(end)
        if start is None:
            sql += " ORDER BY start DESC LIMIT ?"
            params.append(limit)
            return [
                _candle_decode(r[0]) for r in reversed(self._db.execute(sql, params).fetchall())
            ]
        sql += " AND start >= ? ORDER BY start LIMIT ?"
        params += [start, limit]
        return [_candle_decode(r[0]) for r in self._db.execute(sql, params)]


_decode_order: Callable[[bytes], OrderState] = schema.ORDERS.decoder.decode
_decode_balance: Callable[[bytes], BalanceState] = schema.BALANCES.decoder.decode
_decode_transfer: Callable[[bytes], TransferState] = schema.TRANSFERS.decoder.decode
_decode_trade: Callable[[bytes], Trade] = schema.TRADES.decoder.decode
_decode_depth: Callable[[bytes], DepthState] = schema.DEPTH.decoder.decode
_decode_user: Callable[[bytes], UserState] = schema.USERS.decoder.decode
