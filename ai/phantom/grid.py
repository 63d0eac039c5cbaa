"""Render the phantom on any axial grid: a whole study or one training patch.

The anatomy is analytic (:mod:`ai.phantom.anatomy`): each slice is computed
from ellipses and tapered capsules, vessels and airways are drawn only in
their bounding boxes, nodules only around their centres. The scanner is a
Gaussian blur with white noise added before it, scaled so that the noise
standard deviation after the blur is the one asked for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai.phantom import anatomy as A
from ai.phantom.anatomy import Capsules, Patient, lung_label_at
from ai.phantom.nodules import NoduleTrack, NoduleTruth, nodule_occupancy

__all__ = ["anatomy_slices", "capsule_distance", "carve_central_airways_and_vessels", "render_grid"]

logger = logging.getLogger(__name__)


class _SliceAnatomy:
    """Axial slices of the analytic anatomy on one in-plane grid.

    Everything that does not depend on ``z`` (body outline, fat, muscle,
    spine, the diaphragm height map, the rib band) is computed once; each
    slice then only adds what changes with ``z``.
    """

    def __init__(
        self, patient: Patient, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
    ) -> None:
        self.patient = patient
        s = patient.scale
        a, b = patient.body_axes
        shape = np.broadcast_shapes(x.shape, y.shape)
        xx, yy = np.broadcast_to(x, shape), np.broadcast_to(y, shape)
        base = np.full(shape, A.HU_AIR, dtype=np.float32)
        base[((xx / a) ** 2 + (yy / b) ** 2 < 1.0) & (yy < b - 8.0 * s)] = A.HU_FAT
        base[((xx / (a - 12 * s)) ** 2 + (yy / (b - 12 * s)) ** 2 < 1.0) & (yy < b - 18.0 * s)] = (
            A.HU_SOFT
        )
        self.cavity = (xx / (a - 32 * s)) ** 2 + ((yy + 2 * s) / (b - 28 * s)) ** 2 < 1.0
        base[self.cavity] = 20.0
        base[(np.abs(yy - (b + 4 * s)) < 3.0 * s) & (np.abs(xx) < 0.8 * a)] = 150.0
        self.base = base
        # diaphragm height map and upper-abdomen values
        side_cx = np.where(xx < 0, -76.0 * s, 76.0 * s)
        rho2 = ((xx - side_cx) / (56.0 * s)) ** 2 + ((yy - 8.0 * s) / (78.0 * s)) ** 2
        dome = np.where(xx < 0, 56.0 * s, 42.0 * s)
        self.z_dia = np.where(
            self.cavity, patient.z_base + dome * np.clip(1.0 - rho2, 0.0, 1.0), -np.inf
        )
        self.abdomen_hu = np.where(xx < 5 * s, A.HU_LIVER, 45.0).astype(np.float32)
        self.gas_xy = ((xx - 55 * s) / (22 * s)) ** 2 + ((yy + 10 * s) / (18 * s)) ** 2
        self.mediastinum = self.cavity & (
            ((xx - 6 * s) / (50 * s)) ** 2 + ((yy + 8 * s) / (75 * s)) ** 2 < 1.0
        )
        self.heart_xy = ((xx - 12 * s) / (58 * s)) ** 2 + ((yy + 20 * s) / (52 * s)) ** 2
        # spine: vertebral body (cortex, marrow or disc), canal, arch, spinous process
        vb = np.sqrt(xx**2 + (yy - 74 * s) ** 2)
        canal = np.sqrt(xx**2 + (yy - 98 * s) ** 2)
        spine = np.full(shape, np.nan, dtype=np.float32)
        spine[vb < 20 * s] = A.HU_CORTICAL
        spine[vb < 18 * s] = A.HU_CANCELLOUS
        spine[(canal < 12 * s) & (canal >= 7 * s)] = 600.0
        spine[canal < 7 * s] = 15.0
        spine[(np.abs(xx) < 4 * s) & (np.abs(yy - 108 * s) < 5 * s)] = 600.0
        self.spine_mask = ~np.isnan(spine)
        self.spine = np.nan_to_num(spine)
        self.marrow = vb < 18 * s
        self.sternum = (xx / (16 * s)) ** 2 + ((yy + b - 24 * s) / (7 * s)) ** 2 < 1.0
        # ribs: 12 pairs sloping down anteriorly in the ring between cavity and muscle
        ring_b = b - 21 * s
        dr = (np.sqrt((xx / (a - 23 * s)) ** 2 + (yy / ring_b) ** 2) - 1.0) * ring_b
        band = (
            (np.abs(dr) < 4.0 * s)
            & ~((yy < -55 * s) & (np.abs(xx) < 35 * s))
            & ~((yy > 0) & (np.abs(xx) < 24 * s))
        )
        self.band = np.flatnonzero(band)
        self.band_dr2 = (dr.ravel()[self.band] / (4.0 * s)) ** 2
        self.band_slope = 0.30 * (90.0 * s - yy.ravel()[self.band])
        self.x, self.y = x, y

    def __call__(self, z: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
        """HU and lung labels of the slice at patient-frame ``z`` (mm)."""
        patient, s = self.patient, self.patient.scale
        hu = self.base.copy()
        abdomen = z < self.z_dia
        np.copyto(hu, self.abdomen_hu, where=abdomen)
        if abs(z + 112 * s) < 10 * s:
            hu[(self.gas_xy + ((z + 112 * s) / (10 * s)) ** 2 < 1.0) & self.cavity] = A.HU_AIR
        hu[self.mediastinum & ~abdomen] = -80.0
        if abs(z + 58 * s) < 56 * s:
            heart_r = self.heart_xy + ((z + 58 * s) / (56 * s)) ** 2
            hu[heart_r < 1.0] = -90.0
            hu[heart_r < 0.88] = A.HU_SOFT
        np.copyto(hu, self.spine, where=self.spine_mask)
        if np.mod(z, 28.0 * s) < 5.0 * s:
            hu[self.marrow] = 80.0  # intervertebral disc
        if -75 * s < z < 95 * s:
            hu[self.sternum] = 300.0
        if self.band.size:
            best = np.full(self.band.shape, np.inf)
            for k in range(12):
                z_rib = patient.z_apex - 6.0 * s - 21.0 * s * k - self.band_slope
                np.minimum(best, self.band_dr2 + ((z - z_rib) / (5.5 * s)) ** 2, out=best)
            inside = best < 1.0
            flat = hu.reshape(-1)
            flat[self.band[inside]] = np.where(best[inside] < 0.45, A.HU_CANCELLOUS, A.HU_CORTICAL)
        return hu, lung_label_at(patient, self.x, self.y, z)


def _blurred_noise_std(sigmas: tuple[float, float, float]) -> float:
    """Std of unit white noise after scipy's separable Gaussian blur (truncate 4)."""
    variance = 1.0
    for sigma in sigmas:
        if sigma <= 0:
            continue
        radius = int(4.0 * sigma + 0.5)
        weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        weights /= weights.sum()
        variance *= float((weights**2).sum())
    return float(np.sqrt(variance))


