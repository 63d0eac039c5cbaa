"""Segment and measure one nodule from a seed point: the measurement step of :mod:`ai.nodules`.

From a seed (a voxel near the blob's centre and the radius of its blob scale)
on the native grid:

1. a threshold half-way between the lung background and the nodule's own
   outer density (the median of a shell at 0.35-0.75 of the radius); for
   sub-solid nodules only the density band of the nodule, with enclosed solid
   parts filled back in, so a part-solid nodule is measured with its
   ground-glass rim;
2. re-centring on the thickest point, a second threshold from a shell scaled
   to that thickness;
3. an opening with a ball of 0.72 of the thickness that cuts attached
   vessels, the component at the centre, grown back inside the threshold, and
   what reaches beyond 1.5 thicknesses cut off (and counted as leak);
4. centroid, equivalent-sphere and long-axis diameters, volume, mean and peak
   HU, texture (share of solid voxels), bounding box, elongation, and a
   confidence from the blob response and the shape.

:func:`shape_measures` is the one definition of volume, equivalent diameter
and long axis, used for our segmentations and for reference masks alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ai.types import Volume

__all__ = [
    "DEFAULT_SEGMENTATION",
    "NoduleCandidate",
    "SOLID_HU",
    "SPHERE_RESPONSE",
    "Seed",
    "SegmentationParams",
    "ShapeMeasures",
    "Texture",
    "MaskMeasures",
    "mask_measures",
    "measure_seed",
    "shape_measures",
]

logger = logging.getLogger(__name__)

Texture = Literal["solid", "part-solid", "ground-glass"]

#: Dot-filter response of a unit-contrast ball at its own scale (measured once, see tests).
SPHERE_RESPONSE = 0.30
#: HU above which a voxel counts as solid.
SOLID_HU = -300.0


@dataclass(frozen=True)
class NoduleCandidate:
    """One nodule candidate.

    Parameters
    ----------
    center_zyx : tuple of float
        Centroid in (fractional) voxel indices ``(z, y, x)`` of the volume.
    center_xyz : tuple of float
        Centroid in world LPS mm ``(x, y, z)``.
    diameter_mm : float
        Equivalent-sphere diameter ``(6 V / pi) ** (1/3)`` in mm.
    long_axis_mm : float
        Largest extent (maximum Feret diameter) in mm.
    volume_mm3 : float
        Segmented volume in mm³.
    mean_hu, peak_hu : float
        Mean HU of the segmented voxels, and the maximum of the 3x3x3 mean.
    texture : {"solid", "part-solid", "ground-glass"}
        From the peak and mean HU (:class:`SegmentationParams`).
    bbox : tuple of tuple of int
        ``((z0, z1), (y0, y1), (x0, x1))`` half-open voxel bounds.
    confidence : float
        ``0..1``; higher is more nodule-like. Used to rank (FROC).
    laterality : {"right", "left"}
        Patient's lung the candidate lies in.
    elongation : float
        Square root of the ratio of the largest to the smallest principal
        variance of the voxel coordinates in mm (1 for a ball).
    leak : float
        Share of the thresholded component cut off beyond the nodule's own
        ball (attached vessels, pleura): 0 for an isolated nodule.
    solid_share : float
        Share of the segmented voxels denser than -150 HU (after a 0.6 mm blur).
    probability : float or None
        Probability that this is a nodule, from the false-positive reduction
        network (:mod:`ai.fpr`); ``None`` before that stage ran.
    segmentation : numpy.ndarray or None
        ``bbox``-shaped bool, the segmented voxels (not compared, not in repr).
    """

    center_zyx: tuple[float, float, float]
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    long_axis_mm: float
    volume_mm3: float
    mean_hu: float
    peak_hu: float
    texture: Texture
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    confidence: float
    laterality: Literal["right", "left"]
    elongation: float
    leak: float = 0.0
    solid_share: float = 1.0
    probability: float | None = None
    segmentation: npt.NDArray[np.bool_] | None = field(default=None, repr=False, compare=False)


def _dilate(
    mask: npt.NDArray[np.bool_], radius_mm: float, spacing: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    """Dilation by a ball of ``radius_mm`` (a Euclidean distance transform, not a structuring
    element: the time does not grow with the radius)."""
    if not mask.any():
        return mask.copy()
    result: npt.NDArray[np.bool_] = (
        ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm + 1e-6
    )
    return result


def _erode(
    mask: npt.NDArray[np.bool_], radius_mm: float, spacing: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    """Erosion by a ball of ``radius_mm``; outside the array counts as background."""
    padded = np.pad(mask, 1)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing) > radius_mm + 1e-6
    result: npt.NDArray[np.bool_] = inside[1:-1, 1:-1, 1:-1]
    return result


@dataclass(frozen=True)
class Seed:
    zyx: tuple[int, int, int]
    radius_mm: float
    response: float


def _distance(
    shape: tuple[int, ...], centre: tuple[int, ...], spacing: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    grids = np.meshgrid(
        *[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing, strict=True)],
        indexing="ij",
        sparse=True,
    )
    result: npt.NDArray[np.float64] = np.sqrt(sum(g**2 for g in grids))
    return result


@dataclass(frozen=True)
class SegmentationParams:
    """Tunables of :func:`measure_seed`.

    The defaults were chosen on the real LIDC crops of patient folds 0-3
    (:func:`ai.readers.lidc_crops.patient_folds`, ``k=5``); fold 4 is left
    for the report (``dicom-node evaluate measurement --folds 4``).
    """

    edge_fraction: float = 0.35
    """The edge threshold lies this far from the background towards the nodule's level."""
    opening_factor: float = 0.72
    """Opening radius as a share of the nodule's thickness (cuts attached vessels) ..."""
    max_opening_mm: float = 1e9
    """... but never more than this, so large nodules keep their lobulations."""
    limit_factor: float = 2.0
    """What reaches beyond this many thicknesses from the thickest point is cut (and leaks)."""
    halo_min_hu: float = 150.0
    """A solid segment whose 1-3 mm rim is this much denser than the background has a
    ground-glass halo: it is measured again with the halo's level (part-solid)."""
    min_rim_lung_share: float = 0.6
    """Share of the 2-voxel rim that must be lung (soft tissue brought in by the search
    closing, at the diaphragm dome or mediastinal corners, is surrounded by more tissue) ..."""
    min_inside_share: float = 0.3
    """... and share of the segment inside the lung mask."""
    ground_glass_max_peak_hu: float = -125.0
    """Texture: ground glass when the densest point (0.6 mm blur) stays under this ..."""
    solid_min_mean_hu: float = -375.0
    """... else solid when the mean HU reaches this, part-solid otherwise."""


