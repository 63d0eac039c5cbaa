"""The false-positive reduction network's input: one 3-D patch and a few measurements per candidate.

**Patch** ``(2, PATCH_SHAPE)``: a ``z, y, x`` grid of :data:`PATCH_SPACING_MM`
centred on the candidate along the volume's axes (trilinear, ``grid_sample``):

- channel 0: HU windowed to :data:`HU_WINDOW` and scaled to ``[0, 1]``;
- channel 1: 1 where the voxel is *visible*, 0 elsewhere (channel 0 then
  holds :data:`FILL`, about lung parenchyma).

A voxel is visible when it lies within the candidate's own slices (its
segmentation's ``z`` extent, plus :data:`Z_MARGIN_MM`) and inside ``data_box``.
The real nodules the network learns from are crops that hold only the
nodule's own slices (:mod:`ai.readers.lidc_crops`); showing every candidate,
crop or whole scan, at training and in the node alike, only what such a crop
would show keeps the crop's edges from being a cue for "nodule".

**Features** (:data:`FEATURES`): the detector's measurements of the candidate
(size, shape, leak, density, blob confidence), scaled to about ``0..1``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ai.measure import NoduleCandidate
from ai.types import Volume

__all__ = [
    "FEATURES",
    "FILL",
    "HU_WINDOW",
    "PATCH_SHAPE",
    "PATCH_SPACING_MM",
    "TRAIN_PATCH_SHAPE",
    "Z_MARGIN_MM",
    "candidate_features",
    "candidate_patches",
]

logger = logging.getLogger(__name__)

#: Patch voxel counts ``(z, y, x)`` seen by the network ...
PATCH_SHAPE: tuple[int, int, int] = (16, 24, 24)
#: ... and cut for training, where random crops of :data:`PATCH_SHAPE` shift the candidate.
TRAIN_PATCH_SHAPE: tuple[int, int, int] = (18, 28, 28)
#: Patch voxel size in mm (all axes).
PATCH_SPACING_MM = 1.25
#: HU mapped to 0 and 1.
HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)
#: Value of channel 0 where nothing is visible (about -860 HU, lung parenchyma).
FILL = 0.1
#: Slices beyond the candidate's segmentation that stay visible, mm.
Z_MARGIN_MM = 1.0
#: Names of the feature vector's entries.
FEATURES: tuple[str, ...] = (
    "log_diameter",
    "long_axis_ratio",
    "elongation",
    "leak",
    "confidence",
    "mean_hu",
    "peak_hu",
    "solid_share",
)


def candidate_features(candidate: NoduleCandidate) -> npt.NDArray[np.float32]:
    """The candidate's measurements as the network's feature vector (:data:`FEATURES`)."""
    d = max(candidate.diameter_mm, 1.0)
    return np.array(
        [
            math.log(d / 3.0) / math.log(15.0),
            min(candidate.long_axis_mm / d, 4.0) - 1.0,
            min(candidate.elongation, 6.0) - 1.0,
            candidate.leak,
            candidate.confidence,
            candidate.mean_hu / 1000.0,
            candidate.peak_hu / 1000.0,
            candidate.solid_share,
        ],
        dtype=np.float32,
    )


def candidate_patches(
    volume: Volume,
    candidates: Sequence[NoduleCandidate],
    *,
    shape: tuple[int, int, int] = PATCH_SHAPE,
    data_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
    device: str | torch.device = "cpu",
) -> npt.NDArray[np.float32]:
    """Cut the network's input around candidates.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` HU, the volume the candidates were found in.
    candidates : sequence of NoduleCandidate
        Their ``center_zyx`` and ``bbox`` are in ``volume``'s voxels.
    shape : tuple of int
        Patch voxel counts ``(z, y, x)`` at :data:`PATCH_SPACING_MM`.
    data_box : tuple of (int, int), optional
        Half-open ``(z, y, x)`` voxel bounds of real data in ``volume`` (a
        crop padded for context); default the whole volume.
    device : str or torch.device
        Where ``grid_sample`` runs.

    Returns
    -------
    numpy.ndarray
        ``(n, 2, *shape)`` float32: windowed HU and visibility (module docstring).
    """
    n = len(candidates)
    out = np.zeros((n, 2, *shape), dtype=np.float32)
    if n == 0:
        return out
    dims = np.asarray(volume.shape, dtype=np.float64)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    box = np.asarray(data_box if data_box is not None else [(0, s) for s in volume.shape], float)
    offsets = [(np.arange(k) - (k - 1) / 2.0) * PATCH_SPACING_MM for k in shape]
    low, high = HU_WINDOW
    image = torch.as_tensor(np.asarray(volume.array, dtype=np.float32), device=device)
    image = ((image - low) / (high - low)).clamp(0.0, 1.0)[None, None]
    grids, visible = [], []
    for cand in candidates:
        centre = np.asarray(cand.center_zyx, dtype=np.float64)
        axes = [centre[a] + offsets[a] / spacing[a] for a in range(3)]  # voxel coordinates
        z0, z1 = cand.bbox[0]
        z_margin = Z_MARGIN_MM / spacing[0]
        z_lo = max(z0 - 0.5 - z_margin, box[0, 0] - 0.5)
        z_hi = min(z1 - 0.5 + z_margin, box[0, 1] - 0.5)
        ok_z = (axes[0] >= z_lo) & (axes[0] <= z_hi)
        ok_y = (axes[1] >= box[1, 0] - 0.5) & (axes[1] <= box[1, 1] - 0.5)
        ok_x = (axes[2] >= box[2, 0] - 0.5) & (axes[2] <= box[2, 1] - 0.5)
        visible.append(ok_z[:, None, None] & ok_y[None, :, None] & ok_x[None, None, :])
        zz, yy, xx = np.meshgrid(*axes, indexing="ij")
        # grid_sample wants (x, y, z) in [-1, 1] with align_corners=True
        norm = [
            2.0 * v / max(d - 1.0, 1.0) - 1.0 for v, d in zip((xx, yy, zz), dims[::-1], strict=True)
        ]
        grids.append(np.stack(norm, axis=-1))
    grid = torch.as_tensor(np.stack(grids).astype(np.float32), device=device)
    sampled = F.grid_sample(
        image.expand(n, -1, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )[:, 0]
    mask = torch.as_tensor(np.stack(visible), device=device)
    out[:, 0] = torch.where(mask, sampled, torch.full_like(sampled, FILL)).cpu().numpy()
    out[:, 1] = np.stack(visible).astype(np.float32)
    return out