def _texture(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int
) -> npt.NDArray[np.float32]:
    """Smooth random field (std about 1) with about 4 mm correlation, ``(z, y, x)`` float32."""
    rng = np.random.default_rng([seed, 505])
    coarse = tuple(
        max(2, int(math.ceil(n * sp / 3.0)) + 1) for n, sp in zip(shape, spacing, strict=True)
    )
    smooth = ndimage.gaussian_filter(
        rng.standard_normal(coarse, dtype=np.float32), sigma=1.0, mode="wrap"
    )
    smooth /= max(float(smooth.std()), 1e-6)
    field = torch.from_numpy(smooth)[None, None]
    fine = F.interpolate(field, size=shape, mode="trilinear", align_corners=True)[0, 0]
    result: npt.NDArray[np.float32] = fine.numpy()
    return result


def _bbox(
    grid_axes: tuple[npt.NDArray[np.float64], ...],
    low: npt.NDArray[np.float64],
    high: npt.NDArray[np.float64],
) -> tuple[slice, slice, slice] | None:
    """Index box ``(z, y, x)`` of world box ``[low, high]`` (``(x, y, z)`` mm) on sorted axes."""
    result = []
    for axis, lo, hi in zip(
        grid_axes, (low[2], low[1], low[0]), (high[2], high[1], high[0]), strict=True
    ):
        start = int(np.searchsorted(axis, lo, side="left"))
        stop = int(np.searchsorted(axis, hi, side="right"))
        if stop <= start:
            return None
        result.append(slice(start, stop))
    return (result[0], result[1], result[2])


