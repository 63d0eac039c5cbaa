"""Exceptions raised by ``storage``.

::

    StorageError
     ├── UnsafeUIDError          a UID that must not become part of a path or a key
     ├── InstanceWriteError      an instance could not be made durable on disk
     │    └── InsufficientStorage  free space under the configured floor
     ├── InstanceConflict        same SOP Instance UID already stored with other content
     ├── CatalogError            the catalog database refused or failed a statement
     │    └── LeaseLost            a worker's job was taken over; its writes are refused
     ├── DataDirectoryInUse      another node holds the data directory's lock
     └── HashIndexError          the in-memory hash index was misused or its file is bad
          ├── DuplicateIdError     an id added to a hash index is already in it
          └── IndexFileError       a saved hash index is missing, corrupt or of another layout

Library exceptions (``OSError``, SQLAlchemy's) are translated in the module
that calls the library and chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "DataDirectoryInUse",
    "DuplicateIdError",
    "HashIndexError",
    "IndexFileError",
    "InstanceConflict",
    "InstanceWriteError",
    "InsufficientStorage",
    "LeaseLost",
    "StorageError",
    "UnsafeUIDError",
]


class StorageError(Exception):
    """Base class of every error raised by ``storage``."""


class UnsafeUIDError(StorageError, ValueError):
    """A UID is empty, too long, or not of the form ``digits(.digits)*``."""


class InstanceWriteError(StorageError):
    """An instance could not be written, fsynced or renamed into place."""


class InsufficientStorage(InstanceWriteError):
    """Writing would take free disk space under the configured floor."""


class InstanceConflict(StorageError):
    """An instance with the same SOP Instance UID but other content is stored.

    The stored one is kept; ``existing_sha256`` and ``received_sha256`` say
    which content is which.
    """

    def __init__(self, sop_instance_uid: str, existing_sha256: str, received_sha256: str) -> None:
        super().__init__(
            f"SOP Instance UID {sop_instance_uid} is already stored with other content "
            f"(stored sha256 {existing_sha256[:12]}, received {received_sha256[:12]}); kept the first"
        )
        self.sop_instance_uid = sop_instance_uid
        self.existing_sha256 = existing_sha256
        self.received_sha256 = received_sha256


class CatalogError(StorageError):
    """A catalog statement failed (database unavailable, constraint, I/O)."""


class LeaseLost(CatalogError):
    """The job this worker was running is no longer its own.

    Its lease ran out (the worker stalled longer than ``worker.lease_seconds``)
    and another worker took the series over; what this one computed is not
    written.
    """


class HashIndexError(StorageError):
    """The hash index (``storage.index``) was misused or cannot be restored."""


class DuplicateIdError(HashIndexError, ValueError):
    """Ids passed to ``HashIndex.add`` are already in the index (``ids`` lists them)."""

    def __init__(self, ids: list[int]) -> None:
        shown = ", ".join(str(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
        super().__init__(f"{len(ids)} id(s) already in the hash index: {shown}")
        self.ids = ids


class IndexFileError(HashIndexError):
    """A saved hash index is missing, truncated, or was written with another layout."""


class DataDirectoryInUse(StorageError):
    """Another process holds the data directory's lock; the message names its pid."""