#: Parameters used unless others are given.
DEFAULT_SEGMENTATION = SegmentationParams()


@dataclass
class _Segment:
    seg: npt.NDArray[np.bool_]
    level: float
    leak: float
    dist: npt.NDArray[np.float64]


def _threshold(
    smooth: npt.NDArray[np.float32], level: float, background_hu: float, fraction: float
) -> npt.NDArray[np.bool_]:
    binary: npt.NDArray[np.bool_] = smooth > background_hu + fraction * (level - background_hu)
    if level < SOLID_HU:
        # sub-solid: leave out what is much denser (vessels); the enclosed solid core is
        # filled back in (a part-solid nodule's core is enclosed by its halo)
        binary &= smooth < level + (level - background_hu)
        binary = ndimage.binary_fill_holes(binary)
    return binary


def _segment(
    smooth: npt.NDArray[np.float32],
    dist: npt.NDArray[np.float64],
    radius_mm: float,
    level: float,
    background_hu: float,
    spacing: tuple[float, float, float],
    params: SegmentationParams,
    *,
    refine_level: bool = True,
) -> _Segment | None:
    """Threshold, re-centre on the thickest point, open, keep the centre component, cut."""
    binary = _threshold(smooth, level, background_hu, params.edge_fraction)
    inner = ndimage.distance_transform_edt(binary, sampling=spacing)
    # re-centre on the thickest point near the seed (coarse-scale seeds are a few mm off)
    reach = dist <= max(radius_mm, max(spacing))
    thickness = float(inner[reach].max(initial=0.0))
    if thickness < 0.5 * max(spacing):
        return None
    peak = np.unravel_index(int(np.argmax(np.where(reach, inner, -1.0))), inner.shape)
    dist = _distance(smooth.shape, tuple(int(v) for v in peak), spacing)
    if refine_level:
        # second pass: the nodule's own density from a shell scaled to its thickness
        shell = (dist >= 0.4 * thickness) & (dist <= 0.8 * thickness) & binary
        if np.count_nonzero(shell) >= 4:
            level = float(np.median(smooth[shell]))
            binary = _threshold(smooth, level, background_hu, params.edge_fraction)
    opening = min(max(params.opening_factor * thickness, 0.5 * max(spacing)), params.max_opening_mm)
    opened = binary & _dilate(_erode(binary, opening, spacing), opening, spacing)
    comp, _ = ndimage.label(opened)
    near = comp[dist <= max(0.6 * thickness, max(spacing))]
    near = near[near > 0]
    if near.size == 0:
        return None
    seg = comp == np.bincount(near).argmax()
    seg = binary & _dilate(seg, opening, spacing)
    seg_lab, _ = ndimage.label(seg)
    seg = seg_lab == np.bincount(seg_lab[seg_lab > 0]).argmax()
    # what reaches beyond the blob's own ball is an attached vessel or pleura: cut it, and count it
    limit = max(params.limit_factor * thickness, thickness + 2.0 * max(spacing))
    before = int(seg.sum())
    seg &= dist <= limit
    leak = 1.0 - int(seg.sum()) / max(before, 1)
    if level < SOLID_HU:
        seg = ndimage.binary_fill_holes(seg)
    return _Segment(seg=seg, level=level, leak=leak, dist=dist)


