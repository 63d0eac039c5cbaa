"""Training ROIs from the phantom's patch mode.

Each 3-D patch of :func:`ai.phantom.patches.make_patches` becomes a small
:class:`~ai.types.Volume` (isotropic, identity direction) with its truth lung
mask, and :func:`ai.roi.extract_rois` cuts the same 2.5-D stack the worker
cuts from a received series, at the nodule centre (the patch centre for
nodule-free patches). Patches come from a small pool of synthetic patients
drawn from the seed, so two seeds give patient-disjoint sets.
"""

from __future__ import annotations

import logging

import numpy as np

from ai.hashing.model import HashNetConfig
from ai.hashing.train import RoiSet

__all__ = ["phantom_rois"]

logger = logging.getLogger(__name__)


def phantom_rois(
    n: int,
    *,
    model: HashNetConfig,
    seed: int = 0,
    positive_fraction: float = 0.9,
    workers: int = 1,
    family: str = "a",
) -> RoiSet:
    """``n`` labelled ROI stacks rendered by the phantom's patch mode.

    Parameters
    ----------
    n : int
        Number of ROIs.
    model : HashNetConfig
        Gives the ROI size (pixels) and channels (``in_channels`` axial slices).
    seed : int
        Phantom seed; it also picks the synthetic patients.
    positive_fraction : float
        Fraction of nodule-centred patches; the others are nodule-free
        (size class 0, texture unknown = -1, ignored by the texture loss).
    workers : int
        Phantom processes.
    family : {"a", "b"}
        Phantom family (``ai.phantom.render.FAMILIES``).

    Returns
    -------
    RoiSet
        ``patient`` is ``seed`` for every ROI (one patient pool per seed).
    """
    from ai.lungs import LungMask
    from ai.phantom.patches import make_patches
    from ai.roi import extract_rois
    from ai.types import Volume

    batch = make_patches(
        n, seed=seed, positive_fraction=positive_fraction, workers=workers, family=family
    )
    spacing = float(batch.spacing_mm)
    d, h, w = batch.patches.shape[1:]
    centre = np.array([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2]) * spacing  # world (x, y, z)
    rois = np.empty((n, model.in_channels, model.roi_size, model.roi_size), np.float32)
    for i in range(n):
        volume = Volume(batch.patches[i].astype(np.float32), (spacing,) * 3, (0.0, 0.0, 0.0))
        lungs = LungMask(
            batch.lung_masks[i], np.zeros(batch.lung_masks[i].shape, bool), (spacing,) * 3
        )
        at = centre + batch.offset_mm[i].astype(np.float64)
        rois[i] = extract_rois(
            volume, lungs, at[None], size=model.roi_size, axial_slices=model.in_channels
        )[0]
    logger.info(
        "phantom ROIs: %d (seed %d, %d with a nodule)", n, seed, int(batch.has_nodule.sum())
    )
    return RoiSet(
        rois,
        batch.size_class.astype(np.int64),
        batch.texture.astype(np.int64),
        np.full(n, seed, np.int64),
    )
