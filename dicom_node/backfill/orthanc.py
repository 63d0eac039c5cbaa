"""An Orthanc archive over its REST API, with ``orthanc-api-client`` (the Orthanc team's client).

Studies are found with ``/tools/find`` (``StudyDate``, ``StudyTime`` and
``ModalitiesInStudy=CT``), their CT series and instances are listed from
``/studies/{id}/series`` and ``/series/{id}/instances`` (with each file's
size, so ``--dry-run`` can say how much a run would move), and each instance
file is downloaded as it is stored (``/instances/{id}/file``), up to
``max_parallel`` at a time, paced by :class:`dicom_node.backfill.pacing.Pacing`.

Orthanc's ``LimitFindResults`` cuts ``/tools/find`` answers too, and its
``Since``/``Limit`` paging does not page past that cut; the source learns
the cut once (a universal query against ``/statistics``) and reports capped
answers so that :func:`dicom_node.backfill.sources.find_all` splits them.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import pydicom

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

__all__ = ["INSTALL_HINT", "OrthancSource"]

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "dicom-node backfill --orthanc needs orthanc-api-client: pip install orthanc-api-client"
)
#: Studies asked per ``/tools/find``; a full page means "there may be more": split.
PAGE = 1000
#: Modalities of the series the node processes.
MODALITIES = ("CT",)


def _client_class() -> Any:
    try:
        from orthanc_api_client import OrthancApiClient
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ArchiveError(INSTALL_HINT) from exc
    return OrthancApiClient


def _api_errors() -> tuple[type[BaseException], ...]:
    """What the client raises: its own exceptions, and requests' that it lets through."""
    import requests
    from orthanc_api_client.exceptions import OrthancApiException

    return (OrthancApiException, requests.RequestException, ValueError)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without credentials, user, password)`` of ``http://user:password@host:port/``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--orthanc: {url!r} is not an http(s):// URL")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return clean, user, password


class OrthancSource:
    """An Orthanc server read over REST.

    Parameters
    ----------
    url : str
        ``http(s)://[user:password@]host:port/``. Without credentials in the
        URL, ``requests`` reads them from ``~/.netrc``.
    pacing : Pacing
    max_parallel : int
        Concurrent downloads.
    timeout : float
        Seconds per HTTP request.
    """

    def __init__(
        self, url: str, *, pacing: Pacing, max_parallel: int = 4, timeout: float = 60.0
    ) -> None:
        root, user, password = split_credentials(url)
        self.name = f"orthanc {root}"
        self.pacing = pacing
        self.max_parallel = max(1, max_parallel)
        self.timeout = timeout
        self._errors = _api_errors()
        self._client = _client_class()(
            root, user=user, pwd=password, pool_maxsize=self.max_parallel + 2
        )
        self._full: int | None = None  # an answer this long may have been cut

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except self._errors as exc:
            raise ArchiveError(f"{self.name}: {what}: {exc}") from exc

    def _answer_limit(self) -> int:
        """How many studies in one answer mean "cut": Orthanc's LimitFindResults + 1, or PAGE."""
        if self._full is None:
            total = self._call("statistics", self._client.get_statistics).studies_count
            answered = len(
                self._call(
                    "find",
                    self._client.post,
                    "tools/find",
                    json={"Level": "Study", "Query": {}, "Limit": PAGE},
                    timeout=self.timeout,
                ).json()
            )
            if answered < min(PAGE, total):
                self._full = answered  # Orthanc answers LimitFindResults + 1 when it cuts
                logger.info(
                    "%s caps find answers at %d studies (LimitFindResults)",
                    self.name,
                    answered - 1,
                )
            else:
                self._full = PAGE
        return self._full

    def find(self, window: Window) -> Found:
        """Studies with CT in ``window`` (``/tools/find``)."""
        full = self._answer_limit()
        query = {"ModalitiesInStudy": "\\".join(MODALITIES)}
        if window.study_date:
            query["StudyDate"] = window.study_date
        if window.study_time:
            query["StudyTime"] = window.study_time
        studies = self._call(f"find {window}", self._client.studies.find, query=query, limit=PAGE)
        refs = tuple(
            StudyRef(
                study_instance_uid=str(study.main_dicom_tags.get("StudyInstanceUID")),
                study_date=study.main_dicom_tags.get("StudyDate") or None,
                key=study.orthanc_id,
            )
            for study in studies
        )
        return Found(refs, capped=len(refs) >= full)

    def instances(self, study: StudyRef) -> list[InstanceRef]:
        """The instances of the study's CT series, with their file sizes."""
        get = self._client.get_json
        refs: list[InstanceRef] = []
        for series in self._call(
            "series", get, f"studies/{study.key}/series", timeout=self.timeout
        ):
            tags = series.get("MainDicomTags", {})
            if tags.get("Modality") not in MODALITIES:
                continue
            listed = self._call(
                "instances", get, f"series/{series['ID']}/instances", timeout=self.timeout
            )
            for instance in listed:
                refs.append(
                    InstanceRef(
                        sop_instance_uid=str(instance["MainDicomTags"]["SOPInstanceUID"]),
                        series_instance_uid=str(tags["SeriesInstanceUID"]),
                        sop_class_uid=None,
                        size=int(instance.get("FileSize", 0)) or None,
                        key=str(instance["ID"]),
                    )
                )
        return refs

    def fetch(
        self, study: StudyRef, instances: Sequence[InstanceRef], deliver: Deliver
    ) -> FetchReport:
        """Download the instance files, ``max_parallel`` at a time, and deliver each.

        A stop request lets the downloads in flight finish and be delivered;
        the others are not started.
        """
        failed: list[str] = []
        fetched = size = 0

        def one(ref: InstanceRef) -> int:
            self.pacing.wait_for_window()
            data: bytes = self._call(
                f"instance {ref.sop_instance_uid}",
                self._client.get_binary,
                f"instances/{ref.key}/file",
                timeout=self.timeout,
            )
            meta = pydicom.dcmread(
                BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
            ).file_meta
            deliver(
                data,
                str(meta.TransferSyntaxUID),
                str(meta.MediaStorageSOPClassUID),
                ref.sop_instance_uid,
            )
            try:
                self.pacing.spend(len(data))
            except Stopped:
                pass  # delivered: it counts; the next one is not started
            return len(data)

        with ThreadPoolExecutor(self.max_parallel, thread_name_prefix="orthanc-fetch") as pool:
            futures = [(ref, pool.submit(one, ref)) for ref in instances]
            for ref, future in futures:
                try:
                    size += future.result()
                    fetched += 1
                except Stopped:
                    continue
                except Exception as exc:  # noqa: BLE001 - one instance fails, the study says why
                    logger.warning("instance %s not fetched: %s", ref.sop_instance_uid, exc)
                    failed.append(f"{ref.sop_instance_uid}: {exc}")
        return FetchReport(fetched, size, tuple(failed))
