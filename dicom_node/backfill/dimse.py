"""Any PACS over DIMSE: C-FIND by date, then C-GET, or C-MOVE to the node's own AE.

Studies are found with STUDY-level C-FIND (``StudyDate``, ``StudyTime``,
``ModalitiesInStudy=CT``); their CT series with SERIES-level C-FIND
(``Modality=CT``) and the series' instances with IMAGE-level C-FIND, so the
node asks only for the SOP instances it does not hold. An answer that ends
with Cancel (0xFE00) or Out of Resources (0xA700), as PACS do when they stop
at their limit (Orthanc's ``LimitFindResults``), or that reaches
``find_limit`` matches, is reported capped and split by the caller.

Instances come either by C-GET (on the same association, handed to
``deliver`` one by one) or by C-MOVE to ``move_destination`` (the PACS
connects to the node's main AE and stores them there: the PACS must know
that AE's address). Retrieves run ``max_parallel`` associations at a time,
each for up to :data:`UIDS_PER_RETRIEVE` instances.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from dicom_node.backfill.pacing import Pacing, Stopped
from dicom_node.backfill.sources import (
    Deliver,
    FetchReport,
    Found,
    InstanceRef,
    StudyRef,
    Window,
)
from dicom_node.errors import ArchiveError
from dicom_node.net.qr_scu import FindAnswer, QueryRetrieveSCU, RetrieveReport
from dicom_node.settings import Destination

__all__ = ["PacsSource", "UIDS_PER_RETRIEVE"]

logger = logging.getLogger(__name__)

#: SOP Instance UIDs named in one IMAGE-level retrieve (keeps identifiers small).
UIDS_PER_RETRIEVE = 200
#: Final C-FIND statuses that mean "the archive stopped at its limit".
_CAPPED = (0xFE00, 0xA700)


def _identifier(level: str, **keys: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def _values(value: object) -> list[str]:
    """A multi-valued element's values as strings (a single value is one)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


