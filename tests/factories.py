"""Small test objects: CT slices, catalog records, nodules, results, SR inputs.

Volumes with anatomy and nodules come from ``ai.phantom``; the CT slices here
are plain ones where only the DICOM structure matters. Test modules share
builders through this module, never through each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.intake.ingest import Ingest
from dicom_node.results.sr import (
    ModelInfo,
    NoduleFinding,
    PriorMeasurement,
    ReportUIDs,
    SimilarCase,
)
from storage.catalog import GeneratedResult, InstanceRecord, NewNodule, ResultKind

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


def instance_record(
    sop: str,
    series: str = "1.2.3",
    study: str = "1.2",
    number: int = 1,
    *,
    patient_id: str | None = None,
    study_date: str = "20260101",
) -> InstanceRecord:
    """What the catalog records of a received CT instance (the UIDs given)."""
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        relative_path=f"{study}/{series}/{sop}.dcm",
        size=10,
        sha256="0" * 64,
        modality="CT",
        instance_number=number,
        patient_name="Doe^Jane",
        patient_id=patient_id,
        study_date=study_date,
    )


def new_nodule(
    index: int,
    code: np.ndarray,
    embedding: np.ndarray,
    *,
    diameter_mm: float,
    size_class: int,
    center_xyz: tuple[float, float, float] = (50.0, 0.0, -100.0),
    laterality: str = "left",
    texture: str = "solid",
) -> NewNodule:
    """A nodule for ``catalog.nodules.replace`` with given codes.

    ``code`` is the 24-byte row shallow|middle|deep of 64-bit layers.
    """
    code = np.asarray(code, np.uint8)
    return NewNodule(
        nodule_index=index,
        center_xyz=center_xyz,
        diameter_mm=diameter_mm,
        long_axis_mm=diameter_mm,
        volume_mm3=3.14159 / 6 * diameter_mm**3,
        mean_hu=20.0,
        peak_hu=60.0,
        texture=texture,
        laterality=laterality,
        confidence=0.9,
        size_class=size_class,
        predicted_size_class=size_class,
        predicted_texture=texture,
        shallow=code[:8].tobytes(),
        middle=code[8:16].tobytes(),
        deep=code[16:24].tobytes(),
        embedding=np.asarray(embedding, np.float32).tobytes(),
        thumbnail=(np.arange(64 * 64) % 256).astype(np.uint8).tobytes(),
    )


def random_nodules(rng: np.random.Generator, count: int, *, dim: int = 16) -> list[NewNodule]:
    """``count`` nodules with random codes and embeddings (size class 3)."""
    return [
        new_nodule(
            i,
            rng.integers(0, 256, 24, dtype=np.uint8),
            rng.normal(size=dim),
            diameter_mm=6.0,
            size_class=3,
        )
        for i in range(count)
    ]


def near_code(rng: np.random.Generator, centre_bits: np.ndarray, flips: int) -> np.ndarray:
    """Packed code of ``centre_bits`` (192 bits) with ``flips`` random bits flipped."""
    bits = np.asarray(centre_bits, np.uint8).copy()
    bits[rng.choice(bits.size, flips, replace=False)] ^= 1
    return np.packbits(bits)


def receive_files(ingest: Ingest, paths: Sequence[Path]) -> list[Dataset]:
    """Receive Part 10 files as the C-STORE handler would; return their datasets."""
    datasets = []
    for path in paths:
        dataset = pydicom.dcmread(path)
        ingest.receive(
            dataset,
            Path(path).read_bytes(),
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
            affected_sop_class_uid=str(dataset.SOPClassUID),
            affected_sop_instance_uid=str(dataset.SOPInstanceUID),
        )
        datasets.append(dataset)
    return datasets


def generated_result(index: int = 1, *, relative_path: str | None = None) -> GeneratedResult:
    """A generated SR of study 1.2 describing series 1.2.3, as the catalog keeps it."""
    return GeneratedResult(
        sop_instance_uid=f"1.2.99.{index}",
        study_instance_uid="1.2",
        series_instance_uid="1.2.99",
        source_series_instance_uid="1.2.3",
        kind=ResultKind.SIMILARITY_SR,
        model_version="v1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        relative_path=relative_path or f"1.2/1.2.99/1.2.99.{index}.dcm",
        size=10,
        sha256="1" * 64,
        created_at=105.0,
    )


def keep_results(ingest: Ingest, directory: Path, count: int) -> list[GeneratedResult]:
    """``count`` objects kept as generated results of a study whose CT series was received."""
    (source,) = write_ct_series(
        directory, 1, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4"
    )
    receive_files(ingest, [source])
    return [
        ingest.keep(
            ct_slice(index, study_instance_uid="1.2.3", series_instance_uid="1.2.3.9"),
            kind=ResultKind.KEY_IMAGES,
            source_series_instance_uid="1.2.3.4",
            model_version="test-model",
        )
        for index in range(count)
    ]


SR_MODEL = ModelInfo(
    "dicom-node nodule hashing",
    "hn-0123456789abcdef",
    parameters=(
        "false-positive reduction model fpr-0123456789abcdef",
        "minimum nodule probability 0.5",
        "minimum nodule diameter 4 mm",
    ),
)
SR_UIDS = ReportUIDs(
    "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.9"
)


def sr_inputs() -> tuple[
    list[NoduleFinding], dict[str, list[SimilarCase]], dict[str, list[PriorMeasurement]]
]:
    """Two nodules for the SR builder: one with similar cases and a prior, one with none."""
    findings = [
        NoduleFinding(
            "1.2.3.4.100",
            "Nodule 1",
            (10.0, 20.0, -30.0),
            8.2,
            9.5,
            290.0,
            20.0,
            "solid",
            "right",
            probability=0.83,
        ),
        NoduleFinding(
            "1.2.3.4.101",
            "Nodule 2",
            (-50.0, 5.0, -80.0),
            14.1,
            16.0,
            1468.0,
            -520.0,
            "ground-glass",
            "left",
        ),
    ]
    similar = {
        "1.2.3.4.100": [
            SimilarCase(1, 19, "deep", 8.0, 4, "solid", "1.2.9", "20240101", "CASE-AB12", 0.12),
            SimilarCase(2, 14, "middle", 7.6, 3, "part-solid", "1.2.10", None, "CASE-CD34", 0.31),
        ],
        "1.2.3.4.101": [],
    }
    priors = {
        "1.2.3.4.100": [
            PriorMeasurement(
                "1.2.8",
                "20230101",
                7.0,
                1.2,
                17.1,
                volume_mm3=180.0,
                volume_change_percent=61.1,
                volume_doubling_days=521.0,
            )
        ]
    }
    return findings, similar, priors


def sr_evidence(count: int = 80) -> list[Dataset]:
    """CT slice headers (5 mm pixels, 1.25 mm apart) around both nodules of :func:`sr_inputs`."""
    evidence = []
    for index in range(count):
        ds = ct_slice(index, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4")
        ds.PixelSpacing = [5.0, 5.0]
        del ds.PixelData
        evidence.append(ds)
    return evidence


def lidc_like_folder(root: Path, *, count: int = 6, seed: int = 3) -> Path:
    """A folder laid out like ``lidc-nodules`` from phantom patches: NIfTI crops, masks, csv.

    One nodule-centred patch of ``ai.phantom.make_patches`` per patient
    (``PHANTOM-CROP-<i>``), written with SimpleITK (``ai.volume.write_image``)
    at its own world origin; its row names the nodule's world centre and
    diameter as the source does, readers 4, every rating 3 but the texture's
    (5 solid, 3 part-solid, 1 ground glass).
    """
    import csv

    from ai.phantom.patches import make_patches
    from ai.readers.lidc_crops import LIDC_CHARACTERISTICS
    from ai.types import Volume
    from ai.volume import write_image

    batch = make_patches(count, seed=seed, size_zyx=(24, 48, 48), positive_fraction=1.0)
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    rows = []
    for i in range(count):
        if not batch.has_nodule[i]:
            raise AssertionError("make_patches(positive_fraction=1) gave a patch without nodule")
        patient = f"PHANTOM-CROP-{i:02d}"
        origin = (-120.0 + 40.0 * i, 30.0, -200.0 + 7.0 * i)
        name = f"{patient}_R_1.nii.gz"
        write_image(Volume(batch.patches[i], (1.0, 1.0, 1.0), origin), root / "image" / name)
        write_image(Volume(batch.nodule_masks[i], (1.0, 1.0, 1.0), origin), root / "mask" / name)
        # patch centre (voxel (d-1)/2 ...) plus the nodule's offset from it
        centre = [origin[a] + (batch.patches.shape[3 - a] - 1) / 2.0 for a in range(3)]
        centre = [c + float(o) for c, o in zip(centre, batch.offset_mm[i], strict=True)]
        texture = {0: 5, 1: 3, 2: 1}[int(batch.texture[i])]
        row = {
            "patient_id": patient,
            "nodule_id": "1",
            "image": f"image/{name}",
            "mask": f"mask/{name}",
            "seriesuid": generate_uid(entropy_srcs=[patient, str(seed)]),
            "coordX": centre[0],
            "coordY": centre[1],
            "coordZ": centre[2],
            "diameter_mm": float(batch.diameter_mm[i]),
            "readers": 4,
        }
        for axis, (low, high) in zip("XYZ", ((c - 5.0, c + 5.0) for c in centre), strict=True):
            row[f"bboxLow{axis}"], row[f"bboxHigh{axis}"] = low, high
        for rating in LIDC_CHARACTERISTICS:
            row[f"{rating}_value"] = texture if rating == "Texture" else 3
        rows.append(row)
    with open(root / "nodules.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
