"""What a backfill reads from: an archive of studies, asked one window of dates at a time.

Two sources implement :class:`Source`: Orthanc over its REST API
(:mod:`dicom_node.backfill.orthanc`) and any PACS over DIMSE
(:mod:`dicom_node.backfill.dimse`). A source answers three questions: which
studies fall in a :class:`Window` of StudyDate (and StudyTime), which CT
instances a study holds, and how to bring instances to the node. Archives cap
their answers (Orthanc's ``LimitFindResults``, a PACS's maximum number of
C-FIND matches); a source says when an answer was cut (``capped``) and
:func:`find_all` splits the window until none is.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Deliver",
    "FetchReport",
    "Found",
    "InstanceRef",
    "Source",
    "StudyRef",
    "Window",
    "find_all",
]

logger = logging.getLogger(__name__)

#: First and last StudyDate a whole-archive query is split over when it is capped.
ARCHIVE_FIRST = datetime.date(1900, 1, 1)
ARCHIVE_LAST = datetime.date(2099, 12, 31)
#: A window is not split below this many seconds of StudyTime.
MIN_TIME_SPLIT = 60

#: Hands one fetched instance to the node: ``(Part 10 bytes, transfer syntax
#: UID, SOP Class UID, SOP Instance UID)``; durable when it returns.
Deliver = Callable[[bytes, str, str, str], None]


@dataclass(frozen=True)
class Window:
    """A range of StudyDate (and StudyTime within one day); no dates = the whole archive."""

    first: datetime.date | None = None
    last: datetime.date | None = None
    start_second: int = 0
    end_second: int = 86399

    @classmethod
    def day(cls, date: datetime.date) -> Window:
        """One whole StudyDate."""
        return cls(date, date)

    @property
    def whole_archive(self) -> bool:
        """True when no date bounds the window."""
        return self.first is None

    @property
    def full_day(self) -> bool:
        """True for one StudyDate without a time range: a checkpoint unit."""
        return self.first is not None and self.first == self.last and not self.time_range

    @property
    def study_date(self) -> str:
        """The StudyDate matching value (PS3.4 C.2.2.2.5 range), or "" for any date."""
        if self.first is None or self.last is None:
            return ""
        first, last = f"{self.first:%Y%m%d}", f"{self.last:%Y%m%d}"
        return first if first == last else f"{first}-{last}"

    @property
    def time_range(self) -> bool:
        """True when the window covers only part of its day."""
        return self.start_second > 0 or self.end_second < 86399

    @property
    def study_time(self) -> str:
        """The StudyTime matching value, or "" for the whole day."""
        if not self.time_range:
            return ""
        return f"{_hhmmss(self.start_second)}-{_hhmmss(self.end_second)}"

    def split(self) -> tuple[Window, Window] | None:
        """Two halves of this window, or None when it cannot be split further."""
        if self.first is None or self.last is None:
            return Window(ARCHIVE_FIRST, ARCHIVE_LAST).split()
        if self.first < self.last:
            middle = self.first + (self.last - self.first) // 2
            return (
                Window(self.first, middle),
                Window(middle + datetime.timedelta(days=1), self.last),
            )
        if self.end_second - self.start_second < MIN_TIME_SPLIT:
            return None
        middle_second = (self.start_second + self.end_second) // 2
        return (
            Window(self.first, self.last, self.start_second, middle_second),
            Window(self.first, self.last, middle_second + 1, self.end_second),
        )

    def __str__(self) -> str:
        if self.whole_archive:
            return "whole archive"
        return self.study_date + (f" {self.study_time}" if self.study_time else "")


def _hhmmss(second: int) -> str:
    return f"{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}"


@dataclass(frozen=True)
class StudyRef:
    """A study of the archive."""

    study_instance_uid: str
    study_date: str | None
    key: str
    """The source's own handle (Orthanc resource id; the StudyInstanceUID over DIMSE)."""


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a CT series of a study."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str | None
    size: int | None
    """Bytes, when the source tells it before fetching (Orthanc does, DIMSE does not)."""
    key: str
    """The source's own handle (Orthanc resource id; the SOP Instance UID over DIMSE)."""


@dataclass(frozen=True)
class Found:
    """The studies of one query, and whether the archive cut the answer."""

    studies: tuple[StudyRef, ...]
    capped: bool


@dataclass(frozen=True)
class FetchReport:
    """What one fetch brought."""

    fetched: int
    bytes: int
    failed: tuple[str, ...] = ()
    """SOP Instance UIDs that did not arrive, or a reason per failure."""


class Source(Protocol):
    """An archive a backfill reads."""

    name: str
    """Checkpoint key: the archive's address (never holds a password)."""

    def find(self, window: Window) -> Found:
        """Studies with CT in ``window``; ``capped`` if the archive cut the answer."""
        ...

    def instances(self, study: StudyRef) -> list[InstanceRef]:
        """The instances of the study's CT series."""
        ...

    def fetch(
        self, study: StudyRef, instances: Sequence[InstanceRef], deliver: Deliver
    ) -> FetchReport:
        """Bring ``instances`` to the node (through ``deliver``, or by C-MOVE)."""
        ...


def find_all(source: Source, window: Window) -> tuple[list[StudyRef], list[Window]]:
    """Every study of ``window``: split where the archive caps the answer.

    Returns
    -------
    studies : list of StudyRef
        Each study once, in the order found.
    incomplete : list of Window
        Windows still capped at the smallest split (a minute of one day):
        studies there may be missing; the caller says so.
    """
    found = source.find(window)
    if not found.capped:
        return list(found.studies), []
    halves = window.split()
    if halves is None:
        logger.warning(
            "%s: the archive caps the answer for %s even split to a minute; "
            "%d studies there, more may be missing",
            source.name,
            window,
            len(found.studies),
        )
        return list(found.studies), [window]
    logger.info("%s: answer for %s capped; splitting it", source.name, window)
    studies: dict[str, StudyRef] = {}
    incomplete: list[Window] = []
    for half in halves:
        part, missing = find_all(source, half)
        studies.update((s.study_instance_uid, s) for s in part)
        incomplete += missing
    if window.whole_archive:
        # Studies without a StudyDate match no date range: keep those of the capped answer.
        studies.update((s.study_instance_uid, s) for s in found.studies if not s.study_date)
    return list(studies.values()), incomplete
