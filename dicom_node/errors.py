"""Exceptions raised by ``dicom_node``.

::

    NodeError
     ├── SettingsError      bad configuration: file, environment or flags
     ├── InvalidDataset     a received dataset cannot be stored (maps to a C-STORE failure)
     │    ├── MissingUID         a required UID is absent or empty
     │    ├── UIDMismatch        dataset UID differs from the DIMSE command's
     │    └── SOPClassMismatch   dataset SOP class differs from the command's
     ├── InvalidQuery       a C-FIND identifier we cannot answer (0xA900)
     ├── NotAuthorized      the calling AE lacks the permission for a request (0x0124)
     ├── ListenError        an AE cannot listen on its address and port
     ├── ArchiveError       the archive a backfill reads is unreachable or refuses
     ├── HandoffError       the running node refused instances a backfill handed it
     └── IndexNotReady      the similarity index is still loading after a start (0xC310)

A destination that refuses or does not answer is not an exception: the SCU
reports it (``dicom_node.net.scu.SendReport``) and the outbox decides.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "HandoffError",
    "IndexNotReady",
    "InvalidDataset",
    "InvalidQuery",
    "ListenError",
    "MissingUID",
    "NodeError",
    "NotAuthorized",
    "SOPClassMismatch",
    "SettingsError",
    "UIDMismatch",
]


class NodeError(Exception):
    """Base class of every error raised by ``dicom_node``."""


class SettingsError(NodeError, ValueError):
    """The configuration is invalid; the message names the key and the fix."""


class InvalidDataset(NodeError):
    """A received dataset cannot be decoded or is inconsistent."""


class MissingUID(InvalidDataset):
    """A required UID is absent or empty."""


class UIDMismatch(InvalidDataset):
    """The dataset's SOP Instance UID differs from the C-STORE request's."""


class SOPClassMismatch(InvalidDataset):
    """The dataset's SOP Class UID differs from the C-STORE request's."""


class InvalidQuery(NodeError):
    """A C-FIND identifier is malformed or asks for something unsupported."""


class NotAuthorized(NodeError):
    """The calling AE title may not make this request (``[access]``)."""


class ListenError(NodeError, OSError):
    """An AE cannot bind its address and port; the message names the AE and the port."""


class ArchiveError(NodeError):
    """The archive a backfill reads (Orthanc, a PACS) cannot be reached or refuses."""


class HandoffError(NodeError):
    """The running node did not take instances a backfill handed to it over DICOM."""


class IndexNotReady(NodeError):
    """The similarity index is still loading (a node just started); ask again shortly."""
