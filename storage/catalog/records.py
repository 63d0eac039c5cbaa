"""Typed, frozen records that go into the catalog and come out of it.

Callers never see SQL rows or ``dict``s: a received instance goes in as an
:class:`InstanceRecord`, a study comes out as a :class:`StudyRecord`, a nodule
goes in as a :class:`NewNodule` and comes out as a :class:`NoduleRecord`.
(C-FIND matching is the one exception: its rows are keyed by DICOM keyword,
the natural type of a C-FIND identifier; see :mod:`storage.catalog.find`.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from ai.hashing.codes import LAYERS
from storage.catalog.schema import DeliveryState, JobState, ResultKind, SeriesState

__all__ = [
    "Claim",
    "CodeBatch",
    "Delivery",
    "Finished",
    "GeneratedResult",
    "GivenNodule",
    "InstanceRecord",
    "JobRecord",
    "NewNodule",
    "NoduleRecord",
    "STUDY_FIELDS",
    "SeriesSummary",
    "StepKey",
    "StudyRecord",
]

#: Study attributes kept from the first instance of a study (PS3.4 C.6.2.1.1 keys).
STUDY_FIELDS = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
)


@dataclass(frozen=True)
class InstanceRecord:
    """What the catalog keeps of one received instance.

    The study and series attributes only create the study and series rows (the
    first instance of a series); they may be left empty for later instances.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str
    size: int
    sha256: str
    modality: str | None = None
    instance_number: int | None = None
    series_number: int | None = None
    series_description: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    calling_ae_title: str | None = None


@dataclass(frozen=True)
class StudyRecord:
    """One study with its patient."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None


@dataclass(frozen=True)
class SeriesSummary:
    """One row of ``dicom-node status``."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    instance_count: int
    state: SeriesState
    reason: str | None
    last_received_at: float
    study_date: str | None
    patient_name: str | None
    patient_id: str | None


@dataclass(frozen=True)
class JobRecord:
    """One step run on a series for one version (e.g. the model version)."""

    series_instance_uid: str
    step: str
    version: str
    state: JobState
    attempts: int
    worker: str | None
    outcome: SeriesState | None
    """The series state the step left (None until it finished)."""
    detail: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    lease_expires_at: float | None = None
    """While running: when the holder's lease runs out unless it renews it."""

    @property
    def finished(self) -> bool:
        """True when the step ran to an outcome or failed."""
        return self.state in (JobState.DONE, JobState.FAILED)


@dataclass(frozen=True)
class StepKey:
    """What the catalog needs to know of a processing step to find its due jobs."""

    name: str
    version: str
    requires: SeriesState
    """The series state the step starts from."""


class Finished(Enum):
    """What :meth:`WorkflowCatalog.finish` did."""

    MOVED = "moved"
    """The job finished and the series moved to the step's outcome."""
    REOPENED = "reopened"
    """The job finished; the series had left ``processing`` (a late instance reopened it)."""
    LOST = "lost"
    """Nothing: the job was no longer the claimant's (its lease ran out and it was taken over)."""


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: one step to run on one series, under a renewed lease."""

    series_instance_uid: str
    step: str
    version: str
    worker: str
    """The holder (``host:pid:token:thread``); every write of the job checks it."""
    attempts: int
    """Claims of this job so far, this one included; more than one means that
    earlier holders stopped without finishing (killed, lost)."""


@dataclass(frozen=True)
class GeneratedResult:
    """An object the node made (SR, key images), kept as a result of its study."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    """The generated object's own series."""
    source_series_instance_uid: str
    """The received series it describes."""
    kind: ResultKind
    model_version: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str
    size: int
    sha256: str
    created_at: float
    revision: int = 1
    """1 for the first object of its study, model version and kind; each
    replacement (content changed) is the next revision, in the same series."""
    content_digest: str | None = None
    """SHA-256 of what the content was made from: equal digests, equal content."""
    superseded_by: str | None = None
    """SOP Instance UID of the revision that replaced this one; None while current."""


