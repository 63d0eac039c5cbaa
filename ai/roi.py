"""2.5-D nodule ROI patches, the input of the hashing network.

For each nodule centre a stack of planes through the centre (several axial
slices, as the FCDN paper uses three; optionally coronal and sagittal ones)
is resampled with torch ``grid_sample`` at a fixed field of view in mm and a
fixed pixel count, lung-masked (with a dilated mask so juxtapleural nodules
and their pleural contact are kept), windowed to -1200..600 HU and scaled to
``[0, 1]``. The same function serves detected candidates and known findings
(LUNA16 annotations via :mod:`ai.readers.luna16`, LIDC readings via
:mod:`ai.readers.lidc`, any list of world points).

Layout of the returned array ``(n, C, size, size)`` float32:

- ``C = len(views) * axial_slices``; channel ``v * axial_slices + k`` is
  view ``views[v]`` at offset ``(k - (axial_slices - 1) / 2) * slice_step_mm``
  along that view's normal (so the middle channel of each view goes through
  the centre).
- ``axial``: rows run along the volume's column direction (patient posterior
  for a standard axial series), columns along its row direction (patient
  left); offsets along the slice normal.
- ``coronal``: rows run against the slice normal (superior at the top for a
  standard series), columns along the row direction; offsets along the column
  direction.
- ``sagittal``: rows against the slice normal, columns along the column
  direction; offsets along the row direction.
- Pixel ``(i, j)`` is at ``(j - (size - 1) / 2) * fov_mm / size`` mm along the
  column axis and ``(i - (size - 1) / 2) * fov_mm / size`` along the row axis
  from the centre. Outside the dilated lung mask reads as 0. Outside the
  volume reads as air (``outside="air"``, the default) or as lung
  parenchyma (``"lung"``, -860 HU, where the lung mask counts as lung).

Crops and whole scans: the real LIDC-IDRI crops of ``ai.readers.lidc_crops``
hold 20-45 mm in-plane and only the slices of the nodule. A model whose
``fov_mm`` fits inside the crops (24 mm) and that asks for
``outside="lung"`` sees the same thing in both: a plane past the nodule's
last slice shows lung without nodule, from the scan itself in a whole scan
and as plain parenchyma in a crop, and the nodule's extent along z reads
the same in both. (The crops end where the readers' consensus mask ends,
so in a crop the plain parenchyma starts exactly there; in a scan what the
readers left out is still visible.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ai.lungs import LungMask
from ai.types import Volume

__all__ = ["HU_WINDOW", "OUTSIDE", "VIEWS", "extract_rois", "rois_from_points", "sample_planes"]

logger = logging.getLogger(__name__)

#: HU mapped to 0 and 1.
HU_WINDOW: tuple[float, float] = (-1200.0, 600.0)
#: Planes that may be asked for.
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: What samples outside the volume read, by name: HU of the fill (see the module docstring).
OUTSIDE: dict[str, float] = {"air": HU_WINDOW[0], "lung": -860.0}


def _plane_axes(volume: Volume, view: str) -> tuple[npt.NDArray[np.float64], ...]:
    """World unit vectors ``(rows, columns, normal)`` of one view."""
    d = volume.direction
    row_dir, col_dir, normal = d[:, 0], d[:, 1], d[:, 2]
    if view == "axial":
        return col_dir, row_dir, normal
    if view == "coronal":
        return -normal, row_dir, col_dir
    if view == "sagittal":
        return -normal, col_dir, row_dir
    raise ValueError(f"unknown view {view!r}; use one of {VIEWS}")


def extract_rois(
    volume: Volume,
    lung_mask: LungMask | None,
    centres_xyz: npt.ArrayLike,
    *,
    fov_mm: float = 48.0,
    size: int = 64,
    axial_slices: int = 3,
    slice_step_mm: float = 2.0,
    views: Sequence[str] = ("axial",),
    lung_margin_mm: float = 8.0,
    outside: str = "air",
    device: str | torch.device = "cpu",
) -> npt.NDArray[np.float32]:
    """Resample lung-masked 2.5-D patches around world points.

    Parameters
    ----------
    volume : ai.types.Volume
        ``(z, y, x)`` HU volume.
    lung_mask : ai.lungs.LungMask or None
        Lungs of the volume; ``None`` skips the masking.
    centres_xyz : array_like
        ``(n, 3)`` world LPS mm.
    fov_mm : float
        Side of each patch in mm.
    size : int
        Pixels per side (pixel size ``fov_mm / size`` mm).
    axial_slices : int
        Planes per view (odd numbers keep one plane through the centre).
    slice_step_mm : float
        Distance between the planes of a view in mm.
    views : sequence of str
        Subset of :data:`VIEWS`, in the channel order wanted.
    lung_margin_mm : float
        The lung mask, sampled on the same planes, is dilated in-plane by
        this much (a square of side ``2 * margin``) before masking.
    outside : {"air", "lung"}
        What samples outside the volume read (:data:`OUTSIDE`); with
        ``"lung"`` the lung mask counts as lung there.
    device : str or torch.device
        Where the resampling runs.

    Returns
    -------
    numpy.ndarray
        ``(n, len(views) * axial_slices, size, size)`` float32 in ``[0, 1]``;
        layout in the module docstring.

    Raises
    ------
    ValueError
        For bad shapes or an unknown view.
    """
    centres = np.asarray(centres_xyz, dtype=np.float64).reshape(-1, 3)
    n = centres.shape[0]
    channels = len(views) * axial_slices
    _check(size, axial_slices, fov_mm, views, outside)
    if n == 0:
        return np.zeros((0, channels, size, size), dtype=np.float32)
    if lung_mask is not None and lung_mask.labels.shape != volume.shape:
        raise ValueError(f"lung mask {lung_mask.labels.shape} does not match volume {volume.shape}")
    centre_vox, half, grid = _sampling_grid(
        volume, centres, fov_mm, size, axial_slices, slice_step_mm, views, device
    )
    hu_crops = _gather(volume.array, centre_vox, half, OUTSIDE[outside], np.float32)
    hu_t = torch.from_numpy(hu_crops).to(device)[:, None]
    sampled = F.grid_sample(hu_t, grid, mode="bilinear", padding_mode="border", align_corners=True)[
        :, 0
    ]
    if lung_mask is not None:
        # the lung mask is sampled on the same planes and dilated in-plane by the margin
        lung_crops = (
            _gather(lung_mask.labels, centre_vox, half, float(outside == "lung"), np.uint8) > 0
        )
        lung_t = torch.from_numpy(lung_crops).to(device)[:, None].to(torch.float32)
        inside = F.grid_sample(
            lung_t, grid, mode="nearest", padding_mode="zeros", align_corners=True
        )[:, 0]
        radius = max(0, int(round(lung_margin_mm * size / fov_mm)))
        if radius:
            inside = F.max_pool2d(inside, kernel_size=2 * radius + 1, stride=1, padding=radius)
        sampled = torch.where(inside > 0.5, sampled, torch.full_like(sampled, HU_WINDOW[0]))
    low, high = HU_WINDOW
    out = ((sampled - low) / (high - low)).clamp(0.0, 1.0)
    result: npt.NDArray[np.float32] = out.cpu().numpy().astype(np.float32, copy=False)
    return result


def sample_planes(
    volume: Volume,
    centres_xyz: npt.ArrayLike,
    *,
    fov_mm: float = 48.0,
    size: int = 64,
    axial_slices: int = 3,
    slice_step_mm: float = 2.0,
    views: Sequence[str] = ("axial",),
    fill: float = 0.0,
    **_: object,
) -> npt.NDArray[np.float32]:
    """The planes of :func:`extract_rois`, with the volume's own values (no window, no mask).

    For label or probability volumes on the same grid as a CT (the readers'
    nodule masks): ``sample_planes(mask_volume, centres, **model.roi_kwargs())``
    gives, bilinearly interpolated, the fraction of each ROI pixel inside the
    nodule. ``fill`` is what is read outside the volume; other keyword
    arguments of :func:`extract_rois` (``outside``, ``lung_margin_mm``) are
    accepted and ignored.

    Returns
    -------
    numpy.ndarray
        ``(n, len(views) * axial_slices, size, size)`` float32.
    """
    centres = np.asarray(centres_xyz, dtype=np.float64).reshape(-1, 3)
    _check(size, axial_slices, fov_mm, views, "air")
    if centres.shape[0] == 0:
        return np.zeros((0, len(views) * axial_slices, size, size), dtype=np.float32)
    centre_vox, half, grid = _sampling_grid(
        volume, centres, fov_mm, size, axial_slices, slice_step_mm, views, "cpu"
    )
    crops = torch.from_numpy(_gather(volume.array, centre_vox, half, fill, np.float32))[:, None]
    sampled = F.grid_sample(
        crops, grid, mode="bilinear", padding_mode="border", align_corners=True
    )[:, 0]
    result: npt.NDArray[np.float32] = sampled.numpy().astype(np.float32, copy=False)
    return result


def _check(size: int, axial_slices: int, fov_mm: float, views: Sequence[str], outside: str) -> None:
    if size < 2 or axial_slices < 1 or fov_mm <= 0 or not views:
        raise ValueError(
            "size >= 2, axial_slices >= 1, fov_mm > 0 and at least one view are required"
        )
    if outside not in OUTSIDE:
        raise ValueError(f"outside must be one of {tuple(OUTSIDE)}, got {outside!r}")


def _sampling_grid(
    volume: Volume,
    centres: npt.NDArray[np.float64],
    fov_mm: float,
    size: int,
    axial_slices: int,
    slice_step_mm: float,
    views: Sequence[str],
    device: str | torch.device,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], torch.Tensor]:
    """Crop centres and half sizes (voxels) and the ``grid_sample`` grid of every ROI sample.

    Each ROI reads from its own crop of the volume, ``2 * half + 1`` voxels
    around the voxel nearest its centre, big enough to hold every sample.
    """
    # world offsets of every sample: (C, size, size, 3)
    pixel = fov_mm / size
    grid_1d = (np.arange(size) - (size - 1) / 2.0) * pixel
    depth_1d = (np.arange(axial_slices) - (axial_slices - 1) / 2.0) * slice_step_mm
    offsets = []
    for view in views:
        rows, cols, normal = _plane_axes(volume, view)
        plane = grid_1d[:, None, None] * rows + grid_1d[None, :, None] * cols
        offsets.append(depth_1d[:, None, None, None] * normal + plane[None])
    offset = np.concatenate(offsets, axis=0)
    reach = math.sqrt(2.0) * fov_mm / 2.0 + abs(depth_1d).max() + 2.0
    half = np.asarray([int(math.ceil(reach / s)) + 1 for s in volume.spacing], dtype=np.int64)
    centre_vox = np.round(volume.world_to_voxel(centres)).astype(np.int64)
    # sample positions in crop voxel coordinates, normalised for grid_sample (x, y, z order)
    points = centres[:, None, None, None, :] + offset[None]  # (n, C, size, size, 3)
    vox = volume.world_to_voxel(points) - (centre_vox - half)[:, None, None, None, :]
    norm = 2.0 * vox / (2 * half).astype(np.float64) - 1.0
    grid = torch.from_numpy(norm[..., ::-1].copy()).to(device=device, dtype=torch.float32)
    return centre_vox, half, grid


def _gather(
    array: npt.NDArray[np.generic],
    centre_vox: npt.NDArray[np.int64],
    half: npt.NDArray[np.int64],
    fill: float,
    dtype: type[np.generic],
) -> npt.NDArray[Any]:
    """``(n, *(2 * half + 1))`` crops of ``array`` around each centre, ``fill`` outside it."""
    shape = np.asarray(array.shape)
    crops = np.full((len(centre_vox), *(2 * half + 1)), fill, dtype=dtype)
    for i, c in enumerate(centre_vox):
        lo, hi = c - half, c + half + 1
        src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.any(src_hi <= src_lo):
            continue
        dst = tuple(
            slice(a - b, a - b + (e - a)) for a, b, e in zip(src_lo, lo, src_hi, strict=True)
        )
        src = tuple(slice(a, e) for a, e in zip(src_lo, src_hi, strict=True))
        crops[i][dst] = array[src]
    return crops


def rois_from_points(
    volume: Volume,
    lung_mask: LungMask | None,
    points_xyz: Sequence[Sequence[float]],
    **kwargs: object,
) -> npt.NDArray[np.float32]:
    """ROIs at known findings (world LPS mm points); same layout as :func:`extract_rois`.

    Points outside the volume are rejected with ``ValueError`` rather than
    returning patches of air.
    """
    points = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    vox = volume.world_to_voxel(points)
    outside = np.any((vox < -0.5) | (vox > np.asarray(volume.shape) - 0.5), axis=1)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} point(s) lie outside the volume: {points[outside].tolist()}"
        )
    return extract_rois(volume, lung_mask, points, **kwargs)  # type: ignore[arg-type]
