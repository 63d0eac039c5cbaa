"""One node per data directory: an exclusive lock on ``<data_dir>/node.lock``.

The serving node takes the lock before it touches anything in the data
directory (recovery, catalog, instance files) and holds it until it stops;
the kernel drops it when the process dies, SIGKILL included, so a stale
lock never blocks a restart. A second node on the same directory fails at
once, naming the process that holds it.

The lock file also tells the next start how the last one ended: it holds
``{"pid", "started_at", "stopped_at", "unscanned_since"}``; ``stopped_at`` is
written only when a node stops through its code. A start that finds it
missing knows the previous node was killed, so files may have been written
since that node started without being catalogued:
:attr:`DataDirectoryLock.unscanned_since` says since when, until
:meth:`DataDirectoryLock.mark_scanned` records that they were looked at (a
start that fails before looking passes the time on).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from storage.errors import DataDirectoryInUse

__all__ = ["LOCK_FILE", "DataDirectoryLock", "PreviousRun", "read_record"]

logger = logging.getLogger(__name__)

LOCK_FILE = "node.lock"


@dataclass(frozen=True)
class PreviousRun:
    """What the lock file said about the node that ran before this one."""

    pid: int | None
    started_at: float | None
    stopped_at: float | None
    """None when that node did not stop cleanly (killed, crashed, power lost)."""
    unscanned_since: float | None
    """Files written since then were not yet checked against the catalog."""

    @property
    def clean(self) -> bool:
        """True if the previous node stopped cleanly."""
        return self.stopped_at is not None


class DataDirectoryLock:
    """The exclusive lock of one data directory.

    Parameters
    ----------
    data_dir : pathlib.Path
        Created if missing.

    Attributes
    ----------
    previous : PreviousRun or None
        After :meth:`acquire`: the last run's record, None on a first start.
    unscanned_since : float or None
        After :meth:`acquire`: files written since this time may lack a
        catalog row (a node was killed); None when all were checked.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self.previous: PreviousRun | None = None
        self.unscanned_since: float | None = None
        self._handle: IO[str] | None = None
        self._started_at = 0.0

    def acquire(self) -> None:
        """Take the lock, or fail at once.

        Raises
        ------
        DataDirectoryInUse
            Another process holds it; the message names its pid.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(handle).pid
            handle.close()
            raise DataDirectoryInUse(
                f"data directory {self.data_dir.resolve()} is in use by pid "
                f"{holder if holder is not None else '(unknown)'}: one node per data directory "
                "(stop that node, or give this one another --data-dir)"
            ) from None
        previous = _read(handle) if self.path.stat().st_size else None
        self.previous = previous
        if previous is not None:
            self.unscanned_since = previous.unscanned_since
            if not previous.clean and self.unscanned_since is None:
                self.unscanned_since = previous.started_at or 0.0
        self._started_at = time.time()
        self._handle = handle
        self._write(stopped_at=None)

    def mark_scanned(self) -> None:
        """Record that every file written before this start was checked."""
        self.unscanned_since = None
        self._write(stopped_at=None)

    def release(self) -> None:
        """Record a clean stop and drop the lock (no-op if not held)."""
        if self._handle is None:
            return
        self._write(stopped_at=time.time())
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._handle is not None

    def _write(self, *, stopped_at: float | None) -> None:
        assert self._handle is not None
        record = {
            "pid": os.getpid(),
            "started_at": self._started_at,
            "stopped_at": stopped_at,
            "unscanned_since": self.unscanned_since,
        }
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(record))
        self._handle.flush()
        os.fsync(self._handle.fileno())


def read_record(data_dir: Path) -> PreviousRun | None:
    """The lock file's record without taking the lock (for ``dicom-node status``)."""
    try:
        with (Path(data_dir) / LOCK_FILE).open(encoding="utf-8") as handle:
            return _read(handle)
    except FileNotFoundError:
        return None


def _read(handle: IO[str]) -> PreviousRun:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}

    def number(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    pid = record.get("pid")
    return PreviousRun(
        pid=pid if isinstance(pid, int) else None,
        started_at=number("started_at"),
        stopped_at=number("stopped_at"),
        unscanned_since=number("unscanned_since"),
    )