@dataclass(frozen=True)
class NoduleMeasures:
    """Where a nodule is and what it measures: the fields found and given nodules share."""

    nodule_index: int
    """Position in the series' list of nodules (stable per series and model version)."""
    center_xyz: tuple[float, float, float]
    """World LPS mm, in the series' frame of reference."""
    diameter_mm: float
    """Volume-equivalent diameter."""
    long_axis_mm: float
    volume_mm3: float
    mean_hu: float
    peak_hu: float
    texture: str
    """``solid``, ``part-solid`` or ``ground-glass`` (``ai.classes.TEXTURES``)."""
    laterality: str
    """``right`` or ``left`` (the patient's)."""
    confidence: float

    def measures(self) -> dict[str, Any]:
        """The :class:`NoduleMeasures` fields, by name (to make another kind of nodule)."""
        return {f.name: getattr(self, f.name) for f in fields(NoduleMeasures)}

    def columns(self) -> dict[str, Any]:
        """The catalog columns: every field by its name, ``center_xyz`` as ``center_x/y/z``."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "center_xyz"}
        x, y, z = self.center_xyz
        return values | {"center_x": float(x), "center_y": float(y), "center_z": float(z)}

    @classmethod
    def from_columns(cls, row: Any, **converted: Any) -> Self:
        """Rebuild from a catalog row written from :meth:`columns`; ``converted`` gives fields."""
        values = {
            f.name: getattr(row, f.name)
            for f in fields(cls)
            if f.name != "center_xyz" and f.name not in converted
        }
        center = (float(row.center_x), float(row.center_y), float(row.center_z))
        return cls(**values, center_xyz=center, **converted)


@dataclass(frozen=True)
class NewNodule(NoduleMeasures):
    """A nodule found in a series, as the processor hands it to the catalog.

    ``confidence`` is the false-positive reduction network's probability.
    """

    size_class: int
    """Diameter class 0..7 of the measured diameter (``ai.classes``)."""
    predicted_size_class: int
    """The hashing network's class: the label the index filters on."""
    predicted_texture: str
    shallow: bytes
    middle: bytes
    deep: bytes
    """Packed hash codes of the three layers (``ai.hashing.codes``)."""
    embedding: bytes
    """float32 embedding for the rerank."""
    thumbnail: bytes | None
    """Square uint8 image of the ROI's central slice, for galleries."""

    def code_row(self) -> npt.NDArray[np.uint8]:
        """``(code_size,)`` uint8: the layers in ``ai.hashing.codes.LAYERS`` order."""
        return np.frombuffer(b"".join(getattr(self, layer) for layer in LAYERS), np.uint8)

    def embedding_vector(self) -> npt.NDArray[np.float32]:
        """The float32 embedding."""
        return np.frombuffer(self.embedding, np.float32)

    def thumbnail_image(self) -> npt.NDArray[np.uint8] | None:
        """The thumbnail as a square uint8 image, or None."""
        if not self.thumbnail:
            return None
        side = int(round(len(self.thumbnail) ** 0.5))
        return np.frombuffer(self.thumbnail, np.uint8).reshape(side, side)


@dataclass(frozen=True)
class GivenNodule(NoduleMeasures):
    """A nodule given with a reference series (readers' centre and mask), not detected.

    The centre is the readers', the measures those of their mask
    (``ai.measure.mask_measures``), the texture from their rating
    (``ai.readers.lidc_crops.texture_class``), ``confidence`` the share of the
    readers who marked it (LIDC-IDRI: of four).
    """

    source: str
    """The collection (``LIDC-IDRI``)."""
    source_nodule: str
    """The nodule in it (``LIDC-IDRI-0001 nodule 1``)."""
    readers: int
    ratings: dict[str, int]
    """The readers' consensus ratings (LIDC: the nine characteristics)."""


@dataclass(frozen=True)
class NoduleRecord(NewNodule):
    """A stored nodule with its keys and its study's patient and date."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    model_version: str
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    accession_number: str | None


@dataclass(frozen=True)
class CodeBatch:
    """Codes of many nodules at once, for building the in-memory index."""

    ids: npt.NDArray[np.int64]
    """``(n,)`` nodule ids."""
    codes: npt.NDArray[np.uint8]
    """``(n, code_size)`` code rows."""
    embeddings: npt.NDArray[np.float32]
    """``(n, d)`` float32 embeddings."""
    labels: npt.NDArray[np.uint8]
    """``(n,)`` predicted size classes."""

    def __len__(self) -> int:
        return int(self.ids.size)


@dataclass(frozen=True)
class Delivery:
    """One object to send to one destination."""

    id: int
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None
