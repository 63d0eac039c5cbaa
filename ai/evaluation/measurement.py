"""Nodule measurements against the readers' masks of the real LIDC-IDRI crops.

Each crop of ``lidc-nodules`` (:mod:`ai.readers.lidc_crops`) holds one nodule
and its readers' consensus mask, but only the nodule's own slices. To measure
it as the node measures a whole scan, :func:`crop_in_context`:

1. adds a few millimetres of lung parenchyma above and below (the crop's own
   lung HU and noise), so the nodule ends in ``z`` as it does in the scan, and
   continues the crop's edges in-plane (chest wall stays attached to the
   border, so a nodule is a hole in the lung only where it is in the scan);
2. resamples to the node's processing grid (1 mm by default, as
   :func:`ai.volume.load_series` gives the worker);
3. takes everything below the air threshold, closed and filled exactly as
   :func:`ai.lungs.segment_lungs` treats a lung, as the lung.

:func:`measure_crop` then runs :func:`ai.nodules.find_nodules` on it and
keeps the most confident candidate whose centre lies inside the readers'
nodule. The reference values come from the readers' mask on its own grid
through :func:`ai.measure.shape_measures`, the same definition as ours.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import torch

from ai.classes import SIZE_CLASS_LABELS, size_class
from ai.lungs import LungMask, fill_lung
from ai.measure import (
    DEFAULT_SEGMENTATION,
    NoduleCandidate,
    SegmentationParams,
    shape_measures,
)
from ai.nodules import find_nodules
from ai.readers.lidc_crops import CropNodule, load_crop, texture_class
from ai.types import Volume
from ai.volume import resample, resample_like

__all__ = [
    "CropContext",
    "CropMeasurement",
    "MeasurementReport",
    "MeasurementRow",
    "crop_in_context",
    "measure_crop",
    "summarise_measurements",
]

logger = logging.getLogger(__name__)

TEXTURES = ("solid", "part-solid", "ground-glass")


@dataclass(frozen=True)
class CropMeasurement:
    """One real nodule: the readers' reference and what the node measured.

    Reference values (``ref_*``) come from the readers' consensus mask;
    measured values are ``None`` when no candidate lies inside the nodule.
    """

    patient_id: str
    nodule_id: str
    ref_diameter_mm: float
    ref_long_axis_mm: float
    ref_volume_mm3: float
    ref_texture: str
    table_diameter_mm: float
    found: bool
    diameter_mm: float | None = None
    long_axis_mm: float | None = None
    volume_mm3: float | None = None
    texture: str | None = None
    confidence: float | None = None
    mean_hu: float | None = None
    peak_hu: float | None = None
    solid_share: float | None = None


@dataclass(frozen=True)
class CropContext:
    """A nodule crop made into a small lung volume (:func:`crop_in_context`)."""

    volume: Volume
    """Padded (and resampled) HU volume."""
    lungs: LungMask
    """Label 1 for the lung around the nodule."""
    background_hu: float
    """Median HU of the crop's parenchyma."""
    data_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    """Half-open ``(z, y, x)`` voxel bounds of the crop's own data in ``volume``."""
    reference: npt.NDArray[np.bool_] | None
    """The readers' mask on ``volume``'s grid, when one was given."""


