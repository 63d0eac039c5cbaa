"""Write a synthetic cohort: DICOM series, LUNA16 annotations, truth JSON, lung masks.

Layout of ``out_dir``::

    annotations.csv                 LUNA16: seriesuid,coordX,coordY,coordZ,diameter_mm (LPS mm)
    truth.json                      cohort settings and, per study, identity, files and nodule truth
    dicom/<PatientID>/<StudyDate>/CT_0001.dcm ...
    masks/<SeriesInstanceUID>_lungs.mha     uint8 0/1 right/2 left, on the grid of the series
    masks/<SeriesInstanceUID>_nodules.mha   uint8 i+1 inside nodule i of the study's truth list

The masks have the geometry :func:`ai.volume.load_series` gives the series
with ``spacing=None``; use :func:`ai.volume.resample_like` to bring them onto
any other grid. Patients are written in parallel with ``workers`` processes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai.phantom.dicom import (
    TRANSFER_SYNTAXES,
    identity_for,
    nodule_rows,
    series_volume,
    study_datasets,
)
from ai.phantom.render import (
    DEFAULT_GEOMETRY,
    PhantomStudy,
    ScanGeometry,
    plan_patient,
    process_pool,
    render_study,
)
from ai.types import Volume

__all__ = ["CohortSummary", "write_cohort", "write_mask"]

logger = logging.getLogger(__name__)

ORIENTATIONS = ("mixed", "head-first", "feet-first")


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`write_cohort` wrote.

    Parameters
    ----------
    out_dir : pathlib.Path
        Cohort directory.
    patients, studies, nodules, files : int
        Counts (files = DICOM instances).
    annotations_csv, truth_json : pathlib.Path
        Ground-truth files.
    """

    out_dir: Path
    patients: int
    studies: int
    nodules: int
    files: int
    annotations_csv: Path
    truth_json: Path


def write_mask(path: Path, mask: Volume) -> None:
    """Write a label volume as a compressed MetaImage with its geometry."""
    from ai.volume import write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(mask, path)


def _head_first(orientation: str, patient_index: int, study_index: int) -> bool:
    if orientation == "head-first":
        return True
    if orientation == "feet-first":
        return False
    return (patient_index + study_index) % 2 == 0


