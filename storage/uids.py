"""UID validation and the only place where a file path is made from a UID.

A UID received over the network becomes part of a path only after
:func:`validate_uid` has accepted it: digits and dots, no empty or
leading-zero components, at most 64 characters (PS3.5 section 9.1).
"""

from __future__ import annotations

import re
from pathlib import Path

from storage.errors import UnsafeUIDError

__all__ = ["instance_relative_path", "is_valid_uid", "validate_uid"]

# PS3.5 9.1: components of digits separated by "."; a component has no
# leading zero unless it is the single digit 0; total length <= 64.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """Return True when ``value`` is a syntactically valid DICOM UID."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_RE.fullmatch(value) is not None
    )


def validate_uid(value: object, keyword: str = "UID") -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise.

    Parameters
    ----------
    value : object
        The candidate UID (normally a ``str`` from a dataset).
    keyword : str
        DICOM keyword used in the error message, e.g. ``"SOPInstanceUID"``.

    Returns
    -------
    str
        The UID, unchanged.

    Raises
    ------
    UnsafeUIDError
        If the value is missing, empty, longer than 64 characters or holds
        anything but digits and single dots.
    """
    if value is None or value == "":
        raise UnsafeUIDError(f"{keyword} is missing or empty")
    if not isinstance(value, str):
        raise UnsafeUIDError(f"{keyword} is not a string")
    if len(value) > MAX_UID_LENGTH:
        raise UnsafeUIDError(f"{keyword} is {len(value)} characters long (maximum 64)")
    if _UID_RE.fullmatch(value) is None:
        # Never echo the value itself: it may be anything a peer sent.
        raise UnsafeUIDError(f"{keyword} is not a valid UID (digits and dots only, PS3.5 9.1)")
    return value


def instance_relative_path(
    study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
) -> Path:
    """Return ``<study>/<series>/<sop>.dcm`` after validating the three UIDs.

    Raises
    ------
    UnsafeUIDError
        If any UID is not valid.
    """
    return (
        Path(validate_uid(study_instance_uid, "StudyInstanceUID"))
        / validate_uid(series_instance_uid, "SeriesInstanceUID")
        / f"{validate_uid(sop_instance_uid, 'SOPInstanceUID')}.dcm"
    )
