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

**Resuming without moving them back.** Bytewax reads a store at start in pages of
1,000 keys, and each page runs a ``GROUP BY`` over all of ``snaps`` (its
``SerializedSnapshotLoader``): a resume costs about keys x keys / 1,000 row visits,
295 s at a million keys on two partitions. So when the directory holds every
partition of the store (one machine: ``complete``), ``prepare`` moves the settled
rows instead to a file of the flow's own beside the partitions (``SETTLED_FILE``,
one row per key, the newest) and the flow reads a key's row there when the key first
gets a message and Bytewax gave it no state (``SettledSnapshots``, called by
``dataflows.exchange``): Bytewax then loads only the keys of the last
``SETTLE_AFTER_EPOCHS`` epochs. It reads the same state: a settled row is the key's
latest snapshot before the resume epoch unless ``snaps`` holds a later one, and
Bytewax's loader takes exactly that later one when it is before the resume epoch and
gives no state otherwise, which is when the flow reads the settled row. Rows at or
after the resume epoch (written by an execution that did not finish that epoch) are
deleted first: Bytewax's loader skips them, and kept, one could later pass for its
key's latest. A file of its own, because the flow reads it while Bytewax writes the
partitions from the same process with its own copy of SQLite, and two copies of
SQLite in one process do not see each other's locks. Where some partitions live
elsewhere (one volume per pod on Kubernetes), a process cannot read them all, so
``prepare`` moves the settled rows back into ``snaps`` as before.

``prepare`` runs when the exchange flow is built under ``bytewax.run -r DIR``
(``dataflows.exchange``), so every way of starting the flow on a store passes
through it; it is idempotent, and harmless on a store it never saw.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from contextlib import closing
from pathlib import Path

__all__ = [
    "SETTLED_FILE",
    "SETTLED_TABLE",
    "SETTLE_AFTER_EPOCHS",
    "SettledSnapshots",
    "complete",
    "prepare",
    "recovery_directory",
    "rename_inputs",
    "resume_epoch",
    "this_runs_directory",
]

SETTLED_TABLE = "crypton_settled_snaps"

SETTLED_FILE = "crypton-settled.db"
"""Where ``prepare`` keeps settled rows for the flow to read on demand. Not
``*.sqlite3``: Bytewax opens every such file in the directory as a partition."""

_SETTLED_FILE_TABLE = """
CREATE TABLE IF NOT EXISTS settled (
    step_id TEXT NOT NULL,
    state_key TEXT NOT NULL,
    snap_epoch INTEGER NOT NULL,
    ser_change BLOB,
    PRIMARY KEY (step_id, state_key)
) WITHOUT ROWID
"""

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

SETTLE_AFTER_EPOCHS = int(os.environ.get("CRYPTON_SETTLE_AFTER_EPOCHS", "3"))
"""Epochs a key stays idle before its snapshot moves out of ``snaps`` (30 s at the
default 10-s epoch): ``snaps`` holds the keys touched in that many epochs, which is
what a commit scans and what Bytewax loads at a resume."""

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


def prepare(
    directory: Path,
    settle_after: int = SETTLE_AFTER_EPOCHS,
    *,
    on_demand: Collection[str] = (),
) -> int:
    """Make every partition file in ``directory`` settle the snapshots of keys idle for
    ``settle_after`` epochs at each commit, and ready the settled rows for a resume.

    The settled rows of the steps in ``on_demand`` (only where ``complete(directory)``)
    move to ``SETTLED_FILE``, for the flow to read (``SettledSnapshots``), after the rows
    from the resume epoch on are deleted (``resume_epoch``); the others move back into
    ``snaps`` for Bytewax to resume from. Return how many rows moved."""
    parts = sorted(directory.glob("part-*.sqlite3"))
    schema = _schema(settle_after)
    if not on_demand:
        moved = 0
        for path in parts:
            with closing(_open(path)) as store:
                moved += _prepare_part(store, schema, settled=None, steps=(), resume=None)
        return moved
    resume = resume_epoch(directory)
    moved = 0
    with closing(_open(directory / SETTLED_FILE)) as settled:
        settled.execute(_SETTLED_FILE_TABLE)
        if resume is not None:
            settled.execute("DELETE FROM settled WHERE snap_epoch >= ?", (resume,))
        for path in parts:
            with closing(_open(path)) as store:
                moved += _prepare_part(
                    store, schema, settled=settled, steps=tuple(on_demand), resume=resume
                )
    return moved


def rename_inputs(directory: Path, renames: Mapping[str, tuple[str, str]]) -> int:
    """Give the positions an input of a former flow stored (``step: (new step, key
    prefix)``) to the input that replaced it, in every partition file of ``directory``:
    the row of ``step``/``key`` becomes ``new step``/``prefix + key``. Idempotent;
    returns how many rows it renamed."""
    renamed = 0
    for path in sorted(directory.glob("part-*.sqlite3")):
        with closing(_open(path)) as store:
            tables = {name for (name,) in store.execute("SELECT name FROM sqlite_master")}
            store.execute("BEGIN IMMEDIATE")
            for table in ("snaps", SETTLED_TABLE):
                if table not in tables:
                    continue
                for old, (new, prefix) in renames.items():
                    renamed += store.execute(
                        f"UPDATE {table} SET step_id = ?, state_key = ? || state_key"
                        " WHERE step_id = ?",
                        (new, prefix, old),
                    ).rowcount
            store.execute("COMMIT")
    return renamed


