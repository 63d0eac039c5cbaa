"""LUNA16: ``.mhd``/``.raw`` CT scans and ``annotations.csv`` (world LPS mm).

The LUNA16 challenge data (Setio et al. 2017) are MetaImage scans named by
their series UID, with ``annotations.csv`` rows ``seriesuid, coordX, coordY,
coordZ, diameter_mm`` in world coordinates (the same physical space as the
MetaImage origin / spacing / TransformMatrix, i.e. ITK's LPS). SimpleITK
reads the scans; the annotations are plain CSV. :func:`write_luna16_sample`
writes a small sample of our phantom in that form for tests and demos.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai.errors import ReaderError
from ai.types import Volume

__all__ = ["LunaAnnotation", "read_annotations", "read_scan", "write_luna16_sample"]

logger = logging.getLogger(__name__)

_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


@dataclass(frozen=True)
class LunaAnnotation:
    """One row of a LUNA16 ``annotations.csv``.

    Parameters
    ----------
    seriesuid : str
        Series Instance UID (the scan's file name).
    center_xyz : tuple of float
        World centre ``(x, y, z)`` in LPS mm.
    diameter_mm : float
        Nodule diameter in mm.
    """

    seriesuid: str
    center_xyz: tuple[float, float, float]
    diameter_mm: float


def read_annotations(path: str | os.PathLike[str]) -> dict[str, list[LunaAnnotation]]:
    """Read a LUNA16 ``annotations.csv``.

    Parameters
    ----------
    path : path
        The CSV file.

    Returns
    -------
    dict
        Series UID -> its annotations, in file order.

    Raises
    ------
    ai.errors.ReaderError
        Missing file or columns, or a value that is not a number.
    """
    result: dict[str, list[LunaAnnotation]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReaderError(f"{os.fspath(path)}: missing LUNA16 columns {missing}")
            for line, row in enumerate(reader, start=2):
                try:
                    center = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
                    diameter = float(row["diameter_mm"])
                except (TypeError, ValueError) as exc:
                    raise ReaderError(f"{os.fspath(path)} line {line}: {exc}") from exc
                if not np.all(np.isfinite(center)) or not np.isfinite(diameter) or diameter < 0:
                    raise ReaderError(f"{os.fspath(path)} line {line}: bad numbers {row}")
                uid = row["seriesuid"].strip()
                result.setdefault(uid, []).append(LunaAnnotation(uid, center, diameter))
    except OSError as exc:
        raise ReaderError(f"cannot read {os.fspath(path)}: {exc}") from exc
    return result


def read_scan(path: str | os.PathLike[str]) -> Volume:
    """Read one LUNA16 ``.mhd`` scan (its ``.raw`` beside it) as a HU volume.

    Parameters
    ----------
    path : path
        The ``.mhd`` file.

    Returns
    -------
    Volume
        ``(z, y, x)`` as stored (int16 HU in LUNA16), with origin, spacing and
        direction from the header.

    Raises
    ------
    ai.errors.ReaderError
        The file cannot be read or is not a 3-D scalar image.
    """
    from ai.volume import read_image

    try:
        volume = read_image(path)
    except (RuntimeError, ValueError) as exc:
        raise ReaderError(f"cannot read {os.fspath(path)} as a 3-D scan: {exc}") from exc
    if volume.array.ndim != 3:
        raise ReaderError(f"{os.fspath(path)} is not a 3-D scalar image")
    return volume


def write_luna16_sample(
    out_dir: str | os.PathLike[str],
    *,
    patients: int = 2,
    seed: int = 0,
    geometry: object | None = None,
    anatomy_scale: float = 1.0,
    noise_hu: float = 20.0,
) -> list[Path]:
    """Write phantom studies as a LUNA16-style sample.

    ``subset0/<seriesuid>.mhd`` + ``.raw`` (uncompressed int16) per study,
    ``annotations.csv`` and the phantom's ``truth.json`` rows are not written
    (use :func:`ai.phantom.write_cohort` for full truth); series UIDs are the
    ones the DICOM cohort of the same seed would have.

    Parameters
    ----------
    out_dir : path
        Output directory.
    patients : int, optional
        Patients (the first study of each).
    seed : int, optional
        Cohort seed.
    geometry : ai.phantom.ScanGeometry or None, optional
        Scanner grid (default: the phantom's default).
    anatomy_scale : float, optional
        Body size factor.
    noise_hu : float, optional
        Noise std in HU.

    Returns
    -------
    list of pathlib.Path
        The ``.mhd`` files.
    """
    from ai.phantom import DEFAULT_GEOMETRY, ScanGeometry, identity_for, plan_patient, render_study
    from ai.volume import write_image

    grid = geometry if isinstance(geometry, ScanGeometry) else DEFAULT_GEOMETRY
    root = Path(out_dir)
    (root / "subset0").mkdir(parents=True, exist_ok=True)
    paths = []
    rows = []
    for p in range(patients):
        plan = plan_patient(seed, p, anatomy_scale=anatomy_scale)
        study = render_study(plan, 0, grid, noise_hu=noise_hu)
        uid = identity_for(seed, p, 0, head_first=True).series_instance_uid
        path = root / "subset0" / f"{uid}.mhd"
        write_image(study.volume, path, compress=False)
        paths.append(path)
        for n in study.nodules:
            rows.append([uid, *(f"{v:.6f}" for v in n.center_xyz), f"{n.diameter_mm:.6f}"])
    with (root / "annotations.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        writer.writerows(rows)
    logger.info("LUNA16 sample: %d scans, %d annotations in %s", len(paths), len(rows), root)
    return paths