def crop_in_context(
    volume: Volume,
    reference: npt.NDArray[np.bool_] | None = None,
    *,
    pad_mm: float = 10.0,
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0),
    air_threshold_hu: float = -400.0,
    seed: int = 0,
) -> CropContext:
    """A nodule crop as a small lung volume the detector can run on.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` HU crop (native grid).
    reference : numpy.ndarray, optional
        The readers' mask on the crop's grid, brought onto the new grid.
    pad_mm : float
        Parenchyma added above and below the crop, mm.
    spacing : tuple of float or None
        Processing grid ``(z, y, x)`` mm; ``None`` keeps the crop's.
    air_threshold_hu : float
        Lung is below this (as in :func:`ai.lungs.segment_lungs`).
    seed : int
        Seed of the added parenchyma's noise.

    Returns
    -------
    CropContext
    """
    hu = np.asarray(volume.array, dtype=np.float32)
    parenchyma = hu[hu < -600.0]
    background = float(np.median(parenchyma)) if parenchyma.size >= 20 else -850.0
    noise = float(np.clip(np.std(parenchyma), 10.0, 60.0)) if parenchyma.size >= 20 else 30.0
    pads = [max(1, int(np.ceil(pad_mm / s))) for s in volume.spacing]
    # in-plane: the crop's edges continue (chest wall stays attached to the border, as in the scan)
    hu = np.pad(hu, ((0, 0), (pads[1], pads[1]), (pads[2], pads[2])), mode="edge")
    rng = np.random.default_rng(seed)
    slab = (background + noise * rng.standard_normal((pads[0], *hu.shape[1:]))).astype(np.float32)
    padded = np.concatenate([slab, hu, slab[::-1]], axis=0)
    origin = volume.voxel_to_world((-pads[0], -pads[1], -pads[2]))
    context = Volume(
        array=padded,
        spacing=volume.spacing,
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=volume.direction,
    )
    if spacing is not None:
        context = resample(context, spacing, default_value=background)
    air = np.asarray(context.array) < air_threshold_hu
    lung = fill_lung(torch.from_numpy(air), context.spacing)
    labels = lung.astype(np.uint8)
    mask = LungMask(labels=labels, airway=np.zeros_like(lung), spacing=context.spacing)
    corners = np.array(
        [
            volume.voxel_to_world((z, y, x))
            for z in (-0.5, volume.shape[0] - 0.5)
            for y in (-0.5, volume.shape[1] - 0.5)
            for x in (-0.5, volume.shape[2] - 0.5)
        ]
    )
    inside = context.world_to_voxel(corners)
    low = np.clip(np.ceil(inside.min(axis=0) - 1e-6), 0, None).astype(int)
    high = np.minimum(np.floor(inside.max(axis=0) + 1e-6).astype(int) + 1, context.shape)
    box = ((int(low[0]), int(high[0])), (int(low[1]), int(high[1])), (int(low[2]), int(high[2])))
    on_grid = None
    if reference is not None:
        ref_volume = Volume(
            array=reference.astype(np.uint8),
            spacing=volume.spacing,
            origin=volume.origin,
            direction=volume.direction,
        )
        on_grid = np.asarray(resample_like(ref_volume, context).array) > 0
    return CropContext(context, mask, background, box, on_grid)


def _inside(candidate: NoduleCandidate, reference: npt.NDArray[np.bool_]) -> bool:
    zyx = np.rint(candidate.center_zyx).astype(int)
    if np.any(zyx < 0) or np.any(zyx >= np.asarray(reference.shape)):
        return False
    return bool(reference[tuple(zyx)])


def measure_crop(
    nodule: CropNodule,
    *,
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0),
    device: str | torch.device = "cpu",
    segmentation: SegmentationParams = DEFAULT_SEGMENTATION,
) -> CropMeasurement:
    """Measure one real nodule as the node would and compare it with its readers' mask.

    Parameters
    ----------
    nodule : CropNodule
        A row of ``nodules.csv``.
    spacing : tuple of float or None
        Processing grid (the node's 1 mm by default).
    device : str or torch.device
        Where the blob filter runs.
    segmentation : ai.measure.SegmentationParams
        Tunables of the segmentation (the node's defaults unless tuning).

    Returns
    -------
    CropMeasurement
    """
    volume, reference = load_crop(nodule)
    ref = shape_measures(reference, volume.spacing)
    crop = crop_in_context(volume, reference, spacing=spacing)
    ref_on_grid = (
        crop.reference if crop.reference is not None else np.zeros(crop.volume.shape, np.bool_)
    )
    # a reference too thin to survive nearest-neighbour resampling: accept its centroid's voxel
    if not ref_on_grid.any():
        centre = np.rint(crop.volume.world_to_voxel(nodule.center_xyz)).astype(int)
        ref_on_grid[tuple(np.clip(centre, 0, np.asarray(crop.volume.shape) - 1))] = True
    candidates = find_nodules(
        crop.volume,
        crop.lungs,
        device=device,
        background_hu=crop.background_hu,
        min_confidence=0.0,
        segmentation=segmentation,
    )
    hits = [c for c in candidates if _inside(c, ref_on_grid)]
    base = {
        "patient_id": nodule.patient_id,
        "nodule_id": nodule.nodule_id,
        "ref_diameter_mm": ref.diameter_mm,
        "ref_long_axis_mm": ref.long_axis_mm,
        "ref_volume_mm3": ref.volume_mm3,
        "ref_texture": texture_class(nodule.texture),
        "table_diameter_mm": nodule.diameter_mm,
    }
    if not hits:
        logger.debug("%s/%s: no candidate inside", nodule.patient_id, nodule.nodule_id)
        return CropMeasurement(**base, found=False)  # type: ignore[arg-type]
    best = max(hits, key=lambda c: c.confidence)
    return CropMeasurement(
        **base,  # type: ignore[arg-type]
        found=True,
        diameter_mm=best.diameter_mm,
        long_axis_mm=best.long_axis_mm,
        volume_mm3=best.volume_mm3,
        texture=best.texture,
        confidence=best.confidence,
        mean_hu=best.mean_hu,
        peak_hu=best.peak_hu,
        solid_share=best.solid_share,
    )