def _write_study(
    out_dir: Path,
    study: PhantomStudy,
    seed: int,
    patient_index: int,
    head_first: bool,
    transfer_syntax: str,
) -> dict[str, Any]:
    identity = identity_for(seed, patient_index, study.study_index, head_first=head_first)
    series_dir = (
        out_dir / "dicom" / identity.patient_id / f"{identity.study_date}_{study.study_index}"
    )
    series_dir.mkdir(parents=True, exist_ok=True)
    datasets = study_datasets(study, identity, transfer_syntax=transfer_syntax)
    for ds in datasets:
        ds.save_as(series_dir / f"CT_{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
    masks = {}
    for name, array in (("lungs", study.lung_mask), ("nodules", study.nodule_mask)):
        canonical = dataclasses.replace(study.volume, array=array)
        path = out_dir / "masks" / f"{identity.series_instance_uid}_{name}.mha"
        write_mask(path, series_volume(canonical, head_first))
        masks[name] = str(path.relative_to(out_dir))
    return {
        "patient_id": identity.patient_id,
        "patient_label": study.patient_label,
        "study_index": study.study_index,
        "study_instance_uid": identity.study_instance_uid,
        "series_instance_uid": identity.series_instance_uid,
        "study_date": identity.study_date,
        "patient_position": "HFS" if head_first else "FFS",
        "transfer_syntax": str(TRANSFER_SYNTAXES[transfer_syntax]),
        "dicom_dir": str(series_dir.relative_to(out_dir)),
        "instances": len(datasets),
        "shape_zyx": list(study.volume.shape),
        "spacing_zyx": list(study.volume.spacing),
        "lung_mask": masks["lungs"],
        "nodule_mask": masks["nodules"],
        "nodules": [dataclasses.asdict(n) for n in study.nodules],
        "annotations": nodule_rows(study, identity),
    }


def _write_patient(
    args: tuple[Path, int, int, int, int, ScanGeometry, float, str, str, float, str],
) -> list[dict[str, Any]]:
    (
        out_dir,
        seed,
        patient_index,
        n_studies,
        n_tracks,
        geometry,
        scale,
        syntax,
        orientation,
        noise,
        family,
    ) = args
    plan = plan_patient(
        seed,
        patient_index,
        n_tracks=n_tracks,
        n_studies=n_studies,
        anatomy_scale=scale,
        family=family,
    )
    records = []
    for study_index in range(n_studies):
        study = render_study(plan, study_index, geometry, noise_hu=noise)
        head_first = _head_first(orientation, patient_index, study_index)
        records.append(_write_study(out_dir, study, seed, patient_index, head_first, syntax))
        logger.info(
            "patient %s study %d: %d slices, %d nodules",
            plan.label,
            study_index,
            study.volume.shape[0],
            len(study.nodules),
        )
    return records


def write_cohort(
    out_dir: str | os.PathLike[str],
    *,
    patients: int = 4,
    seed: int = 0,
    studies_per_patient: int = 2,
    nodules_per_patient: int = 4,
    geometry: ScanGeometry = DEFAULT_GEOMETRY,
    anatomy_scale: float = 1.0,
    transfer_syntax: str = "explicit",
    orientation: str = "mixed",
    noise_hu: float = 20.0,
    workers: int = 1,
    family: str = "a",
) -> CohortSummary:
    """Synthesize and write a cohort of patients, each with a prior and follow-up studies.

    Parameters
    ----------
    out_dir : path
        Directory to write (created; existing files with the same names are replaced).
    patients : int, optional
        Number of patients.
    seed : int, optional
        Cohort seed; the same arguments always give the same files.
    studies_per_patient : int, optional
        Studies per patient, 1-2 years apart; odd lesions grow between them.
    nodules_per_patient : int, optional
        Lesions per patient (size classes, textures, shapes and locations cycle over the cohort).
    geometry : ScanGeometry, optional
        Scanner grid (default 512 x 512, 0.7 mm pixels, 1.25 mm slices covering the lungs).
    anatomy_scale : float, optional
        Body size factor.
    transfer_syntax : {"explicit", "jpeg-ls", "jpeg2000"}, optional
        Pixel encoding (lossless).
    orientation : {"mixed", "head-first", "feet-first"}, optional
        Patient position of the series; ``mixed`` alternates.
    noise_hu : float, optional
        Image noise std in HU.
    workers : int, optional
        Processes writing patients in parallel.
    family : {"a", "b"}, optional
        Phantom family (``ai.phantom.render.FAMILIES``): ``"b"`` has other
        vessels, real LIDC nodule shapes and another scanner
        (:mod:`ai.phantom.family_b`); evaluate on the family you did not tune on.

    Returns
    -------
    CohortSummary
        Counts and the ground-truth paths.
    """
    if patients < 1 or studies_per_patient < 1 or nodules_per_patient < 0:
        raise ValueError("patients and studies_per_patient must be >= 1, nodules_per_patient >= 0")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            root,
            seed,
            p,
            studies_per_patient,
            nodules_per_patient,
            geometry,
            anatomy_scale,
            transfer_syntax,
            orientation,
            noise_hu,
            family,
        )
        for p in range(patients)
    ]
    if workers > 1:
        with process_pool(workers) as pool:
            per_patient = list(pool.map(_write_patient, jobs))
    else:
        per_patient = [_write_patient(job) for job in jobs]
    studies = [record for records in per_patient for record in records]
    annotations = root / "annotations.csv"
    with annotations.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
        )
        writer.writeheader()
        for record in studies:
            for row in record.pop("annotations"):
                writer.writerow(
                    {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
                )
    truth = root / "truth.json"
    settings = {
        "seed": seed,
        "patients": patients,
        "studies_per_patient": studies_per_patient,
        "nodules_per_patient": nodules_per_patient,
        "geometry": dataclasses.asdict(geometry),
        "anatomy_scale": anatomy_scale,
        "transfer_syntax": transfer_syntax,
        "orientation": orientation,
        "noise_hu": noise_hu,
        "family": family,
        "lung_labels": {"0": "outside", "1": "right lung", "2": "left lung"},
    }
    truth.write_text(
        json.dumps({"settings": settings, "studies": studies}, indent=1), encoding="utf-8"
    )
    n_nodules = int(np.sum([len(r["nodules"]) for r in studies]))
    summary = CohortSummary(
        out_dir=root,
        patients=patients,
        studies=len(studies),
        nodules=n_nodules,
        files=int(np.sum([r["instances"] for r in studies])),
        annotations_csv=annotations,
        truth_json=truth,
    )
    logger.info(
        "cohort written: %d patients, %d studies, %d nodules", patients, len(studies), n_nodules
    )
    return summary