def _halo_level(
    smooth: npt.NDArray[np.float32],
    segment: _Segment,
    allowed: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> float | None:
    """Median smoothed HU of the 1-3 mm rim around a segment (inside ``allowed``)."""
    distance = ndimage.distance_transform_edt(~segment.seg, sampling=spacing)
    outer, inner = distance <= 3.0, distance <= 1.0
    rim = outer & ~inner & allowed
    return float(np.median(smooth[rim])) if np.count_nonzero(rim) >= 8 else None


def measure_seed(
    seed: Seed,
    hu: npt.NDArray[np.float32],
    region: npt.NDArray[np.bool_],
    labels: npt.NDArray[np.uint8],
    volume: Volume,
    background_hu: float,
    params: SegmentationParams = DEFAULT_SEGMENTATION,
) -> NoduleCandidate | None:
    """Segment and measure the blob at ``seed``.

    Parameters
    ----------
    seed : Seed
        Voxel ``(z, y, x)`` of ``hu``, blob radius and response.
    hu : numpy.ndarray
        ``(z, y, x)`` float32 HU (a crop of the volume around the lungs).
    region : numpy.ndarray
        ``(z, y, x)`` bool, the search region (lungs closed wide).
    labels : numpy.ndarray
        ``(z, y, x)`` uint8 lung labels (1 right, 2 left) on the same grid.
    volume : Volume
        The whole volume (for its spacing).
    background_hu : float
        HU of normal lung parenchyma.
    params : SegmentationParams
        Tunables.

    Returns
    -------
    NoduleCandidate or None
        In ``hu``'s voxel coordinates (``center_xyz`` left at zero for the
        caller to set); ``None`` when there is no nodule-like blob there.
    """
    spacing = volume.spacing
    r = seed.radius_mm
    half = [int(math.ceil((2.0 * r + 6.0) / s)) for s in spacing]
    lo = [max(0, c - h) for c, h in zip(seed.zyx, half, strict=True)]
    hi = [min(n, c + h + 1) for c, h, n in zip(seed.zyx, half, hu.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    centre = tuple(c - a for c, a in zip(seed.zyx, lo, strict=True))
    dist = _distance(hu[box].shape, centre, spacing)
    # the search region (lungs closed wide) only near the seed; farther out, the lungs themselves,
    # so that chest wall the wide closing took in does not join a juxtapleural nodule's segment
    allowed = (labels[box] > 0) | (region[box] & (dist <= 1.2 * r + max(spacing)))
    local = np.where(allowed, hu[box], background_hu).astype(np.float32)
    smooth = ndimage.gaussian_filter(local, sigma=[0.6 / s for s in spacing], truncate=2.5)
    shell = (dist >= 0.35 * r) & (dist <= 0.75 * r)
    core = dist <= max(0.5 * r, min(spacing))
    level = float(np.median(smooth[shell])) if shell.any() else float(np.median(smooth[core]))
    if level < -700:
        level = float(np.percentile(smooth[core], 75))
    if level - background_hu < 120.0:
        logger.debug("seed %s: too faint (level %.0f HU)", seed.zyx, level)
        return None
    segment = _segment(smooth, dist, r, level, background_hu, spacing, params)
    if segment is None:
        logger.debug("seed %s: nothing there", seed.zyx)
        return None
    if segment.level >= SOLID_HU:
        halo = _halo_level(smooth, segment, allowed, spacing)
        if halo is not None and background_hu + params.halo_min_hu <= halo < SOLID_HU:
            wider = _segment(
                smooth, segment.dist, r, halo, background_hu, spacing, params, refine_level=False
            )
            core_kept = wider is not None and np.count_nonzero(
                wider.seg & segment.seg
            ) >= 0.8 * np.count_nonzero(segment.seg)
            if wider is not None and core_kept and wider.seg.sum() > segment.seg.sum():
                logger.debug("seed %s: ground-glass halo at %.0f HU", seed.zyx, halo)
                segment = wider
    seg, level, leak = segment.seg, segment.level, segment.leak
    points = np.argwhere(seg)
    if points.shape[0] < 2:
        return None
    shape = shape_measures(seg, spacing)
    volume_mm3, diameter, long_axis = shape.volume_mm3, shape.diameter_mm, shape.long_axis_mm
    elongation = shape.elongation
    solid_share = float(np.mean(smooth[seg] > SOLID_HU + 150.0))
    mean_hu, peak_hu = float(local[seg].mean()), float(smooth[seg].max())
    texture: Texture = (
        "ground-glass"
        if peak_hu < params.ground_glass_max_peak_hu
        else "solid"
        if mean_hu >= params.solid_min_mean_hu
        else "part-solid"
    )
    lab_values = labels[box][seg]
    # a nodule is mostly surrounded by lung; soft tissue brought in by the search closing
    # (diaphragm dome, mediastinal corners) is mostly surrounded by more soft tissue
    ring = _dilate(seg, 2.0 * max(spacing), spacing) & ~seg
    lung_share = float(np.mean(labels[box][ring] > 0)) if ring.any() else 0.0
    inside_share = float(np.mean(lab_values > 0))
    if lung_share < params.min_rim_lung_share or inside_share < params.min_inside_share:
        logger.debug(
            "seed %s: not in the lung (%.2f of its rim, %.2f of it)",
            seed.zyx,
            lung_share,
            inside_share,
        )
        return None
    right = np.count_nonzero(lab_values == 1)
    left = np.count_nonzero(lab_values == 2)
    compact = min(1.0, diameter / max(long_axis, 1e-6))
    response = min(1.5, seed.response / SPHERE_RESPONSE)
    score = response * compact**2 * (1.0 - leak) / (1.0 + 0.6 * max(0.0, elongation - 1.3))
    zyx = points.mean(axis=0) + np.asarray(lo)
    seg_lo, seg_hi = points.min(axis=0), points.max(axis=0) + 1
    bbox_lo, bbox_hi = seg_lo + np.asarray(lo), seg_hi + np.asarray(lo)
    logger.debug(
        "seed %s: d %.1f mm, leak %.2f, elongation %.2f, score %.3f",
        seed.zyx,
        diameter,
        leak,
        elongation,
        score,
    )
    return NoduleCandidate(
        center_zyx=(float(zyx[0]), float(zyx[1]), float(zyx[2])),
        center_xyz=(0.0, 0.0, 0.0),  # set by _shift, which knows the crop
        diameter_mm=float(diameter),
        long_axis_mm=float(long_axis),
        volume_mm3=float(volume_mm3),
        mean_hu=mean_hu,
        peak_hu=peak_hu,
        texture=texture,
        bbox=tuple((int(a), int(b)) for a, b in zip(bbox_lo, bbox_hi, strict=True)),  # type: ignore[arg-type]
        confidence=float(1.0 - math.exp(-2.0 * score)),
        laterality="left" if left > right else "right",
        elongation=elongation,
        leak=leak,
        solid_share=solid_share,
        segmentation=seg[tuple(slice(a, b) for a, b in zip(seg_lo, seg_hi, strict=True))].copy(),
    )


@dataclass(frozen=True)
class ShapeMeasures:
    """Size of a segmented nodule (see :func:`shape_measures`)."""

    volume_mm3: float
    """Voxel count times voxel volume."""
    diameter_mm: float
    """Equivalent-sphere diameter ``(6 V / pi) ** (1/3)``."""
    long_axis_mm: float
    """Largest 3-D extent: maximum distance between voxel centres plus the mean voxel size."""
    elongation: float
    """Square root of the largest over the smallest principal variance (1 for a ball)."""


def shape_measures(
    mask: npt.NDArray[np.bool_], spacing: tuple[float, float, float]
) -> ShapeMeasures:
    """Volume, equivalent and long-axis diameters of a binary segmentation.

    The one definition used for the detector's segmentations and for the
    readers' reference masks, so that errors compare like with like.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(z, y, x)`` bool, the nodule.
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm.

    Returns
    -------
    ShapeMeasures

    Raises
    ------
    ValueError
        If the mask is empty.
    """
    points = np.argwhere(mask)
    if points.shape[0] == 0:
        raise ValueError("empty mask")
    volume_mm3 = points.shape[0] * float(np.prod(spacing))
    mm = points.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    cov = np.cov(mm.T) if points.shape[0] > 3 else np.eye(3)
    evals = np.clip(np.linalg.eigvalsh(cov), 1e-6, None)
    return ShapeMeasures(
        volume_mm3=volume_mm3,
        diameter_mm=(6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0),
        long_axis_mm=_feret(mm) + float(np.mean(spacing)),
        elongation=float(math.sqrt(evals[-1] / evals[0])),
    )


@dataclass(frozen=True)
class MaskMeasures:
    """A given segmentation, measured as :func:`measure_seed` measures its own."""

    shape: ShapeMeasures
    mean_hu: float
    """Mean HU of the masked voxels."""
    peak_hu: float
    """Densest masked voxel after the same 0.6 mm blur :func:`measure_seed` uses."""


def mask_measures(volume: Volume, mask: npt.NDArray[np.bool_]) -> MaskMeasures:
    """Size and density of a nodule given by its mask (a reader's, not our segmentation).

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` HU.
    mask : numpy.ndarray
        ``(z, y, x)`` bool on the volume's grid.

    Returns
    -------
    MaskMeasures

    Raises
    ------
    ValueError
        The mask is empty or not on the volume's grid.
    """
    if mask.shape != volume.shape:
        raise ValueError(f"mask {mask.shape} is not on the volume's grid {volume.shape}")
    hu = np.asarray(volume.array, np.float32)
    smooth = ndimage.gaussian_filter(hu, sigma=[0.6 / s for s in volume.spacing], truncate=2.5)
    shape = shape_measures(mask, volume.spacing)
    return MaskMeasures(shape, float(hu[mask].mean()), float(smooth[mask].max()))


def _feret(points_mm: npt.NDArray[np.float64]) -> float:
    if points_mm.shape[0] < 2:
        return 0.0
    try:
        hull = points_mm[ConvexHull(points_mm).vertices]
    except (QhullError, ValueError):
        hull = points_mm
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())