def resume_epoch(directory: Path) -> int | None:
    """The epoch Bytewax resumes the store in ``directory`` from (None: never run), as
    its ``resume_from`` computes it over every partition's progress: the latest
    execution's resume epoch, raised per worker by the frontiers that worker wrote, and
    the lowest of them. Needs every partition (``complete``)."""
    executions: list[tuple[int, int, int]] = []
    fronts: list[tuple[int, int, int]] = []
    for path in sorted(directory.glob("part-*.sqlite3")):
        with closing(_open(path)) as store:
            executions += store.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")
            fronts += store.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts")
    if not executions:
        return None
    last, workers, resumed = max(executions)
    frontier = dict.fromkeys(range(workers), resumed)
    for ex_num, worker, front in fronts:
        if ex_num == last:
            frontier[worker] = max(frontier.get(worker, front), front)
    return min(frontier.values())


def complete(directory: Path) -> bool:
    """Whether ``directory`` holds every partition of its recovery store (each file
    records its index and the store's partition count), as on one machine: then
    ``prepare`` may leave settled rows for the flow to read ``on_demand``."""
    seen: set[int] = set()
    counts: set[int] = set()
    for path in directory.glob("part-*.sqlite3"):
        with closing(_open(path)) as store:
            seen.update(i for (i,) in store.execute("SELECT part_index FROM parts"))
            counts.update(n for (n,) in store.execute("SELECT part_count FROM parts"))
    return len(counts) == 1 and seen == set(range(counts.pop()))


class SettledSnapshots:
    """The settled snapshot of a state key, read on demand from ``SETTLED_FILE`` of a
    store ``prepare`` readied ``on_demand``: what Bytewax would have resumed the key
    from had the row been moved back into ``snaps``.

    Nothing writes the file while the flow runs (``prepare`` does, before Bytewax
    starts). One connection per thread: the worker threads of a process read their own
    keys.
    """

    _QUERY = "SELECT ser_change FROM settled WHERE step_id = ? AND state_key = ?"

    def __init__(self, directory: Path) -> None:
        self.path = directory / SETTLED_FILE
        self._local = threading.local()

    def get(self, step_id: str, key: str) -> object | None:
        """The state Bytewax snapshotted for ``key`` of ``step_id`` (unpickled, as
        Bytewax hands it to the step's builder), or None if no row is settled (or the
        key's state was discarded)."""
        store: sqlite3.Connection | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = _open(self.path)
        row = store.execute(self._QUERY, (step_id, key)).fetchone()
        if row is None or row[0] is None:
            return None
        # Bytewax's own serialisation of its snapshots, from this store.
        state: object = pickle.loads(row[0])
        return state


def _open(path: Path) -> sqlite3.Connection:
    # Processes of one cluster on one machine share the store and may start together:
    # wait for each other's transactions rather than fail.
    store = sqlite3.connect(path, timeout=60, isolation_level=None)
    store.execute("PRAGMA busy_timeout = 60000")
    return store


def _prepare_part(
    store: sqlite3.Connection,
    schema: tuple[str, ...],
    *,
    settled: sqlite3.Connection | None,
    steps: tuple[str, ...],
    resume: int | None,
) -> int:
    """Install the trigger; then move the settled rows of ``steps`` into ``settled``
    (after deleting the rows from ``resume`` on) and the others back into ``snaps``."""
    store.execute("BEGIN IMMEDIATE")
    try:
        for statement in schema:
            store.execute(statement)
        if resume is not None:
            for table in ("snaps", SETTLED_TABLE):
                store.execute(f"DELETE FROM {table} WHERE snap_epoch >= ?", (resume,))
        moved = 0
        if settled is not None and steps:
            ours = f"step_id IN ({', '.join('?' * len(steps))})"
            rows = store.execute(
                "SELECT step_id, state_key, snap_epoch, ser_change"
                f" FROM {SETTLED_TABLE} WHERE {ours}",
                steps,
            )
            # Committed there before they leave the partition: a crash in between
            # leaves them in both, and the next start moves them again.
            settled.execute("BEGIN IMMEDIATE")
            moved += settled.executemany(
                "INSERT INTO settled (step_id, state_key, snap_epoch, ser_change)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (step_id, state_key) DO UPDATE"
                " SET snap_epoch = excluded.snap_epoch, ser_change = excluded.ser_change"
                " WHERE excluded.snap_epoch >= settled.snap_epoch",
                rows,
            ).rowcount
            settled.execute("COMMIT")
            store.execute(f"DELETE FROM {SETTLED_TABLE} WHERE {ours}", steps)
        moved += store.execute(
            "INSERT OR IGNORE INTO snaps (created_at, step_id, state_key, snap_epoch, ser_change)"
            f" SELECT created_at, step_id, state_key, snap_epoch, ser_change FROM {SETTLED_TABLE}"
        ).rowcount
        store.execute(f"DELETE FROM {SETTLED_TABLE}")
        store.execute("COMMIT")
    except BaseException:
        store.execute("ROLLBACK")
        if settled is not None and settled.in_transaction:
            settled.execute("ROLLBACK")
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
