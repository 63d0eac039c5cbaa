"""Durable instance store: temporary file, fsync, rename, fsync directory.

An instance is stored exactly as it arrived (its encoded bytes, with a
Part 10 file meta header), under ``<root>/<study>/<series>/<sop>.dcm``.
A file at its final path is always complete: partial writes exist only as
``<root>/.tmp/<host>/*.part`` files, removed at start by
:meth:`InstanceStore.recover`. The root may be a network filesystem shared
by several machines (``storage.instances_dir``): each host writes and
cleans up its own temporary folder, on the same filesystem, so the rename
into place stays atomic.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from storage.errors import InstanceConflict, InstanceWriteError, InsufficientStorage
from storage.uids import instance_relative_path

__all__ = ["InstanceStore", "PutOutcome", "StoredInstance"]

logger = logging.getLogger(__name__)

_TMP_DIR = ".tmp"


class PutOutcome(Enum):
    """What :meth:`InstanceStore.put` did."""

    STORED = "stored"
    """New instance written."""
    IDENTICAL = "identical"
    """The same bytes were already stored; nothing was rewritten."""


@dataclass(frozen=True)
class StoredInstance:
    """An instance file that is durable on disk."""

    relative_path: str
    """Path below the store root, POSIX separators."""
    size: int
    """File size in bytes."""
    sha256: str
    """Hex digest of the file's bytes."""
    outcome: PutOutcome
    unsynced_directories: tuple[Path, ...] = ()
    """Directories whose entry of this file is not yet fsynced (``put(...,
    sync_directories=False)``): the caller owes :meth:`InstanceStore.sync_directories`."""


def sha256_hex(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class InstanceStore:
    """Instance files below one root directory.

    Parameters
    ----------
    root : pathlib.Path
        Directory holding the instances; created if missing.
    min_free_bytes : int
        Refuse a write that would leave less free space than this.
    fsync : bool
        Flush files and directories to stable storage (default True). Only
        benchmarks turn it off, to measure what it costs.
    """

    def __init__(self, root: Path, *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_bytes)
        self.fsync = fsync
        # Per host: a node starting on one machine must not remove the partial
        # files of another machine's writes in progress on the shared root.
        self._tmp = self.root / _TMP_DIR / socket.gethostname()
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Two associations storing the same SOP Instance UID at once must not
        # race between the existence check and the rename: stripe locks by UID.
        self._locks = [threading.Lock() for _ in range(64)]

    def recover(self, *, pid: int | None = None) -> int:
        """Remove partial files this host left in a crash; return how many were removed.

        Parameters
        ----------
        pid : int, optional
            Only those of this process, which has exited (a receiver process
            of the node); by default all of this host's, at the node's start.
        """
        removed = 0
        for part in self._tmp.glob("*.part" if pid is None else f"*.{pid}.part"):
            part.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.warning(
                "removed %d partial instance file(s) left by an interrupted write", removed
            )
        return removed

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a stored instance."""
        return self.root / relative_path

    def open(self, relative_path: str) -> BinaryIO:
        """Open a stored instance for reading.

        The node reads stored files back only through this method (the
        outbox hands pynetdicom a path), so a test can count the reads.
        """
        return (self.root / relative_path).open("rb")

    def put(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        data: bytes,
        *,
        sync_directories: bool = True,
    ) -> StoredInstance:
        """Store ``data`` durably, or find it already stored.

        Parameters
        ----------
        study_instance_uid, series_instance_uid, sop_instance_uid : str
            Validated before use; they make the path.
        data : bytes
            The complete Part 10 file content.
        sync_directories : bool
            False: the file's bytes are fsynced before the rename, but the
            directory entries are left to the caller
            (``StoredInstance.unsynced_directories``), who fsyncs those of
            several files at once and acknowledges none before.

        Returns
        -------
        StoredInstance
            With ``outcome`` STORED for a new file, IDENTICAL when the same
            bytes were already there (nothing rewritten).

        Raises
        ------
        UnsafeUIDError
            A UID is not valid.
        InstanceConflict
            Other bytes are stored under this SOP Instance UID (kept).
        InsufficientStorage
            Free space would fall under ``min_free_bytes``.
        InstanceWriteError
            Any other I/O failure; nothing is left at the final path.
        """
        relative = instance_relative_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        lock = self._locks[zlib.crc32(sop_instance_uid.encode()) % len(self._locks)]
        with lock:
            return self._put_locked(relative, sop_instance_uid, data, sync_directories)

    def _put_locked(
        self, relative: Path, sop_instance_uid: str, data: bytes, sync_directories: bool
    ) -> StoredInstance:
        final = self.root / relative
        digest = sha256_hex(data)
        if final.exists():
            existing = sha256_hex(final.read_bytes())
            if existing == digest:
                return StoredInstance(relative.as_posix(), len(data), digest, PutOutcome.IDENTICAL)
            raise InstanceConflict(sop_instance_uid, existing, digest)
        self._check_free_space(len(data))
        try:
            created = _make_directories(final.parent)
            # Unique without mkstemp's random retries: the SOP Instance UID is
            # locked in this process, and the pid tells processes apart.
            tmp_name = self._tmp / f"{sop_instance_uid}.{os.getpid()}.part"
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    if self.fsync:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(tmp_name, final)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            # The new directory entry, and those of directories just made.
            owed = tuple([final.parent, *created]) if self.fsync else ()
            if sync_directories:
                for directory in owed:
                    _fsync_directory(directory)
                owed = ()
        except OSError as exc:
            raise InstanceWriteError(
                f"could not store instance {sop_instance_uid}: {exc.strerror}"
            ) from exc
        return StoredInstance(relative.as_posix(), len(data), digest, PutOutcome.STORED, owed)

    def sync_directories(self, directories: Iterable[Path]) -> None:
        """fsync each directory once (the entries owed by ``put(..., sync_directories=False)``).

        Raises
        ------
        InstanceWriteError
            An fsync failed: the entries may not be durable.
        """
        for directory in dict.fromkeys(directories):
            try:
                _fsync_directory(directory)
            except OSError as exc:
                raise InstanceWriteError(
                    f"could not sync directory {directory}: {exc.strerror}"
                ) from exc

    def remove(self, relative_path: str) -> None:
        """Delete a stored file (used to undo a write whose catalog row failed)."""
        try:
            (self.root / relative_path).unlink(missing_ok=True)
        except OSError as exc:
            raise InstanceWriteError(f"could not remove {relative_path}: {exc.strerror}") from exc

    def _check_free_space(self, size: int) -> None:
        if self.min_free_bytes <= 0:
            return
        free = shutil.disk_usage(self.root).free
        if free - size < self.min_free_bytes:
            raise InsufficientStorage(
                f"free space {free // 2**20} MiB minus {size} bytes is under the floor of "
                f"{self.min_free_bytes // 2**20} MiB"
            )


def _make_directories(path: Path) -> list[Path]:
    """Make ``path`` and missing parents; return the parents of those made."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    path.mkdir(parents=True, exist_ok=True)
    return [directory.parent for directory in missing]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
