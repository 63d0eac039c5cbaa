"""The reference library: public nodule crops as CT series in the node, their nodules given.

``dicom-node import-crops --nodules DIR`` (DIR laid out like ``lidc-nodules``:
``nodules.csv``, the HU crops and the readers' consensus masks as NIfTI, read
by :mod:`ai.readers.lidc_crops`) makes each crop a CT Image Storage series
(PS3.3 A.3) of its patient's reference study, and stores its instances with
:meth:`Ingest.receive`, the C-STORE handler's own call (file fsynced, catalog
row), so C-FIND, C-MOVE/C-GET and ``dicom-node status`` see them as any study.
Its nodule is not detected but given: the readers' centre, the size and
density of the readers' mask (:func:`ai.measure.mask_measures`), the texture
of their rating and the share of readers who marked it, kept in the catalog's
``reference`` part with the nine ratings; encoded from the stored series by
the model the node loads (:func:`dicom_node.processing.analysis.given_nodules`,
which the worker calls too) and written with ``NoduleCatalog.replace``. The
series is then marked ``reference`` with its ``analysis`` job done for that
model version: no worker detects on it, and no results are made for it.

UIDs derive from the collection's names (:func:`dicom_node.results.identity.reference_uid`)
and the datasets hold no time of import, so importing again writes nothing:
a crop already indexed for the model version is passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ai.measure import mask_measures
from ai.readers.lidc_crops import CropNodule, load_crop, read_nodule_table, texture_class
from ai.types import Volume
from ai.volume import load_series
from dicom_node.intake.ingest import Ingest
from dicom_node.model import LoadedModel
from dicom_node.processing.analysis import AnalysisStep, given_nodules, reference_reason
from dicom_node.processing.reading import read_datasets
from dicom_node.results.identity import reference_uid
from storage.catalog import Catalog, GivenNodule

__all__ = ["CALLING_AE_TITLE", "ImportReport", "crop_datasets", "given_of", "import_crops"]

logger = logging.getLogger(__name__)

#: The calling AE title the catalog records for imported instances.
CALLING_AE_TITLE = "IMPORT_CROPS"
SOURCE = "LIDC-IDRI"
LICENCE = "CC BY 3.0"
_READERS = 4  # LIDC-IDRI: four readers per scan


@dataclass
class ImportReport:
    """What one import did."""

    imported: int = 0
    """Crops stored and encoded now."""
    unchanged: int = 0
    """Crops already indexed for this model version: nothing written."""
    excluded: int = 0
    """Crops of the excluded patients."""
    skipped: list[str] = field(default_factory=list)
    """``"<patient> <nodule>: why"`` of crops left out (centre outside the crop)."""
    instances: int = 0
    """Instances stored now (new files)."""


def _ds(value: float) -> str:
    """A DS string of at most 16 characters (10 digits hold the NIfTI's float32 geometry)."""
    text = f"{value:.10g}"
    return text if text != "-0" else "0"


def crop_datasets(volume: Volume, nodule: CropNodule) -> list[Dataset]:
    """The CT Image Storage datasets of one crop, slice ``k`` as InstanceNumber ``k + 1``.

    Stored values are the crop's int16 HU (PixelRepresentation 1,
    RescaleSlope 1, RescaleIntercept 0); ImagePositionPatient and
    ImageOrientationPatient come from the NIfTI's LPS origin and direction,
    PixelSpacing and SliceThickness from its spacing. PatientID and
    PatientName are the LIDC patient id; every UID derives from the
    collection's names.

    Parameters
    ----------
    volume : Volume
        The crop, ``(z, y, x)`` HU with its world geometry.
    nodule : CropNodule
        Its row of ``nodules.csv``.
    """
    patient, number = nodule.patient_id, nodule.nodule_id
    study_uid = reference_uid("study", SOURCE, patient)
    series_uid = reference_uid("series", SOURCE, patient, number)
    frame_uid = reference_uid("frame", SOURCE, nodule.series_instance_uid)
    pixels: npt.NDArray[np.int16] = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    dz, dy, dx = volume.spacing
    row_dir, col_dir, normal = (volume.direction[:, i] for i in range(3))
    datasets = []
    for k in range(volume.shape[0]):
        uid = reference_uid("instance", SOURCE, patient, number, str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.Manufacturer = ""
        ds.StudyDescription = f"{SOURCE} reference crops ({LICENCE})"
        ds.SeriesDescription = f"{SOURCE} reference crop, nodule {number} ({LICENCE})"[:64]
        ds.DerivationDescription = (
            f"crop around nodule {number} of {SOURCE} series {nodule.series_instance_uid}; "
            f"The Cancer Imaging Archive, {LICENCE}"
        )
        ds.PatientName = patient
        ds.PatientID = patient
        ds.PatientBirthDate = ds.PatientSex = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"{SOURCE} public collection (TCIA)"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds(dz)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.SeriesNumber = int(number) if number.isdigit() else 1
        ds.InstanceNumber = k + 1
        position = np.asarray(volume.origin, np.float64) + k * dz * normal
        ds.ImagePositionPatient = [_ds(float(v)) for v in position]
        ds.ImageOrientationPatient = [_ds(float(v)) for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        datasets.append(ds)
    return datasets


def given_of(nodule: CropNodule, volume: Volume, mask: npt.NDArray[np.bool_]) -> GivenNodule:
    """The catalog's given nodule of a crop: readers' centre, their mask's measurements, ratings.

    Laterality is the side of the world x axis the centre lies on (LPS: the
    patient's left is +x); a crop holds no midline to do better.
    """
    measured = mask_measures(volume, mask)
    return GivenNodule(
        nodule_index=0,
        center_xyz=nodule.center_xyz,
        diameter_mm=measured.shape.diameter_mm,
        long_axis_mm=measured.shape.long_axis_mm,
        volume_mm3=measured.shape.volume_mm3,
        mean_hu=measured.mean_hu,
        peak_hu=measured.peak_hu,
        texture=texture_class(nodule.texture),
        laterality="left" if nodule.center_xyz[0] > 0 else "right",
        confidence=min(1.0, nodule.readers / _READERS),
        source=SOURCE,
        source_nodule=f"{nodule.patient_id} nodule {nodule.nodule_id}",
        readers=nodule.readers,
        ratings=dict(nodule.ratings),
    )


def _encoded(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _import_one(
    nodule: CropNodule, ingest: Ingest, catalog: Catalog, model: LoadedModel, device: str
) -> tuple[str | None, int]:
    """Store, encode and mark one crop; return why it was left out (or None) and new files."""
    volume, mask = load_crop(nodule)
    voxel = volume.world_to_voxel(nodule.center_xyz)
    if np.any((voxel < -0.5) | (voxel > np.asarray(volume.shape) - 0.5)):
        return "centre outside its crop", 0
    if not mask.any():
        return "empty readers' mask", 0
    datasets = crop_datasets(volume, nodule)
    series_uid = str(datasets[0].SeriesInstanceUID)
    new = 0
    for ds in datasets:
        received = ingest.receive(
            ds,
            _encoded(ds),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            affected_sop_class_uid=CTImageStorage,
            affected_sop_instance_uid=str(ds.SOPInstanceUID),
            calling_ae_title=CALLING_AE_TITLE,
        )
        new += int(received.new)
    given = [given_of(nodule, volume, mask)]
    catalog.reference.record(series_uid, given)
    # encoded from the stored series, as the worker encodes it when it comes again
    paths = catalog.workflow.series_instance_paths(series_uid)
    stored = load_series(read_datasets(ingest.store, paths))
    catalog.nodules.replace(
        series_uid, model.version, given_nodules(stored, given, model, device=device)
    )
    reason = reference_reason(given, model.version)
    if not catalog.reference.mark_indexed(series_uid, AnalysisStep.name, model.version, reason):
        logger.info("series %s is held by a worker; it encodes the given nodules", series_uid)
    return None, new


def import_crops(
    folder: str,
    *,
    ingest: Ingest,
    catalog: Catalog,
    model: LoadedModel,
    device: str = "cpu",
    exclude_patients: Collection[str] = (),
    progress: bool = True,
) -> ImportReport:
    """Import every crop of ``folder`` into the node's store and catalog (see the module).

    Parameters
    ----------
    folder : str
        Laid out like ``lidc-nodules``.
    ingest : Ingest
        The node's intake (its instance store and catalog).
    catalog : Catalog
    model : LoadedModel
        The hashing model the node loads (``worker.model_dir``).
    device : str
    exclude_patients : collection of str
        Patients whose crops are left out (a demo's query patient).
    progress : bool
        A tqdm bar on standard error.

    Returns
    -------
    ImportReport

    Raises
    ------
    ai.errors.ReaderError
        The folder is not laid out like ``lidc-nodules``.
    """
    from tqdm import tqdm

    report = ImportReport()
    chosen = []
    for nodule in read_nodule_table(folder):
        if nodule.patient_id in exclude_patients:
            report.excluded += 1
        else:
            chosen.append(nodule)
    for nodule in tqdm(chosen, desc="import-crops", unit="crop", disable=not progress):
        series_uid = reference_uid("series", SOURCE, nodule.patient_id, nodule.nodule_id)
        if catalog.reference.is_indexed(series_uid, AnalysisStep.name, model.version):
            report.unchanged += 1
            continue
        why, new = _import_one(nodule, ingest, catalog, model, device)
        if why is not None:
            report.skipped.append(f"{nodule.patient_id} {nodule.nodule_id}: {why}")
            continue
        report.imported += 1
        report.instances += new
    if report.skipped:
        # which ones name patients: the command prints them, the log only counts them
        logger.warning("%d crop(s) left out", len(report.skipped))
    return report
