"""Small DICOM test objects made with pydicom (integration tests of the DICOM edge).

Volumes with anatomy and nodules come from ``ai.phantom``; these are plain CT
slices where only the DICOM structure matters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Doe^Jane^Quincy"
PATIENT_ID = "PID-7731-SECRET"


def ct_slice(
    index: int,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
) -> Dataset:
    """One CT Image Storage dataset with deterministic pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_instance_uid = generate_uid(entropy_srcs=[series_instance_uid, str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_instance_uid, "for"])
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "F"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-160.0, -160.0, -float(index) * 1.25]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.25
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(seed + index)
    ds.PixelData = rng.integers(0, 2000, size=(rows, columns), dtype=np.int16).tobytes()
    return ds


def write_ct_series(
    directory: Path,
    count: int,
    *,
    rows: int = 64,
    columns: int = 64,
    transfer_syntax_uid: UID | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    **attributes: object,
) -> list[Path]:
    """Write ``count`` CT slices of one series; compress when a syntax is given.

    ``attributes`` (DICOM keywords) override the defaults, e.g. ``PatientName``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    study = study_instance_uid or generate_uid()
    series = series_instance_uid or generate_uid()
    paths = []
    for index in range(count):
        ds = ct_slice(
            index, study_instance_uid=study, series_instance_uid=series, rows=rows, columns=columns
        )
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        if transfer_syntax_uid is not None and transfer_syntax_uid != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax_uid)
        path = directory / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its preamble and file meta group."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR: tag(4) VR(2) length(2) value(4) at offset 132.
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def nodule_row(
    index: int,
    code: np.ndarray,
    embedding: np.ndarray,
    *,
    diameter_mm: float,
    size_class: int,
    center_xyz: tuple[float, float, float] = (50.0, 0.0, -100.0),
    laterality: str = "left",
    texture: str = "solid",
) -> dict[str, object]:
    """A catalog nodule row (``storage.catalog.NODULE_FIELDS``) with given codes.

    ``code`` is the 24-byte row shallow|middle|deep of 64-bit layers.
    """
    code = np.asarray(code, np.uint8)
    return {
        "nodule_index": index,
        "center_x": center_xyz[0],
        "center_y": center_xyz[1],
        "center_z": center_xyz[2],
        "diameter_mm": diameter_mm,
        "long_axis_mm": diameter_mm,
        "volume_mm3": 3.14159 / 6 * diameter_mm**3,
        "mean_hu": 20.0,
        "peak_hu": 60.0,
        "texture": texture,
        "laterality": laterality,
        "confidence": 0.9,
        "size_class": size_class,
        "predicted_size_class": size_class,
        "predicted_texture": texture,
        "shallow": code[:8].tobytes(),
        "middle": code[8:16].tobytes(),
        "deep": code[16:24].tobytes(),
        "embedding": np.asarray(embedding, np.float32).tobytes(),
        "thumbnail": (np.arange(64 * 64) % 256).astype(np.uint8).tobytes(),
    }


def near_code(rng: np.random.Generator, centre_bits: np.ndarray, flips: int) -> np.ndarray:
    """Packed code of ``centre_bits`` (192 bits) with ``flips`` random bits flipped."""
    bits = np.asarray(centre_bits, np.uint8).copy()
    bits[rng.choice(bits.size, flips, replace=False)] ^= 1
    return np.packbits(bits)
