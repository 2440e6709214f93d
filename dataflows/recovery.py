"""Bytewax's recovery store, with its snapshot clean-up made proportional to the epoch.

Bytewax 0.21.1 keeps each partition of the recovery store in a SQLite file
(``part-N.sqlite3``) whose table ``snaps`` holds one row per (step, state key,
epoch) it snapshotted. At every epoch it commits, its ``RecoveryCommitter``
deletes the rows that a later committed snapshot of the same key replaces. It
finds them with one ``GROUP BY step_id, state_key`` over all of ``snaps``: every
state key ever stored, one per user here, read on the flow's only thread at
each epoch close. The stall grew with the number of users, not with what
changed: about 0.9 us a key, 47 ms at 50,000 users and about 0.85 s at a
million (``py-spy --native``).

**What this module adds.** A table ``crypton_settled_snaps`` beside ``snaps``,
one row per idle state key, and a trigger on Bytewax's ``commits`` table that
runs inside the commit's transaction, just before Bytewax's clean-up: at the
commit of epoch E, every key whose latest row in ``snaps`` is from epoch
``E - SETTLE_AFTER_EPOCHS`` or earlier (a key idle for that many epochs) has
that latest row moved to ``crypton_settled_snaps`` (replacing the key's older
settled row) and all its rows deleted from ``snaps``. ``snaps`` then holds the
keys touched in the last ``SETTLE_AFTER_EPOCHS`` epochs only, so both the
trigger and Bytewax's ``GROUP BY`` read what recent epochs wrote, and a commit
costs what changed. A key that changes at every epoch (a busy book) is never
moved, so its snapshot is written once, as before; a key is copied once each
time it goes idle.

**Why recovery reads the same state.** Bytewax's clean-up at the commit of E
keeps, for each key, its latest row at or before E and every later row. A moved
row is its key's latest and older than E, so Bytewax would keep it; the rows
deleted with it are older still, so Bytewax would delete them; the other keys
are left to Bytewax's clean-up. A key's rows in ``snaps`` are all newer than its
settled row (they are written at later epochs than the commit that settled it),
so the union of the two tables is exactly Bytewax's own ``snaps``. Bytewax reads
``snaps`` only when a process starts (to resume); ``prepare`` moves every
settled row back into ``snaps`` before then, so what it resumes from is what it
would have resumed from without the trigger. The move back costs one pass at
start-up, and the first commits after it move the rows out again.

``prepare`` runs when the exchange flow is built under ``bytewax.run -r DIR``
(``dataflows.exchange``), so every way of starting the flow on a store passes
through it; it is idempotent, and harmless on a store it never saw.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path

__all__ = [
    "SETTLED_TABLE",
    "SETTLE_AFTER_EPOCHS",
    "prepare",
    "recovery_directory",
    "this_runs_directory",
]

SETTLED_TABLE = "crypton_settled_snaps"

_TABLE = f"""
CREATE TABLE IF NOT EXISTS {SETTLED_TABLE} (
    created_at TEXT NOT NULL,
    step_id TEXT NOT NULL,
    state_key TEXT NOT NULL,
    snap_epoch INTEGER NOT NULL,
    ser_change BLOB,
    PRIMARY KEY (step_id, state_key)
) WITHOUT ROWID
"""

SETTLE_AFTER_EPOCHS = 16
"""Epochs a key stays idle before its snapshot moves out of ``snaps`` (32 s at the
default 2-s epoch): ``snaps`` holds the keys touched in that many epochs."""

# SQLite takes the bare columns of a query with one MAX() from the row of the maximum,
# so each idle key's latest row moves whole. Not INSERT OR REPLACE: a trigger takes the
# conflict policy of the statement that fired it (Bytewax's upsert of ``commits``), so
# the settled rows it replaces are deleted first.
_SETTLE = """
BEGIN
    DELETE FROM {settled} WHERE (step_id, state_key) IN ({idle});
    INSERT INTO {settled} (created_at, step_id, state_key, snap_epoch, ser_change)
    SELECT created_at, step_id, state_key, MAX(snap_epoch), ser_change
    FROM snaps GROUP BY step_id, state_key {settles};
    DELETE FROM snaps WHERE (step_id, state_key) IN ({idle});
END
"""
_SETTLES = "HAVING MAX(snap_epoch) <= NEW.commit_epoch - {after}"
_IDLE = "SELECT step_id, state_key FROM snaps GROUP BY step_id, state_key {settles}"


def _schema(after: int) -> tuple[str, ...]:
    settles = _SETTLES.format(after=int(after))
    idle = _IDLE.format(settles=settles)
    settle = _SETTLE.format(settled=SETTLED_TABLE, idle=idle, settles=settles)
    return (
        _TABLE,
        "DROP TRIGGER IF EXISTS crypton_settle_on_commit",
        "DROP TRIGGER IF EXISTS crypton_settle_on_recommit",
        f"CREATE TRIGGER crypton_settle_on_commit AFTER INSERT ON commits {settle}",
        "CREATE TRIGGER crypton_settle_on_recommit"
        f" AFTER UPDATE OF commit_epoch ON commits {settle}",
    )


def prepare(directory: Path, settle_after: int = SETTLE_AFTER_EPOCHS) -> int:
    """Make every partition file in ``directory`` settle the snapshots of keys idle for
    ``settle_after`` epochs at each commit, and move the rows the last run settled back
    into ``snaps`` for Bytewax to resume from. Return how many rows moved back."""
    moved = 0
    for path in sorted(directory.glob("part-*.sqlite3")):
        # Closed here, not when the collector finds it (a connection sits in a reference
        # cycle of its own): Bytewax opens the file next.
        with closing(_open(path)) as store:
            moved += _prepare_part(store, _schema(settle_after))
    return moved


def _open(path: Path) -> sqlite3.Connection:
    # Processes of one cluster on one machine share the store and may start together:
    # wait for each other's transactions rather than fail.
    store = sqlite3.connect(path, timeout=60, isolation_level=None)
    store.execute("PRAGMA busy_timeout = 60000")
    return store


def _prepare_part(store: sqlite3.Connection, schema: tuple[str, ...]) -> int:
    store.execute("BEGIN IMMEDIATE")
    try:
        for statement in schema:
            store.execute(statement)
        cursor = store.execute(
            f"INSERT OR IGNORE INTO snaps (created_at, step_id, state_key, snap_epoch, ser_change)"
            f" SELECT created_at, step_id, state_key, snap_epoch, ser_change FROM {SETTLED_TABLE}"
        )
        moved = cursor.rowcount
        store.execute(f"DELETE FROM {SETTLED_TABLE}")
        store.execute("COMMIT")
    except BaseException:
        store.execute("ROLLBACK")
        raise
    return moved


def this_runs_directory() -> Path | None:
    """The recovery directory of this process, if it is ``python -m bytewax.run ... -r DIR``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return None
    return recovery_directory(sys.argv[1:], os.environ)


def recovery_directory(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """The recovery directory ``bytewax.run`` was given (``-r DIR``,
    ``--recovery-directory DIR`` or ``BYTEWAX_RECOVERY_DIRECTORY``), or None.

    >>> recovery_directory(["-r", "/x", "-s", "2"], {}), recovery_directory([], {})
    (PosixPath('/x'), None)
    >>> recovery_directory(["--recovery-directory=/y"], {"BYTEWAX_RECOVERY_DIRECTORY": "/z"})
    PosixPath('/y')
    """
    for i, arg in enumerate(argv):
        if arg in ("-r", "--recovery-directory") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--recovery-directory="):
            return Path(arg.partition("=")[2])
    value = environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    return Path(value) if value else None
