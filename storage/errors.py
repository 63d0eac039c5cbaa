"""Exceptions raised by ``storage``.

::

    StorageError
     ├── UnsafeUIDError          a UID that must not become part of a path or a key
     ├── InstanceWriteError      an instance could not be made durable on disk
     │    └── InsufficientStorage  free space under the configured floor
     ├── InstanceConflict        same SOP Instance UID already stored with other content
     └── CatalogError            the catalog database refused or failed a statement

Library exceptions (``OSError``, SQLAlchemy's) are translated in the module
that calls the library and chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "InstanceConflict",
    "InstanceWriteError",
    "InsufficientStorage",
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
