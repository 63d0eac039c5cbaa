"""Every DIMSE status the node sends, and the one place exceptions become statuses.

References: PS3.4 Annex B.2.3 (Storage), PS3.4 C.4.1.1.4 (Query/Retrieve
C-FIND), PS3.7 Annex C (status classes). pynetdicom turns an exception that
escapes a handler into its generic 0xC211; :func:`store_guard` makes sure none
does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from dicom_node.errors import (
    IndexNotReady,
    InvalidDataset,
    InvalidQuery,
    MissingUID,
    NotAuthorized,
    SOPClassMismatch,
    UIDMismatch,
)
from storage.errors import (
    CatalogError,
    InstanceConflict,
    InstanceWriteError,
    InsufficientStorage,
    UnsafeUIDError,
)

__all__ = [
    "FindResponse",
    "Status",
    "find_guard",
    "status_dataset",
    "store_guard",
    "store_status_for",
]

logger = logging.getLogger(__name__)


class Status(IntEnum):
    """Status codes we send (PS3.4, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    """Success (PS3.7 C.1)."""
    NOT_AUTHORIZED = 0x0124
    """Refused: Not Authorized, the calling AE title lacks the permission for this
    request (PS3.7 C.5.x general status; ``[access]``)."""
    PENDING = 0xFF00
    """C-FIND: matches are continuing (PS3.4 C.4.1.1.4)."""
    CANCEL = 0xFE00
    """C-FIND: matching terminated due to C-CANCEL (PS3.4 C.4.1.1.4)."""
    OUT_OF_RESOURCES = 0xA700
    """C-STORE refused: out of resources (free disk under the floor) (PS3.4 B.2.3)."""
    OUT_OF_RESOURCES_CATALOG = 0xA710
    """C-STORE refused: out of resources, the catalog could not record the
    instance; the file is not kept and the sender should retry (PS3.4 B.2.3, A7xx)."""
    OUT_OF_RESOURCES_WRITE = 0xA720
    """C-STORE refused: out of resources, the instance could not be written
    to disk (I/O error) (PS3.4 B.2.3, A7xx)."""
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """C-STORE error: the dataset's SOP Class UID is not the command's (PS3.4 B.2.3)."""
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """C-FIND failed: identifier does not match SOP class (PS3.4 C.4.1.1.4)."""
    CANNOT_UNDERSTAND = 0xC000
    """C-STORE error: the dataset cannot be decoded (PS3.4 B.2.3, Cxxx)."""
    MISSING_UID = 0xC001
    """C-STORE error: Study, Series or SOP Instance UID missing or empty (Cxxx)."""
    UNSAFE_UID = 0xC002
    """C-STORE error: a UID is not digits and dots or is over 64 characters (Cxxx)."""
    UID_MISMATCH = 0xC003
    """C-STORE error: dataset SOP Instance UID differs from the request's (Cxxx)."""
    PROCESSING_FAILURE = 0xC0FF
    """C-STORE error: unexpected failure in the node, logged with a trace (Cxxx)."""
    UNABLE_TO_PROCESS = 0xC300
    """C-FIND failed: unable to process (PS3.4 C.4.1.1.4, Cxxx)."""
    INDEX_LOADING = 0xC310
    """C-FIND failed, unable to process: the similarity index of a node that
    just started is still loading; the same query succeeds shortly (Cxxx)."""
    ELEMENTS_DISCARDED = 0xB006
    """C-STORE warning: an instance with this SOP Instance UID and other
    content is already stored; the first was kept, this one discarded (PS3.4 B.2.3)."""
    MOVE_DESTINATION_UNKNOWN = 0xA801
    """C-MOVE failed: the Move Destination is not configured (or the calling AE may
    not retrieve: the destination is checked first) (PS3.4 C.4.2.1.5)."""
    RETRIEVE_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """C-MOVE/C-GET failed: identifier does not match SOP class (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    SUBOPERATIONS_FAILED = 0xB000
    """C-MOVE/C-GET warning: sub-operations complete, one or more failures (PS3.4 C.4.2.1.5)."""
    RETRIEVE_UNABLE_TO_PROCESS = 0xC5FF
    """C-MOVE/C-GET failed: unable to process, logged with a trace (PS3.4 C.4.2.1.5, Cxxx)."""


def status_dataset(status: Status, comment: str | None = None) -> Dataset:
    """A status Dataset with an optional Error Comment (0000,0902), at most 64 characters."""
    result = Dataset()
    result.Status = int(status)
    if comment:
        result.ErrorComment = comment[:64]
    return result


# Exception class -> status, most specific first.
_STORE_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (NotAuthorized, Status.NOT_AUTHORIZED),
    (InsufficientStorage, Status.OUT_OF_RESOURCES),
    (InstanceConflict, Status.ELEMENTS_DISCARDED),
    (UnsafeUIDError, Status.UNSAFE_UID),
    (MissingUID, Status.MISSING_UID),
    (UIDMismatch, Status.UID_MISMATCH),
    (SOPClassMismatch, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (InvalidDataset, Status.CANNOT_UNDERSTAND),
    (CatalogError, Status.OUT_OF_RESOURCES_CATALOG),
    (InstanceWriteError, Status.OUT_OF_RESOURCES_WRITE),
)


def store_status_for(exc: BaseException) -> Status:
    """The C-STORE status for an exception (PROCESSING_FAILURE if unknown)."""
    for cls, status in _STORE_TABLE:
        if isinstance(exc, cls):
            return status
    return Status.PROCESSING_FAILURE


F = TypeVar("F", bound=Callable[..., Any])


def store_guard(func: F) -> F:
    """Map every exception of a C-STORE handler to a named status.

    Expected errors are logged at warning level with their message (which
    never holds patient identifiers); unexpected ones with a trace.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - this is the one mapping point
            status = store_status_for(exc)
            if status is Status.PROCESSING_FAILURE:
                logger.exception("C-STORE failed unexpectedly")
            else:
                logger.warning("C-STORE answered 0x%04X: %s", int(status), exc)
            return status_dataset(
                status, str(exc) if status is not Status.PROCESSING_FAILURE else "internal error"
            )

    return wrapper  # type: ignore[return-value]


def find_failure_for(exc: BaseException) -> Status:
    """The C-FIND failure status for an exception raised while answering."""
    if isinstance(exc, NotAuthorized):
        return Status.NOT_AUTHORIZED
    if isinstance(exc, InvalidQuery):
        return Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    if isinstance(exc, IndexNotReady):
        return Status.INDEX_LOADING
    return Status.UNABLE_TO_PROCESS


#: What a C-FIND handler yields: ``(status, identifier)``, the status as a code
#: or as a Dataset with an Error Comment (pynetdicom accepts both).
FindResponse = tuple[int | Dataset, Dataset | None]

G = TypeVar("G", bound=Callable[..., Iterator[FindResponse]])


def find_guard(func: G) -> G:
    """Map every exception of a C-FIND handler (a generator) to a final failure status.

    InvalidQuery becomes 0xA900 and IndexNotReady 0xC310, with their
    messages; anything else 0xC300, logged with a trace. Nothing reaches
    pynetdicom's generic handling.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[FindResponse]:
        try:
            yield from func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the one mapping point for C-FIND
            status = find_failure_for(exc)
            if status is Status.UNABLE_TO_PROCESS:
                logger.exception("C-FIND failed unexpectedly")
            else:
                logger.warning("C-FIND answered 0x%04X: %s", int(status), exc)
            # The status as a Dataset carries the Error Comment (0000,0902);
            # a failure has no identifier.
            yield status_dataset(status, str(exc)), None

    return wrapper  # type: ignore[return-value]