class PacsSource:
    """A PACS read over DIMSE (Study Root Query/Retrieve).

    Parameters
    ----------
    peer : Destination
        The PACS, ``AE@host:port``.
    scu : QueryRetrieveSCU
    pacing : Pacing
    max_parallel : int
        Concurrent retrieve associations.
    move_destination : str, optional
        Retrieve by C-MOVE to this AE title (the node's); None: by C-GET.
    find_limit : int, optional
        The PACS's maximum number of C-FIND matches, for archives that stop
        there without saying so (0xFE00/0xA700 are recognised anyway).
    """

    def __init__(
        self,
        peer: Destination,
        scu: QueryRetrieveSCU,
        *,
        pacing: Pacing,
        max_parallel: int = 2,
        move_destination: str | None = None,
        find_limit: int | None = None,
    ) -> None:
        self.peer = peer
        self.name = f"pacs {peer}"
        self.scu = scu
        self.pacing = pacing
        self.max_parallel = max(1, max_parallel)
        self.move_destination = move_destination
        self.find_limit = find_limit

    def _find(self, identifier: Dataset, what: str) -> FindAnswer:
        answer = self.scu.find(self.peer, identifier)
        if answer.refused is not None:
            raise ArchiveError(f"{self.name}: {what}: {answer.refused}")
        if answer.status is None:
            raise ArchiveError(f"{self.name}: {what}: no answer (timeout or abort)")
        if not answer.complete and answer.status not in _CAPPED:
            raise ArchiveError(f"{self.name}: {what}: C-FIND failed with 0x{answer.status:04X}")
        return answer

    def _capped(self, answer: FindAnswer) -> bool:
        limit = self.find_limit
        return not answer.complete or (limit is not None and len(answer.matches) >= limit)

    def find(self, window: Window) -> Found:
        """STUDY-level C-FIND of the studies with CT in ``window``."""
        keys = {"StudyInstanceUID": "", "StudyDate": window.study_date, "ModalitiesInStudy": "CT"}
        keys["StudyTime"] = window.study_time
        answer = self._find(_identifier("STUDY", **keys), f"find {window}")
        studies = []
        for match in answer.matches:
            uid = str(match.get("StudyInstanceUID", "") or "")
            modalities = _values(match.get("ModalitiesInStudy"))
            if not uid or (modalities and "CT" not in modalities):
                continue  # an archive that ignores ModalitiesInStudy matching
            studies.append(StudyRef(uid, str(match.get("StudyDate", "") or "") or None, uid))
        return Found(tuple(studies), capped=self._capped(answer))

    def instances(self, study: StudyRef) -> list[InstanceRef]:
        """SERIES then IMAGE level C-FIND: the SOP instances of the study's CT series."""
        uid = study.study_instance_uid
        series = self._find(
            _identifier("SERIES", StudyInstanceUID=uid, SeriesInstanceUID="", Modality="CT"),
            f"series of {uid}",
        )
        if not series.complete:
            raise ArchiveError(f"{self.name}: the series list of study {uid} was cut")
        refs: list[InstanceRef] = []
        for match in series.matches:
            if str(match.get("Modality", "") or "") not in ("", "CT"):
                continue
            series_uid = str(match.SeriesInstanceUID)
            images = self._find(
                _identifier(
                    "IMAGE",
                    StudyInstanceUID=uid,
                    SeriesInstanceUID=series_uid,
                    SOPInstanceUID="",
                    SOPClassUID="",
                ),
                f"instances of {series_uid}",
            )
            if not images.complete:
                raise ArchiveError(
                    f"{self.name}: the instance list of series {series_uid} was cut "
                    "(LimitFindInstances?)"
                )
            refs += [
                InstanceRef(
                    sop_instance_uid=str(image.SOPInstanceUID),
                    series_instance_uid=series_uid,
                    sop_class_uid=str(image.get("SOPClassUID", "") or "") or None,
                    size=None,
                    key=str(image.SOPInstanceUID),
                )
                for image in images.matches
            ]
        return refs

    def fetch(
        self, study: StudyRef, instances: Sequence[InstanceRef], deliver: Deliver
    ) -> FetchReport:
        """C-GET (to ``deliver``) or C-MOVE the instances, in chunks, ``max_parallel`` at once."""
        by_series: dict[str, list[InstanceRef]] = defaultdict(list)
        for ref in instances:
            by_series[ref.series_instance_uid].append(ref)
        chunks = [
            (series_uid, refs[start : start + UIDS_PER_RETRIEVE])
            for series_uid, refs in by_series.items()
            for start in range(0, len(refs), UIDS_PER_RETRIEVE)
        ]
        sizes: list[int] = []

        def on_instance(data: bytes, syntax: str, sop_class: str, sop_uid: str) -> None:
            deliver(data, syntax, sop_class, sop_uid)
            sizes.append(len(data))
            try:
                self.pacing.spend(len(data))
            except Stopped:
                pass  # stored: it counts; the association ends with the chunk

        def retrieve(series_uid: str, refs: list[InstanceRef]) -> RetrieveReport:
            self.pacing.wait_for_window()
            identifier = _identifier(
                "IMAGE",
                StudyInstanceUID=study.study_instance_uid,
                SeriesInstanceUID=series_uid,
            )
            identifier.SOPInstanceUID = [r.sop_instance_uid for r in refs]
            if self.move_destination is not None:
                return self.scu.move(self.peer, identifier, self.move_destination)
            classes = sorted({r.sop_class_uid or CTImageStorage for r in refs})
            return self.scu.get(self.peer, identifier, classes, on_instance)

        fetched = 0
        failed: list[str] = []
        with ThreadPoolExecutor(self.max_parallel, thread_name_prefix="pacs-retrieve") as pool:
            futures = [(chunk[1], pool.submit(retrieve, *chunk)) for chunk in chunks]
            for refs, future in futures:
                try:
                    report = future.result()
                except Stopped:
                    continue
                if report.refused is not None or report.status is None:
                    failed.append(f"{len(refs)} instances: {report.refused or 'no answer'}")
                    continue
                fetched += report.completed + report.warning
                if report.failed or report.category == "Failure":
                    failed.append(
                        f"{report.failed} of {len(refs)} instances failed "
                        f"(0x{report.status:04X}) {', '.join(report.failed_sop_instance_uids[:3])}"
                    )
        return FetchReport(fetched, sum(sizes), tuple(failed))