@dataclass(frozen=True)
class MeasurementRow:
    """Errors of one group of nodules (a size class, or all)."""

    label: str
    n: int
    found: int
    median_abs_diameter_error_mm: float | None
    median_abs_long_axis_error_mm: float | None
    median_abs_volume_error_pct: float | None
    median_diameter_bias_mm: float | None
    """Median of measured minus reference equivalent diameter (sign shows over/under)."""


@dataclass(frozen=True)
class MeasurementReport:
    """What ``dicom-node evaluate measurement`` reports."""

    overall: MeasurementRow
    size_classes: tuple[MeasurementRow, ...]
    textures: tuple[MeasurementRow, ...]
    texture_confusion: dict[str, dict[str, int]]
    """Reference texture -> measured texture -> count (found nodules)."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "overall": asdict(self.overall),
            "size_classes": [asdict(r) for r in self.size_classes],
            "textures": [asdict(r) for r in self.textures],
            "texture_confusion": self.texture_confusion,
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _row(label: str, items: Sequence[CropMeasurement]) -> MeasurementRow:
    found = [m for m in items if m.found]
    diameter = [abs(m.diameter_mm - m.ref_diameter_mm) for m in found if m.diameter_mm is not None]
    long_axis = [
        abs(m.long_axis_mm - m.ref_long_axis_mm) for m in found if m.long_axis_mm is not None
    ]
    volume = [
        100.0 * abs(m.volume_mm3 - m.ref_volume_mm3) / m.ref_volume_mm3
        for m in found
        if m.volume_mm3 is not None
    ]
    bias = [m.diameter_mm - m.ref_diameter_mm for m in found if m.diameter_mm is not None]
    return MeasurementRow(
        label=label,
        n=len(items),
        found=len(found),
        median_abs_diameter_error_mm=_median(diameter),
        median_abs_long_axis_error_mm=_median(long_axis),
        median_abs_volume_error_pct=_median(volume),
        median_diameter_bias_mm=_median(bias),
    )


def summarise_measurements(measurements: Sequence[CropMeasurement]) -> MeasurementReport:
    """Median errors overall, per size class (of the reference diameter) and per texture.

    Parameters
    ----------
    measurements : sequence of CropMeasurement

    Returns
    -------
    MeasurementReport

    Raises
    ------
    ValueError
        If there are no measurements.
    """
    if not measurements:
        raise ValueError("no measurements to summarise")
    classes = []
    for cls in range(1, len(SIZE_CLASS_LABELS)):
        items = [m for m in measurements if size_class(m.ref_diameter_mm) == cls]
        classes.append(_row(SIZE_CLASS_LABELS[cls], items))
    textures = tuple(_row(t, [m for m in measurements if m.ref_texture == t]) for t in TEXTURES)
    confusion: dict[str, dict[str, int]] = {t: {u: 0 for u in TEXTURES} for t in TEXTURES}
    for m in measurements:
        if m.found and m.texture is not None:
            confusion[m.ref_texture][m.texture] += 1
    return MeasurementReport(
        overall=_row("all", measurements),
        size_classes=tuple(classes),
        textures=textures,
        texture_confusion=confusion,
    )
