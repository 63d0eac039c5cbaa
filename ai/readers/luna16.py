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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ai.errors import ReaderError
from ai.types import Volume

if TYPE_CHECKING:
    from ai.phantom import PhantomStudy

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
    out_dir: str | os.PathLike[str], studies: Iterable[PhantomStudy], *, seed: int = 0
) -> list[Path]:
    """Write phantom studies as a LUNA16-style sample.

    ``subset0/<seriesuid>.mhd`` + ``.raw`` (uncompressed int16) per study and
    ``annotations.csv``; the series UIDs are those of the DICOM cohort of the
    same seed (head-first).

    Parameters
    ----------
    out_dir : path
        Output directory.
    studies : iterable of ai.phantom.PhantomStudy
        E.g. :func:`ai.phantom.first_studies`.
    seed : int, optional
        Cohort seed the studies were made with (for their UIDs).

    Returns
    -------
    list of pathlib.Path
        The ``.mhd`` files.
    """
    from ai.phantom import identity_for
    from ai.volume import write_image

    root = Path(out_dir)
    (root / "subset0").mkdir(parents=True, exist_ok=True)
    paths = []
    rows = []
    for study in studies:
        uid = identity_for(
            seed, study.patient_index, study.study_index, head_first=True
        ).series_instance_uid
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