def _points(
    grid_axes: tuple[npt.NDArray[np.float64], ...], box: tuple[slice, slice, slice]
) -> npt.NDArray[np.float64]:
    zz, yy, xx = np.meshgrid(
        grid_axes[0][box[0]], grid_axes[1][box[1]], grid_axes[2][box[2]], indexing="ij"
    )
    return np.stack([xx, yy, zz], axis=-1)


def capsule_distance(
    caps: Capsules, i: int, points: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distance of points to capsule ``i``'s axis and its radius there (both mm)."""
    seg = caps.p1[i] - caps.p0[i]
    length2 = max(float(seg @ seg), 1e-12)
    rel = points - caps.p0[i]
    t = np.clip((rel @ seg) / length2, 0.0, 1.0)
    dist = np.sqrt(((rel - t[..., None] * seg) ** 2).sum(axis=-1))
    radius = caps.r0[i] + t * (caps.r1[i] - caps.r0[i])
    return dist, radius


def _capsule_occupancy(
    caps: Capsules, i: int, points: npt.NDArray[np.float64], extra: float, edge: float
) -> npt.NDArray[np.float64]:
    dist, radius = capsule_distance(caps, i, points)
    result: npt.NDArray[np.float64] = np.clip(0.5 + (radius + extra - dist) / edge, 0.0, 1.0)
    return result


def _capsule_box(
    caps: Capsules,
    i: int,
    pad: float,
    offset: npt.NDArray[np.float64],
    grid_axes: tuple[npt.NDArray[np.float64], ...],
) -> tuple[slice, slice, slice] | None:
    r = max(caps.r0[i], caps.r1[i]) + pad
    low = np.minimum(caps.p0[i], caps.p1[i]) - r + offset
    high = np.maximum(caps.p0[i], caps.p1[i]) + r + offset
    return _bbox(grid_axes, low, high)


def _capsules_in_grid(
    caps: Capsules,
    pad: float,
    offset: npt.NDArray[np.float64],
    grid_axes: tuple[npt.NDArray[np.float64], ...],
) -> list[int]:
    """Indices of the capsules whose bounding boxes meet the grid (vectorised pre-filter)."""
    if len(caps) == 0:
        return []
    r = np.maximum(caps.r0, caps.r1)[:, None] + pad
    low = np.minimum(caps.p0, caps.p1) - r + offset
    high = np.maximum(caps.p0, caps.p1) + r + offset
    grid_low = np.array([grid_axes[2][0], grid_axes[1][0], grid_axes[0][0]])
    grid_high = np.array([grid_axes[2][-1], grid_axes[1][-1], grid_axes[0][-1]])
    meets = ((high >= grid_low) & (low <= grid_high)).all(axis=1)
    return [int(i) for i in np.flatnonzero(meets)]


def anatomy_slices(
    patient: Patient,
    offset: npt.NDArray[np.float64],
    axes_zyx: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """HU (before lung texture, vessels, nodules) and lung labels of the analytic body on a grid."""
    zs, ys, xs = axes_zyx
    shape = (len(zs), len(ys), len(xs))
    hu = np.empty(shape, dtype=np.float32)
    lungs = np.empty(shape, dtype=np.uint8)
    anatomy = _SliceAnatomy(patient, (xs - offset[0])[None, :], (ys - offset[1])[:, None])
    for k, z in enumerate(zs):
        hu[k], lungs[k] = anatomy(float(z - offset[2]))
    return hu, lungs


def carve_central_airways_and_vessels(
    hu: npt.NDArray[np.float32],
    lungs: npt.NDArray[np.uint8],
    patient: Patient,
    offset: npt.NDArray[np.float64],
    grid_axes: tuple[npt.NDArray[np.float64], ...],
    edge: float,
) -> None:
    """Draw the great vessels and the airways (lumen and wall) in place; they leave the lungs."""
    for i in _capsules_in_grid(patient.great_vessels, edge, offset, grid_axes):
        box = _capsule_box(patient.great_vessels, i, edge, offset, grid_axes)
        if box is None:
            continue
        occ = _capsule_occupancy(
            patient.great_vessels, i, _points(grid_axes, box) - offset, 0.0, edge
        )
        hu[box] = hu[box] * (1 - occ) + A.HU_VESSEL * occ
        lungs[box][occ >= 0.5] = 0
    wall = 2.2 * patient.scale
    for i in _capsules_in_grid(patient.airways, wall + edge, offset, grid_axes):
        box = _capsule_box(patient.airways, i, wall + edge, offset, grid_axes)
        if box is None:
            continue
        pts = _points(grid_axes, box) - offset
        outer = _capsule_occupancy(patient.airways, i, pts, wall, edge)
        lumen = _capsule_occupancy(patient.airways, i, pts, 0.0, edge)
        hu[box] = hu[box] * (1 - outer) + 30.0 * (outer - lumen) + A.HU_AIR * lumen
        lungs[box][outer >= 0.5] = 0


def render_grid(
    patient: Patient,
    offset: npt.NDArray[np.float64],
    axes_zyx: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]],
    nodules: Sequence[tuple[NoduleTrack, NoduleTruth]],
    *,
    noise_key: int,
    noise_hu: float = 20.0,
    blur_voxels: tuple[float, float, float] = (0.45, 0.6, 0.6),
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Render the patient on any axial grid (a whole study or one patch).

    Parameters
    ----------
    patient : Patient
        Anatomy.
    offset : numpy.ndarray
        ``(3,)`` world minus patient-frame position, mm.
    axes_zyx : tuple of numpy.ndarray
        Ascending, evenly spaced world ``z``, ``y`` and ``x`` voxel centres in mm.
    nodules : sequence of (NoduleTrack, NoduleTruth)
        Nodules to draw (world centres in the truth); label ``i + 1`` in the nodule mask.
    noise_key : int
        Seed of the texture and noise (same key, same noise).
    noise_hu : float, optional
        Noise std after blurring, HU.
    blur_voxels : tuple of float, optional
        Gaussian sigma ``(z, y, x)`` in voxels.

    Returns
    -------
    tuple of numpy.ndarray
        ``(z, y, x)`` int16 HU, uint8 lung labels, uint8 nodule labels.
    """
    zs, ys, xs = axes_zyx
    grid_axes = (zs, ys, xs)
    shape = (len(zs), len(ys), len(xs))
    dz, px = float(zs[1] - zs[0]) if len(zs) > 1 else 1.0, float(xs[1] - xs[0])
    hu, lungs = anatomy_slices(patient, offset, axes_zyx)
    texture = _texture(shape, (dz, px, px), noise_key + 1)
    gravity = np.clip(
        (ys - offset[1] - 8.0 * patient.scale) / (78.0 * patient.scale), -1, 1
    ).astype(np.float32)
    texture *= np.float32(22.0)
    texture += (A.HU_LUNG + 45.0 * gravity)[None, :, None].astype(np.float32)
    np.copyto(hu, texture, where=lungs > 0)
    del texture
    edge = float(px)
    carve_central_airways_and_vessels(hu, lungs, patient, offset, grid_axes, edge)
    # pulmonary vessels, inside the lungs only
    vessels = patient.vessels
    for i in _capsules_in_grid(vessels, edge, offset, grid_axes):
        box = _capsule_box(vessels, i, edge, offset, grid_axes)
        if box is None:
            continue
        occ = _capsule_occupancy(vessels, i, _points(grid_axes, box) - offset, 0.0, edge).astype(
            np.float32
        )
        block = hu[box]
        inside = lungs[box] > 0
        blended = block + occ * np.maximum(A.HU_VESSEL - block, 0.0)
        hu[box] = np.where(inside, blended, block)
    nodule_mask = np.zeros(shape, dtype=np.uint8)
    for label, (track, truth) in enumerate(nodules, start=1):
        reach = truth.diameter_mm / 2.0 * 2.0 + 2.0 * edge
        center = np.asarray(truth.center_xyz)
        box = _bbox(grid_axes, center - reach, center + reach)
        if box is None:
            continue
        rel = _points(grid_axes, box) - center
        fill, nodule_hu = nodule_occupancy(track, truth.diameter_mm, rel, edge)
        block = hu[box]
        hu[box] = np.maximum(block, block + fill * (nodule_hu - block))
        solid = fill >= 0.5
        nodule_mask[box][solid] = label
        lungs[box][solid] = track.lung
    # scanner: white noise, then one blur; the noise is scaled so its std after the blur is noise_hu
    if noise_hu > 0:
        rng = np.random.default_rng([noise_key, 606])
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= np.float32(noise_hu / _blurred_noise_std(blur_voxels))
        hu += noise
        del noise
    image = ndimage.gaussian_filter(hu, sigma=blur_voxels, mode="nearest")
    del hu
    np.clip(np.rint(image), -1024, 3071, out=image)
    return image.astype(np.int16), lungs, nodule_mask
