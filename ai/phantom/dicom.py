"""Phantom studies as DICOM CT Image Storage series (PS3.3 A.3).

Head-first series (PatientPosition ``HFS``) use ImageOrientationPatient
``1\\0\\0\\0\\1\\0`` and number the instances from the most superior slice
down; feet-first series (``FFS``) use ``-1\\0\\0\\0\\1\\0`` (columns run to the
patient's right, so the slice normal points to the feet) and number from the
most inferior slice up. Either way the geometry is exact: a voxel's
ImagePositionPatient-derived world position is the phantom's world position.
Stored values are ``HU + 1024`` (12 bits, unsigned) with RescaleIntercept
``-1024``. Transfer syntaxes: Explicit VR Little Endian, JPEG-LS lossless or
JPEG 2000 lossless (encoded by pydicom's pyjpegls / pylibjpeg-openjpeg
plugins).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from ai.phantom.render import PhantomStudy
from ai.types import Volume

__all__ = ["TRANSFER_SYNTAXES", "SeriesIdentity", "series_volume", "study_datasets", "identity_for"]

logger = logging.getLogger(__name__)

#: Names accepted for ``transfer_syntax`` and their UIDs.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}

_IMPLEMENTATION_NAME = "DNODE_PHANTOM"


@dataclass(frozen=True)
class SeriesIdentity:
    """Who and when: the identifying attributes of one phantom series.

    Parameters
    ----------
    patient_id, patient_name : str
        Synthetic identity (never a real person).
    patient_birth_date, patient_sex : str
        ``YYYYMMDD`` and ``M``/``F``.
    study_instance_uid, series_instance_uid, frame_of_reference_uid : str
        UIDs (deterministic for the cohort seed).
    study_date : str
        ``YYYYMMDD``.
    study_id, accession_number : str
        Short identifiers.
    head_first : bool
        ``True``: HFS; ``False``: FFS.
    """

    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_id: str
    accession_number: str
    head_first: bool


def identity_for(
    seed: int, patient_index: int, study_index: int, *, head_first: bool
) -> SeriesIdentity:
    """Deterministic synthetic identity of one study (UIDs from the seed).

    Parameters
    ----------
    seed : int
        Cohort seed.
    patient_index, study_index : int
        0-based numbers.
    head_first : bool
        Patient position of the series.

    Returns
    -------
    SeriesIdentity
        Dates: the first study in 2014-2018, each follow-up 1-2 years later.
    """
    rng = np.random.default_rng([seed, patient_index, 707])
    first = dt.date(2014, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    gaps = rng.integers(300, 750, size=8)
    date = first + dt.timedelta(days=int(gaps[:study_index].sum()))
    birth = dt.date(
        first.year - int(rng.integers(50, 80)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    )
    key = [str(seed), str(patient_index), str(study_index)]
    return SeriesIdentity(
        patient_id=f"PHANTOM-{seed}-{patient_index:04d}",
        patient_name=f"Phantom^P{patient_index:04d}^Seed{seed}",
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_sex="MF"[int(rng.integers(0, 2))],
        study_instance_uid=generate_uid(entropy_srcs=[*key, "study"]),
        series_instance_uid=generate_uid(entropy_srcs=[*key, "series"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[*key, "for"]),
        study_date=date.strftime("%Y%m%d"),
        study_id=f"{patient_index:04d}{study_index}",
        accession_number=f"A{seed % 10000:04d}{patient_index:04d}{study_index}",
        head_first=head_first,
    )


def series_volume(volume: Volume, head_first: bool) -> Volume:
    """The volume as :func:`ai.volume.load_series` returns the written series (``spacing=None``).

    Parameters
    ----------
    volume : Volume
        A phantom volume or mask on the canonical grid (identity direction).
    head_first : bool
        Series orientation.

    Returns
    -------
    Volume
        Same voxels; for feet-first ``x`` and ``z`` reversed with direction ``diag(-1, 1, -1)``.
    """
    if head_first:
        return volume
    nz, _, nx = volume.shape
    dz, _, dx = volume.spacing
    origin = (volume.origin[0] + (nx - 1) * dx, volume.origin[1], volume.origin[2] + (nz - 1) * dz)
    return Volume(
        array=np.ascontiguousarray(volume.array[::-1, :, ::-1]),
        spacing=volume.spacing,
        origin=origin,
        direction=np.diag([-1.0, 1.0, -1.0]),
    )


def study_datasets(
    study: PhantomStudy, identity: SeriesIdentity, *, transfer_syntax: str = "explicit"
) -> list[Dataset]:
    """The CT Image Storage datasets of one phantom study, in instance order.

    Parameters
    ----------
    study : PhantomStudy
        From :func:`ai.phantom.synthesize_study`.
    identity : SeriesIdentity
        Patient/study/series identity.
    transfer_syntax : {"explicit", "jpeg-ls", "jpeg2000"}, optional
        Encoding of the pixel data (lossless).

    Returns
    -------
    list of pydicom.Dataset
        One per slice, with file meta, InstanceNumber 1..n in acquisition order.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}"
        )
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    vol = series_volume(study.volume, identity.head_first)
    stored: npt.NDArray[np.uint16] = (
        np.clip(vol.array.astype(np.int32), -1024, 3071) + 1024
    ).astype(np.uint16)
    dz, dy, dx = vol.spacing
    row_dir, col_dir, normal = vol.direction[:, 0], vol.direction[:, 1], vol.direction[:, 2]
    n = vol.shape[0]
    # acquisition order: head-first from the top down, feet-first from the bottom up
    superior_first = sorted(
        range(n), key=lambda k: -float((np.asarray(vol.origin) + k * dz * normal)[2])
    )
    order = superior_first if identity.head_first else superior_first[::-1]
    datasets = []
    for instance, k in enumerate(order, start=1):
        position = np.asarray(vol.origin) + k * dz * normal
        datasets.append(
            _slice(identity, stored[k], instance, position, row_dir, col_dir, (dy, dx), dz, syntax)
        )
    return datasets


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _slice(
    identity: SeriesIdentity,
    pixels: npt.NDArray[np.uint16],
    instance: int,
    position: npt.NDArray[np.float64],
    row_dir: npt.NDArray[np.float64],
    col_dir: npt.NDArray[np.float64],
    pixel_spacing: tuple[float, float],
    thickness: float,
    syntax: UID,
) -> Dataset:
    sop_instance_uid = generate_uid(entropy_srcs=[identity.series_instance_uid, str(instance)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = _IMPLEMENTATION_NAME
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = identity.study_date
    ds.StudyTime = "093000"
    ds.SeriesTime = "093100"
    ds.AcquisitionTime = ds.ContentTime = "093105"
    ds.AccessionNumber = identity.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "dicom-node"
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "CHEST 1.25mm" if thickness < 2 else f"CHEST {thickness:g}mm"
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(thickness)
    ds.KVP = "120"
    ds.SoftwareVersions = "ai.phantom"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS" if identity.head_first else "FFS"
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.StudyID = identity.study_id
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = [_ds(float(v)) for v in (*row_dir, *col_dir)]
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(float(position[2]))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, np.ascontiguousarray(pixels), generate_instance_uid=False)
    return ds


def nodule_rows(study: PhantomStudy, identity: SeriesIdentity) -> list[dict[str, object]]:
    """LUNA16 ``annotations.csv`` rows of one study."""
    return [
        {
            "seriesuid": identity.series_instance_uid,
            "coordX": n.center_xyz[0],
            "coordY": n.center_xyz[1],
            "coordZ": n.center_xyz[2],
            "diameter_mm": n.diameter_mm,
        }
        for n in study.nodules
    ]
