"""Group commit: the catalog rows and directory fsyncs of concurrent C-STOREs, together.

Every acknowledged instance is on disk and in the catalog before its Success
goes out (``dicom_node.intake.ingest``); what costs is the fsyncs that make it
so. Each association's handler writes and fsyncs its own file and renames it
into place, then calls :meth:`GroupCommit.commit`. The first caller to find no
commit under way becomes the leader: it takes every instance waiting at that
moment (its own among them), fsyncs their directories once each and, at the
same time, records all their rows in one catalog transaction (one commit, one
fsync); then it wakes the others. Those that arrived during a commit form the
next group. With one sender a group is one instance, and the directory fsync
still runs beside the catalog commit instead of before it.

Order of durability (why acknowledging after both is enough): the file's bytes
are fsynced before its rename, so a name at a final path never points at
unwritten bytes. The directory fsync and the catalog row may land in either
order: a crash between them leaves a row whose file is missing, or a file
without a row, and in both cases the instance was not acknowledged, the sender
sends it again, and :meth:`storage.instances.InstanceStore.put` plus the
idempotent catalog insert complete it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from storage.catalog import Catalog, InstanceRecord
from storage.errors import CatalogError, InstanceWriteError
from storage.instances import InstanceStore

__all__ = ["GroupCommit"]

logger = logging.getLogger(__name__)


@dataclass
class _Waiting:
    """One instance waiting for its group's commit."""

    record: InstanceRecord
    directories: tuple[Path, ...]
    new: bool = False
    error: Exception | None = None
    done: bool = False


class GroupCommit:
    """Commit the catalog rows and directory entries of concurrent C-STOREs together.

    Parameters
    ----------
    store : InstanceStore
        Where the files were written (``put(..., sync_directories=False)``).
    catalog : Catalog

    Attributes
    ----------
    groups, instances : int
        Commits made and instances they held (``instances / groups`` is the
        mean group size).
    """

    def __init__(self, store: InstanceStore, catalog: Catalog) -> None:
        self._store = store
        self._catalog = catalog
        self._condition = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._committing = False
        self._fsyncs = ThreadPoolExecutor(1, thread_name_prefix="directory-fsync")
        self.groups = 0
        self.instances = 0

    def commit(self, record: InstanceRecord, directories: tuple[Path, ...]) -> bool:
        """Make one stored instance's directory entries durable and catalog it.

        Parameters
        ----------
        record : InstanceRecord
        directories : tuple of pathlib.Path
            Directories whose fsync the file's rename still needs.

        Returns
        -------
        bool
            True if the instance is new to the catalog.

        Raises
        ------
        CatalogError
            Its row was not recorded.
        InstanceWriteError
            A directory fsync failed (its row may be recorded; a resend completes it).
        """
        mine = _Waiting(record, directories)
        with self._condition:
            self._waiting.append(mine)
            self._condition.notify_all()  # (lets a test see the queue; waiters re-check)
            while not mine.done:
                if self._committing:
                    self._condition.wait()
                    continue
                group, self._waiting = self._waiting, []
                self._committing = True
                self._condition.release()
                try:
                    self._commit_group(group)
                finally:
                    self._condition.acquire()
                    self._committing = False
                    self._condition.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.new

    def _commit_group(self, group: list[_Waiting]) -> None:
        """Directory fsyncs beside one catalog transaction; every member ends ``done``."""
        try:
            directories = [d for waiting in group for d in waiting.directories]
            synced: Future[None] | None = None
            if directories:
                synced = self._fsyncs.submit(self._store.sync_directories, directories)
            self._record(group)
            if synced is not None:
                try:
                    synced.result()
                except InstanceWriteError as exc:
                    for waiting in group:
                        waiting.error = waiting.error or exc
            self.groups += 1
            self.instances += len(group)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            logger.exception("group commit of %d instance(s) failed", len(group))
            for waiting in group:
                waiting.error = waiting.error or exc
        finally:
            for waiting in group:
                waiting.done = True

    def _record(self, group: list[_Waiting]) -> None:
        intake = self._catalog.intake
        try:
            for waiting, new in zip(
                group, intake.record_instances([w.record for w in group]), strict=True
            ):
                waiting.new = new
            return
        except CatalogError as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            logger.warning("catalog group of %d failed (%s); one by one", len(group), exc)
        for waiting in group:  # one bad row must not fail the others
            try:
                waiting.new = intake.record_instance(waiting.record)
            except CatalogError as exc:
                waiting.error = exc
