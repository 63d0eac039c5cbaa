"""Render phantom family B on any axial grid (a whole study or one training patch).

Same contract as :func:`ai.phantom.grid.render_grid` (HU int16, lung labels,
nodule labels on the grid), other physics:

- parenchyma: two-scale texture (about 1.5 mm and 8 mm), denser posteriorly;
- vessels (:func:`ai.phantom.family_b.make_patient_b`'s trees): a logistic
  edge whose width grows with the radius instead of a one-voxel ramp;
- nodules: :func:`ai.phantom.family_b.nodule_occupancy_b`;
- scanner (:class:`ScannerB`, drawn from the noise key unless given): a box
  slice profile along z (slice thickness), an in-plane Gaussian blur, edge
  enhancement (unsharp masking: the overshoot of sharp lung kernels), and
  noise with a ramp-shaped noise power spectrum (``|f|`` times the kernel's
  response squared, as filtered back projection gives) at the asked
  standard deviation, independent between slices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ai.phantom import anatomy as A
from ai.phantom.anatomy import Patient
from ai.phantom.family_b import nodule_occupancy_b
from ai.phantom.grid import (
    _bbox,
    _capsule_box,
    _capsules_in_grid,
    _points,
    anatomy_slices,
    capsule_distance,
    carve_central_airways_and_vessels,
)
from ai.phantom.lidc_shapes import load_shapes
from ai.phantom.nodules import NoduleTrack, NoduleTruth

__all__ = ["ScannerB", "render_grid_b", "scanner_b"]

logger = logging.getLogger(__name__)

HU_LUNG_B = -875.0


@dataclass(frozen=True)
class ScannerB:
    """Family B's reconstruction.

    Parameters
    ----------
    slice_mm : float
        Slice thickness (box profile along z), mm; at most the grid's spacing
        leaves the image unchanged along z.
    blur_mm : float
        In-plane Gaussian sigma, mm.
    sharpen : float
        Unsharp-mask amount (0: smooth kernel; about 1: sharp lung kernel).
    sharpen_mm : float
        Sigma of the unsharp mask's blur, mm.
    """

    slice_mm: float = 1.25
    blur_mm: float = 0.5
    sharpen: float = 0.6
    sharpen_mm: float = 1.2


def scanner_b(key: int, *, slice_mm: float | None = None) -> ScannerB:
    """A random family-B reconstruction, fixed by ``key``.

    Thickness 1-2.5 mm (or ``slice_mm``), blur 0.3-0.8 mm, sharpening 0-1.2.
    """
    rng = np.random.default_rng([key, 818])
    thickness = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5])) if slice_mm is None else slice_mm
    return ScannerB(
        slice_mm=thickness,
        blur_mm=float(rng.uniform(0.3, 0.8)),
        sharpen=float(rng.uniform(0.0, 1.2)),
        sharpen_mm=float(rng.uniform(0.9, 1.6)),
    )


def _field(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], corr_mm: float, seed: int
) -> npt.NDArray[np.float32]:
    """Smooth random field with about ``corr_mm`` correlation, std 1, ``(z, y, x)`` float32."""
    rng = np.random.default_rng([seed, 919])
    step = max(min(spacing), corr_mm / 3.0)
    coarse = tuple(
        max(2, int(math.ceil(n * sp / step)) + 1) for n, sp in zip(shape, spacing, strict=True)
    )
    field = ndimage.gaussian_filter(
        rng.standard_normal(coarse, dtype=np.float32), sigma=corr_mm / step / 2.0
    )
    field /= max(float(field.std()), 1e-6)
    zoom = [n / c for n, c in zip(shape, coarse, strict=True)]
    fine: npt.NDArray[np.float32] = ndimage.zoom(
        field, zoom, order=1, mode="nearest", grid_mode=True
    )
    return fine[: shape[0], : shape[1], : shape[2]]


def _kernel_response(
    shape: tuple[int, int], pixel_mm: float, scanner: ScannerB
) -> npt.NDArray[np.float64]:
    """In-plane frequency response (``rfft2`` layout) of the blur and the unsharp mask."""
    fy = np.fft.fftfreq(shape[0], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(shape[1], d=pixel_mm)[None, :]
    f2 = fx**2 + fy**2
    blur = np.exp(-2.0 * (np.pi**2) * f2 * scanner.blur_mm**2)
    mask_blur = np.exp(-2.0 * (np.pi**2) * f2 * scanner.sharpen_mm**2)
    result: npt.NDArray[np.float64] = blur * (1.0 + scanner.sharpen * (1.0 - mask_blur))
    return result


def _reconstruct(
    hu: npt.NDArray[np.float32],
    dz: float,
    pixel_mm: float,
    scanner: ScannerB,
    noise_hu: float,
    noise_key: int,
) -> npt.NDArray[np.float32]:
    """Slice profile, kernel and ramp-shaped noise, all in place of ``hu``'s values."""
    width = scanner.slice_mm / dz
    if width > 1.0:  # box profile: a moving average over the slice thickness
        hu = ndimage.uniform_filter1d(hu, size=max(1, int(round(width))), axis=0, mode="nearest")
    response = _kernel_response(hu.shape[1:], pixel_mm, scanner)
    fy = np.fft.fftfreq(hu.shape[1], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(hu.shape[2], d=pixel_mm)[None, :]
    ramp = np.sqrt(np.sqrt(fx**2 + fy**2)) * response  # amplitude: the NPS is |f| * response^2
    rng = np.random.default_rng([noise_key, 626])
    image = np.empty(hu.shape, np.float32)
    scale = None
    for start in range(0, hu.shape[0], 16):  # slabs keep the complex spectra small
        slab = slice(start, start + 16)
        image[slab] = np.fft.irfft2(np.fft.rfft2(hu[slab]) * response, s=hu.shape[1:])
        if noise_hu <= 0:
            continue
        white = rng.standard_normal(image[slab].shape, dtype=np.float32)
        noise = np.fft.irfft2(np.fft.rfft2(white) * ramp, s=hu.shape[1:])
        if scale is None:  # the same filter everywhere: one scale from the first slab
            scale = noise_hu / max(float(noise.std()), 1e-9)
        image[slab] += (noise * scale).astype(np.float32)
    return image


def render_grid_b(
    patient: Patient,
    offset: npt.NDArray[np.float64],
    axes_zyx: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]],
    nodules: Sequence[tuple[NoduleTrack, NoduleTruth]],
    *,
    noise_key: int,
    noise_hu: float = 20.0,
    scanner: ScannerB | None = None,
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Render a family-B patient on an axial grid (arguments as ``ai.phantom.grid.render_grid``).

    Parameters
    ----------
    scanner : ScannerB, optional
        Reconstruction; default :func:`scanner_b` of ``noise_key``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(z, y, x)`` int16 HU, uint8 lung labels, uint8 nodule labels.
    """
    zs, ys, xs = axes_zyx
    grid_axes = (zs, ys, xs)
    shape = (len(zs), len(ys), len(xs))
    dz, px = float(zs[1] - zs[0]) if len(zs) > 1 else 1.0, float(xs[1] - xs[0])
    scanner = scanner or scanner_b(noise_key)
    hu, lungs = anatomy_slices(patient, offset, axes_zyx)
    gravity = np.clip((ys - offset[1]) / (85.0 * patient.scale), -1, 1).astype(np.float32)
    texture = 16.0 * _field(shape, (dz, px, px), 1.5, noise_key + 1)
    texture += 14.0 * _field(shape, (dz, px, px), 8.0, noise_key + 2)
    texture += (HU_LUNG_B + 30.0 * gravity)[None, :, None]
    np.copyto(hu, texture, where=lungs > 0)
    del texture
    edge = float(px)
    carve_central_airways_and_vessels(hu, lungs, patient, offset, grid_axes, edge)
    vessels = patient.vessels
    for i in _capsules_in_grid(vessels, 2.0 * edge, offset, grid_axes):
        box = _capsule_box(vessels, i, 2.0 * edge, offset, grid_axes)
        if box is None:
            continue
        dist, radius = capsule_distance(vessels, i, _points(grid_axes, box) - offset)
        occ = (1.0 / (1.0 + np.exp((dist - radius) / (0.15 + 0.12 * radius)))).astype(np.float32)
        block = hu[box]
        blended = block + occ * np.maximum(A.HU_VESSEL - block, 0.0)
        hu[box] = np.where(lungs[box] > 0, blended, block)
    nodule_mask = np.zeros(shape, dtype=np.uint8)
    for label, (track, truth) in enumerate(nodules, start=1):
        center = np.asarray(truth.center_xyz)
        reach = load_shapes().extent_mm(track.library_index, truth.diameter_mm) + 2.0 * edge
        box = _bbox(grid_axes, center - reach, center + reach)
        if box is None:
            continue
        fill, nodule_hu = nodule_occupancy_b(
            track, truth.diameter_mm, _points(grid_axes, box) - center
        )
        block = hu[box]
        hu[box] = np.maximum(block, block + fill * (nodule_hu - block))
        solid = fill >= 0.5
        nodule_mask[box][solid] = label
        lungs[box][solid] = track.lung
    image = _reconstruct(hu, dz, px, scanner, noise_hu, noise_key)
    np.clip(np.rint(image), -1024, 3071, out=image)
    return image.astype(np.int16), lungs, nodule_mask
