"""The file of this replica's materialized view: found, locked, checked, rebuilt.

The view (``crypton.viewstore``) is a cache of the log: whenever it cannot be
trusted it is deleted and rebuilt by folding the state topics from the
beginning. That happens when the file is not a database of the current layout
(corrupt, truncated, written by another version), when it was written from
another Kafka cluster, or when its offsets are beyond the ends of the topics
(they were deleted and created again).

One replica writes one file: a second replica started on the same directory
finds the file locked and folds into a temporary file of its own instead.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from pathlib import Path
from typing import IO, Final

from crypton.viewstore import ViewStore, ViewStoreError

log = logging.getLogger("crypton.api.view")

VIEW_DIR: Final = "readmodel"
"""Under the data directory, unless ``CRYPTON_READMODEL_DIR`` says otherwise."""


def view_path(directory: Path, topic_prefix: str) -> Path:
    """The file of the view of the topics under ``topic_prefix``.

    >>> view_path(Path("/d"), "dev.").name
    'dev.crypton-view.sqlite'
    """
    return directory / f"{topic_prefix}crypton-view.sqlite"


class View:
    """The open view file, held under an exclusive lock until ``close``."""

    def __init__(self, path: Path, lock: IO[str] | None, temporary: Path | None) -> None:
        self.path = path
        self._lock = lock
        self._temporary = temporary
        self.store = ViewStore(path)

    @classmethod
    def open(cls, directory: Path, topic_prefix: str) -> View:
        directory.mkdir(parents=True, exist_ok=True)
        path = view_path(directory, topic_prefix)
        held = open(f"{path}.lock", "a+")  # noqa: SIM115 (held until close)
        lock: IO[str] | None = held
        temporary = None
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.close()
            lock = None
            temporary = Path(tempfile.mkdtemp(prefix="crypton-view-"))
            log.warning(
                "%s is in use by another replica: folding into a temporary view in %s",
                path, temporary,
            )  # fmt: skip
            path = temporary / path.name
        try:
            ViewStore(path).close()
        except ViewStoreError as exc:
            log.warning("read model view unusable (%s): rebuilding", exc)
            ViewStore.discard(path)
        return cls(path, lock, temporary)

    def foreign(self, cluster_id: str | None) -> str | None:
        """Why the view belongs to another log than the cluster's, or ``None``."""
        stored = self.store.meta("cluster")
        if stored is not None and cluster_id is not None and stored != cluster_id:
            return f"written from cluster {stored}, connected to {cluster_id}"
        return None

    def claim(self, cluster_id: str | None) -> None:
        if cluster_id is not None and self.store.meta("cluster") != cluster_id:
            self.store.set_meta("cluster", cluster_id)

    def rebuild(self) -> None:
        """Discard the file and start an empty one."""
        self.store.close()
        ViewStore.discard(self.path)
        self.store = ViewStore(self.path)

    def close(self) -> None:
        self.store.close()
        if self._lock is not None:
            self._lock.close()  # releases the lock
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
