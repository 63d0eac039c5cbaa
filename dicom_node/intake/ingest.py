"""Receiving one instance: validate, store durably, catalog, then acknowledge.

The C-STORE handler calls :meth:`Ingest.receive` and maps what it raises to a
status (``dicom_node.net.status``). Order matters for "no data loss": the bytes
are on disk (fsynced) before the catalog row is committed, and the handler
returns Success only after both; if the catalog fails, a file written by this
call is removed so that nothing unacknowledged stays behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.errors import InvalidDataset, MissingUID, SOPClassMismatch, UIDMismatch
from storage.catalog import Catalog, GeneratedResult, InstanceRecord, ResultKind
from storage.errors import CatalogError, InstanceConflict
from storage.instances import InstanceStore, PutOutcome, StoredInstance
from storage.uids import instance_relative_path, is_valid_uid, validate_uid

__all__ = ["Ingest", "Received"]

logger = logging.getLogger(__name__)

# Column lengths of the catalog (VR maximums, PS3.5 6.2).
_TEXT_LIMITS = {
    "PatientID": 64,
    "PatientName": 324,
    "PatientBirthDate": 8,
    "PatientSex": 16,
    "StudyDate": 8,
    "StudyTime": 16,
    "AccessionNumber": 16,
    "StudyID": 16,
    "StudyDescription": 64,
    "ReferringPhysicianName": 324,
    "SeriesDescription": 64,
    "Modality": 16,
}


@dataclass(frozen=True)
class Received:
    """What happened to one received instance."""

    sop_instance_uid: str
    series_instance_uid: str
    new: bool
    """False when the identical instance was already stored and catalogued."""
    relative_path: str
    """Where the file is, below the instance store root."""


def _text(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed optional value is not fatal
        return None
    if value is None or value == "":
        return None
    return str(value)[: _TEXT_LIMITS[keyword]]


def _integer(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:  # noqa: BLE001 - IS values in the wild are often malformed
        return None


def _series_attributes(dataset: Dataset) -> dict[str, Any]:
    """Patient, study and series attributes for the catalog rows."""
    return {
        "modality": _text(dataset, "Modality"),
        "series_number": _integer(dataset, "SeriesNumber"),
        "series_description": _text(dataset, "SeriesDescription"),
        "patient_id": _text(dataset, "PatientID"),
        "patient_name": _text(dataset, "PatientName"),
        "patient_birth_date": _text(dataset, "PatientBirthDate"),
        "patient_sex": _text(dataset, "PatientSex"),
        "study_date": _text(dataset, "StudyDate"),
        "study_time": _text(dataset, "StudyTime"),
        "accession_number": _text(dataset, "AccessionNumber"),
        "study_id": _text(dataset, "StudyID"),
        "study_description": _text(dataset, "StudyDescription"),
        "referring_physician_name": _text(dataset, "ReferringPhysicianName"),
    }


def _shown_uid(value: str) -> str:
    """A UID from a request as it may appear in a message (and a log): never verbatim
    when it is not a UID, since it could hold anything the peer put there."""
    return value if is_valid_uid(value) else f"(not a UID, {len(value)} characters)"


def _required_uid(dataset: Dataset, keyword: str) -> str:
    try:
        value: Any = dataset.get(keyword)
    except Exception as exc:  # noqa: BLE001
        raise InvalidDataset(f"{keyword} cannot be decoded") from exc
    if value is None or str(value).strip() == "":
        raise MissingUID(f"{keyword} is missing or empty")
    return validate_uid(str(value), keyword)


def _check_pixel_data(dataset: Dataset, transfer_syntax_uid: str) -> None:
    """Raise InvalidDataset when image pixel data is missing or truncated.

    pydicom reads a truncated stream leniently (a short native Pixel Data
    value, or an encapsulated one dropped at end of file), so completeness is
    checked here, before the instance is acknowledged.
    """
    if "Rows" not in dataset or "Columns" not in dataset:
        return  # not an image (SR, dose report, presentation state ...)
    if not any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InvalidDataset("image has Rows/Columns but no Pixel Data (missing or truncated)")
    if "PixelData" not in dataset or UID(transfer_syntax_uid).is_compressed:
        return
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        bits = int(dataset.BitsAllocated)
        expected = int(dataset.Rows) * int(dataset.Columns) * frames * samples * bits // 8
    except Exception as exc:  # noqa: BLE001
        raise InvalidDataset(
            "image pixel description (Rows, Columns, BitsAllocated) is invalid"
        ) from exc
    actual = len(dataset.PixelData)
    if actual < expected:
        raise InvalidDataset(
            f"Pixel Data is {actual} bytes; the image needs {expected} (truncated)"
        )


class Ingest:
    """Validate, store and catalog received instances.

    Parameters
    ----------
    store : InstanceStore
    catalog : Catalog
    """

    def __init__(self, store: InstanceStore, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog

    def receive(
        self,
        dataset: Dataset,
        encoded: bytes,
        *,
        transfer_syntax_uid: str,
        affected_sop_class_uid: str,
        affected_sop_instance_uid: str,
        calling_ae_title: str | None = None,
    ) -> Received:
        """Store one instance durably and catalog it.

        Parameters
        ----------
        dataset : pydicom.dataset.Dataset
            The decoded dataset (only attributes are read; pixel data is not).
        encoded : bytes
            The Part 10 bytes to keep, exactly as received plus file meta.
        transfer_syntax_uid : str
            The presentation context's transfer syntax.
        affected_sop_class_uid, affected_sop_instance_uid : str
            From the C-STORE request.
        calling_ae_title : str, optional
            The sender, for the catalog.

        Raises
        ------
        MissingUID, UnsafeUIDError, UIDMismatch, SOPClassMismatch, InvalidDataset
            The dataset is unusable; nothing is stored.
        InstanceConflict
            Other content is stored under this SOP Instance UID; kept.
        InsufficientStorage, InstanceWriteError, CatalogError
            Nothing is kept; the sender should retry.
        """
        sop_class_uid = _required_uid(dataset, "SOPClassUID")
        sop_instance_uid = _required_uid(dataset, "SOPInstanceUID")
        study_instance_uid = _required_uid(dataset, "StudyInstanceUID")
        series_instance_uid = _required_uid(dataset, "SeriesInstanceUID")
        if sop_class_uid != affected_sop_class_uid:
            raise SOPClassMismatch(
                f"dataset SOPClassUID {sop_class_uid} is not the request's "
                f"{_shown_uid(affected_sop_class_uid)}"
            )
        if sop_instance_uid != affected_sop_instance_uid:
            raise UIDMismatch(
                f"dataset SOPInstanceUID {sop_instance_uid} is not the request's "
                f"{_shown_uid(affected_sop_instance_uid)}"
            )
        _check_pixel_data(dataset, transfer_syntax_uid)
        # Study and series attributes only matter for the first instance of a
        # series (they create the rows); skip decoding them for the others.
        first_of_series = not self.catalog.intake.knows_series(series_instance_uid)
        if first_of_series:
            ours = self.catalog.intake.generated_result(sop_instance_uid)
            if ours is not None:
                # A PACS forwarding a whole study sends our own SR back: it is
                # kept already, as a result, and must not open a series.
                logger.info("our own result %s received back; kept as it was", sop_instance_uid)
                return Received(sop_instance_uid, series_instance_uid, False, ours.relative_path)
        stored = self.store.put(study_instance_uid, series_instance_uid, sop_instance_uid, encoded)
        record = InstanceRecord(
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            relative_path=stored.relative_path,
            size=stored.size,
            sha256=stored.sha256,
            instance_number=_integer(dataset, "InstanceNumber"),
            calling_ae_title=calling_ae_title,
            **(_series_attributes(dataset) if first_of_series else {}),
        )
        new = self._catalogue(stored, lambda: self.catalog.intake.record_instance(record))
        if stored.outcome is PutOutcome.IDENTICAL and not new:
            logger.info(
                "instance %s re-sent with identical content; nothing rewritten", sop_instance_uid
            )
        return Received(sop_instance_uid, series_instance_uid, new, stored.relative_path)

    def keep(
        self,
        dataset: Dataset,
        *,
        kind: ResultKind,
        source_series_instance_uid: str,
        model_version: str,
        revision: int = 1,
        content_digest: str | None = None,
    ) -> GeneratedResult:
        """Store an object the node made (SR, key images) as a result of its study.

        The file is kept durably like a received instance, but catalogued as a
        generated result: it opens no series, so it is never completed,
        processed or shown as a received series.

        Parameters
        ----------
        dataset : pydicom.dataset.Dataset
            A complete dataset with file meta (highdicom objects have one).
        kind : ResultKind
        source_series_instance_uid : str
            The received series whose processing made it.
        model_version : str
        revision : int
            1, or the revision this one replaces plus one.
        content_digest : str, optional
            What the content was made from (equal digests, equal content).

        Returns
        -------
        GeneratedResult

        Raises
        ------
        InstanceConflict, InsufficientStorage, InstanceWriteError, CatalogError
            Nothing is kept.
        """
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        study_instance_uid = _required_uid(dataset, "StudyInstanceUID")
        series_instance_uid = _required_uid(dataset, "SeriesInstanceUID")
        sop_instance_uid = _required_uid(dataset, "SOPInstanceUID")
        data = buffer.getvalue()
        try:
            stored = self.store.put(study_instance_uid, series_instance_uid, sop_instance_uid, data)
        except InstanceConflict:
            # Our UIDs are derived from the result's inputs: a file there without
            # a catalog row is this very result, left by an interrupted run.
            if self.catalog.intake.generated_result(sop_instance_uid) is not None:
                raise
            path = instance_relative_path(study_instance_uid, series_instance_uid, sop_instance_uid)
            self.store.remove(path.as_posix())
            stored = self.store.put(study_instance_uid, series_instance_uid, sop_instance_uid, data)
        result = GeneratedResult(
            sop_instance_uid=sop_instance_uid,
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            source_series_instance_uid=source_series_instance_uid,
            kind=kind,
            model_version=model_version,
            sop_class_uid=_required_uid(dataset, "SOPClassUID"),
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
            relative_path=stored.relative_path,
            size=stored.size,
            sha256=stored.sha256,
            created_at=time.time(),
            revision=revision,
            content_digest=content_digest,
        )
        self._catalogue(stored, lambda: self.catalog.intake.record_result(result))
        return result

    def _catalogue(self, stored: StoredInstance, record: Callable[[], bool]) -> bool:
        """Write the catalog row of a stored file; if that fails, remove a file this call wrote.

        Nothing unacknowledged (and unknown to the catalog) stays on disk.
        """
        try:
            return record()
        except CatalogError:
            if stored.outcome is PutOutcome.STORED:
                self.store.remove(stored.relative_path)
            raise
