"""Real LIDC-IDRI nodule crops: ``nodules.csv`` + ``image/`` + ``mask/`` (NIfTI).

The layout of ``shared/data/lidc-nodules`` (see its README): one row per
nodule with the patient, the world centre ``coordX/Y/Z`` (patient LPS mm, as
LUNA16), the diameter, the world bounding box, how many of the four readers
marked it and the readers' consensus of the nine LIDC characteristics, each as
a label column and a ``*_value`` column. ``image`` and ``mask`` name NIfTI
files (int16 HU crop and the consensus mask on the same grid) relative to the
folder; SimpleITK reads their origin and spacing as world LPS mm.

:func:`patient_folds` is the one place where patients are split into folds,
so that every training and evaluation that uses these crops keeps a patient
on one side only.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ai.errors import ReaderError
from ai.types import Volume
from ai.volume import read_image

__all__ = [
    "LIDC_CHARACTERISTICS",
    "CropNodule",
    "load_crop",
    "malignancy_group",
    "patient_folds",
    "read_nodule_table",
    "texture_class",
]

logger = logging.getLogger(__name__)

#: The nine LIDC characteristics as ``nodules.csv`` names them.
LIDC_CHARACTERISTICS: tuple[str, ...] = (
    "Malignancy",
    "Texture",
    "Margin",
    "Spiculation",
    "Lobulation",
    "Sphericity",
    "Calcification",
    "InternalStructure",
    "Subtlety",
)

_REQUIRED = (
    "patient_id",
    "nodule_id",
    "image",
    "mask",
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "readers",
)


@dataclass(frozen=True)
class CropNodule:
    """One row of ``nodules.csv``.

    Parameters
    ----------
    patient_id, nodule_id : str
        LIDC patient (``LIDC-IDRI-0001``) and the nodule's number within it.
    image, mask : pathlib.Path
        Absolute paths of the HU crop and the consensus mask.
    series_instance_uid : str
        The scan the crop was cut from.
    center_xyz : tuple of float
        World centre ``(x, y, z)``, patient LPS mm.
    diameter_mm : float
        The source's diameter of the nodule.
    bbox_low_xyz, bbox_high_xyz : tuple of float
        World bounding box of the consensus mask, LPS mm.
    readers : int
        How many of the four readers marked it.
    ratings : dict
        Consensus value of each of :data:`LIDC_CHARACTERISTICS` (1-5, or 1-6
        for calcification).
    """

    patient_id: str
    nodule_id: str
    image: Path
    mask: Path
    series_instance_uid: str
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    bbox_low_xyz: tuple[float, float, float]
    bbox_high_xyz: tuple[float, float, float]
    readers: int
    ratings: dict[str, int]

    @property
    def malignancy(self) -> int:
        """Consensus malignancy 1 (highly unlikely) ... 5 (highly suspicious)."""
        return self.ratings["Malignancy"]

    @property
    def texture(self) -> int:
        """Consensus texture 1 (non-solid / ground glass) ... 5 (solid)."""
        return self.ratings["Texture"]


def malignancy_group(malignancy: int) -> int | None:
    """Benign (0) for ratings 1-2, malignant (1) for 4-5, ``None`` for 3 (seed 004)."""
    if malignancy in (1, 2):
        return 0
    if malignancy in (4, 5):
        return 1
    if malignancy == 3:
        return None
    raise ValueError(f"malignancy must be 1-5, got {malignancy!r}")


def texture_class(texture: int) -> str:
    """LIDC texture rating → one of ``ai.hashing.codes.TEXTURES``.

    1-2 (non-solid, non-solid/mixed) are ground-glass, 3 (part solid/mixed) is
    part-solid, 4-5 (solid/mixed, solid) are solid.
    """
    if texture in (1, 2):
        return "ground-glass"
    if texture == 3:
        return "part-solid"
    if texture in (4, 5):
        return "solid"
    raise ValueError(f"texture must be 1-5, got {texture!r}")


def _floats(row: dict[str, str], names: Sequence[str]) -> tuple[float, float, float]:
    x, y, z = (float(row[name]) for name in names)
    return (x, y, z)


def read_nodule_table(folder: str | os.PathLike[str]) -> list[CropNodule]:
    """Read ``folder/nodules.csv``.

    Parameters
    ----------
    folder : path
        A folder laid out like ``lidc-nodules``.

    Returns
    -------
    list of CropNodule
        In file order.

    Raises
    ------
    ai.errors.ReaderError
        Missing file or columns, a value that is not a number, or an image or
        mask named that is not in the folder.
    """
    root = Path(folder)
    table = root / "nodules.csv"
    nodules: list[CropNodule] = []
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            wanted = set(_REQUIRED) | {f"{c}_value" for c in LIDC_CHARACTERISTICS}
            missing = sorted(wanted - columns)
            if missing:
                raise ReaderError(f"{table}: missing columns {missing}")
            for line, row in enumerate(reader, start=2):
                try:
                    nodule = CropNodule(
                        patient_id=row["patient_id"],
                        nodule_id=row["nodule_id"],
                        image=root / row["image"],
                        mask=root / row["mask"],
                        series_instance_uid=row["seriesuid"],
                        center_xyz=_floats(row, ("coordX", "coordY", "coordZ")),
                        diameter_mm=float(row["diameter_mm"]),
                        bbox_low_xyz=_floats(row, ("bboxLowX", "bboxLowY", "bboxLowZ")),
                        bbox_high_xyz=_floats(row, ("bboxHighX", "bboxHighY", "bboxHighZ")),
                        readers=int(row["readers"]),
                        ratings={c: int(float(row[f"{c}_value"])) for c in LIDC_CHARACTERISTICS},
                    )
                except (KeyError, ValueError) as exc:
                    raise ReaderError(f"{table}:{line}: {exc}") from exc
                for path in (nodule.image, nodule.mask):
                    if not path.is_file():
                        raise ReaderError(f"{table}:{line}: {path.name} is not in {path.parent}")
                nodules.append(nodule)
    except OSError as exc:
        raise ReaderError(f"cannot read {table}: {exc}") from exc
    logger.info("%d nodules of %d patients", len(nodules), len({n.patient_id for n in nodules}))
    return nodules


def load_crop(nodule: CropNodule) -> tuple[Volume, npt.NDArray[np.bool_]]:
    """The HU crop and the readers' consensus mask of one nodule.

    Returns
    -------
    volume : Volume
        ``(z, y, x)`` HU with the crop's world geometry.
    mask : numpy.ndarray
        ``(z, y, x)`` bool on the same grid.

    Raises
    ------
    ai.errors.ReaderError
        The mask's grid differs from the image's.
    """
    volume = read_image(nodule.image)
    mask_volume = read_image(nodule.mask)
    if mask_volume.shape != volume.shape or not np.allclose(
        mask_volume.origin, volume.origin, atol=1e-3
    ):
        raise ReaderError(f"{nodule.mask.name}: mask grid differs from its image")
    return volume, np.asarray(mask_volume.array) > 0


def patient_folds(patient_ids: Iterable[str], k: int = 5, *, seed: int = 0) -> dict[str, int]:
    """Assign each patient to one of ``k`` folds, reproducibly.

    Patients are ordered by a keyed hash of their id (SHA-256 of
    ``f"{seed}:{patient_id}"``) and dealt round-robin, so the folds differ by
    at most one patient and a patient's fold depends only on the set of
    patients, ``k`` and ``seed``.

    Parameters
    ----------
    patient_ids : iterable of str
        Duplicates are allowed (one nodule per row); each patient gets one fold.
    k : int
        Number of folds, at least 2.
    seed : int

    Returns
    -------
    dict
        Patient id → fold ``0 .. k-1``.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    unique = sorted(set(patient_ids))
    if len(unique) < k:
        raise ValueError(f"{len(unique)} patients cannot fill {k} folds")
    ordered = sorted(unique, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return {patient: i % k for i, patient in enumerate(ordered)}
