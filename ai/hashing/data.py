"""Training and evaluation ROIs: phantom patches and real LIDC-IDRI crops.

Both are cut by :func:`ai.roi.extract_rois` with the geometry of the model
they are for (:meth:`ai.hashing.model.HashNetConfig.roi_kwargs`), exactly as
the worker cuts a received series, and come with the nodule's mask on the
same planes (:func:`ai.roi.sample_planes`) and its diameter.

- :func:`phantom_rois`: each 3-D patch of :func:`ai.phantom.patches.make_patches`
  becomes a small :class:`~ai.types.Volume` (isotropic, identity direction)
  with its truth lung mask, cut at the nodule centre (the patch centre for
  nodule-free patches). Patches come from a small pool of synthetic patients
  drawn from the seed, so two seeds give patient-disjoint sets. With
  ``crop_like`` some patches are first reduced to what a LIDC crop holds (the
  nodule's own slices and 10-20 mm around it in-plane, plain parenchyma
  beyond), so the network sees the same nodule both ways.
- :func:`crop_rois`: the real crops of :mod:`ai.readers.lidc_crops`, at the
  readers' centres, with size class, texture, malignancy group and the
  consensus mask.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import numpy.typing as npt

from ai.hashing.codes import TEXTURES
from ai.hashing.model import HashNetConfig
from ai.hashing.train import RoiSet

__all__ = ["crop_rois", "phantom_rois"]

logger = logging.getLogger(__name__)

_CROP_FILL_HU = -860.0


def _patch_size(model: HashNetConfig) -> tuple[int, int, int]:
    """Patch voxels (1 mm) holding every sample of the model's ROI."""
    if model.fov_mm >= 48.0:
        return (32, 64, 64)  # what earlier models were trained on
    side = 8 * int(np.ceil((model.fov_mm * 1.42 + 6.0) / 8.0))
    depth = 8 * int(np.ceil(((model.in_channels - 1) * model.slice_step_mm + 10.0) / 8.0))
    return (depth, side, side)


def _crop_like(
    patch: npt.NDArray[np.int16], nodule: npt.NDArray[np.uint8], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """The patch as a LIDC crop holds it: the nodule's slices (± one), 10-20 mm around it."""
    out = patch.astype(np.float32)
    where = np.argwhere(nodule > 0)
    if not len(where):
        return out
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    margin_z = int(rng.integers(0, 2))
    margin_xy = int(rng.integers(10, 21))
    keep = np.zeros(patch.shape, bool)
    keep[
        max(0, lo[0] - margin_z) : hi[0] + margin_z,
        max(0, lo[1] - margin_xy) : hi[1] + margin_xy,
        max(0, lo[2] - margin_xy) : hi[2] + margin_xy,
    ] = True
    out[~keep] = _CROP_FILL_HU
    return out


def phantom_rois(
    n: int,
    *,
    model: HashNetConfig,
    seed: int = 0,
    positive_fraction: float = 0.9,
    workers: int = 1,
    family: str = "a",
    crop_like: float = 0.0,
    unmasked: float = 0.0,
) -> RoiSet:
    """``n`` labelled ROI stacks rendered by the phantom's patch mode.

    Parameters
    ----------
    n : int
        Number of ROIs.
    model : HashNetConfig
        Gives the ROI geometry (``roi_kwargs``).
    seed : int
        Phantom seed; it also picks the synthetic patients.
    positive_fraction : float
        Fraction of nodule-centred patches; the others are nodule-free
        (size class 0, texture unknown = -1, ignored by the texture loss).
    workers : int
        Phantom processes.
    family : {"a", "b"}
        Phantom family (``ai.phantom.render.FAMILIES``).
    crop_like : float
        Fraction of the nodule patches first reduced to what a real LIDC crop
        holds (see the module docstring).
    unmasked : float
        Fraction of the ROIs cut without the lung mask, as the real crops are
        (the worker masks with the lungs it finds).

    Returns
    -------
    RoiSet
        ``patient`` is ``"phantom-<family>-<seed>"`` for every ROI (one
        patient pool per seed); malignancy unknown; masks and diameters set.
    """
    from ai.lungs import LungMask
    from ai.phantom.patches import make_patches
    from ai.roi import extract_rois, sample_planes
    from ai.types import Volume

    batch = make_patches(
        n,
        seed=seed,
        size_zyx=_patch_size(model),
        positive_fraction=positive_fraction,
        workers=workers,
        family=family,
    )
    spacing = float(batch.spacing_mm)
    d, h, w = batch.patches.shape[1:]
    centre = np.array([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2]) * spacing  # world (x, y, z)
    shape = (n, model.in_channels, model.roi_size, model.roi_size)
    rois = np.empty(shape, np.float32)
    masks = np.empty(shape, np.float16)
    rng = np.random.default_rng([seed, 515])
    kwargs = model.roi_kwargs()
    for i in range(n):
        image: npt.NDArray[np.floating] | npt.NDArray[np.integer] = batch.patches[i]
        if batch.has_nodule[i] and rng.random() < crop_like:
            image = _crop_like(batch.patches[i], batch.nodule_masks[i], rng)
        volume = Volume(image.astype(np.float32), (spacing,) * 3, (0.0, 0.0, 0.0))
        lungs = LungMask(
            batch.lung_masks[i], np.zeros(batch.lung_masks[i].shape, bool), (spacing,) * 3
        )
        at = (centre + batch.offset_mm[i].astype(np.float64))[None]
        use_lungs = None if unmasked and rng.random() < unmasked else lungs
        rois[i] = extract_rois(volume, use_lungs, at, **kwargs)[0]
        nodule = Volume(batch.nodule_masks[i].astype(np.float32), (spacing,) * 3, (0.0, 0.0, 0.0))
        masks[i] = sample_planes(nodule, at, **kwargs)[0]
    logger.info(
        "phantom ROIs: %d (family %s, seed %d, %d with a nodule)",
        n,
        family,
        seed,
        int(batch.has_nodule.sum()),
    )
    return RoiSet(
        rois,
        batch.size_class.astype(np.int64),
        batch.texture.astype(np.int64),
        np.full(n, f"phantom-{family}-{seed}"),
        malignancy=np.full(n, -1, np.int64),
        diameter_mm=batch.diameter_mm.astype(np.float32),
        masks=masks,
    )


def crop_rois(folder: str | os.PathLike[str], *, model: HashNetConfig) -> tuple[RoiSet, list[str]]:
    """ROIs of the real LIDC-IDRI crops in ``folder`` (laid out like ``lidc-nodules``).

    Parameters
    ----------
    folder : path
        ``nodules.csv`` with ``image/`` and ``mask/``.
    model : HashNetConfig
        Gives the ROI geometry (``roi_kwargs``).

    Returns
    -------
    rois : RoiSet
        One ROI per nodule at the readers' centre; ``patient`` is the LIDC
        patient id; ``malignancy`` the group (-1 for rating 3); masks are the
        readers' consensus on the ROI planes.
    skipped : list of str
        ``"<patient> <nodule>"`` of nodules whose centre lies outside their
        own crop (the source's crop and centre disagree), left out.
    """
    from ai.classes import size_class
    from ai.readers.lidc_crops import load_crop, malignancy_group, read_nodule_table, texture_class
    from ai.roi import extract_rois, sample_planes
    from ai.types import Volume

    kwargs = model.roi_kwargs()
    rois, masks, sizes, textures, groups, diameters, patients = [], [], [], [], [], [], []
    skipped: list[str] = []
    for nodule in read_nodule_table(folder):
        volume, mask = load_crop(nodule)
        voxel = volume.world_to_voxel(nodule.center_xyz)
        if np.any((voxel < -0.5) | (voxel > np.asarray(volume.shape) - 0.5)):
            skipped.append(f"{nodule.patient_id} {nodule.nodule_id}")
            continue
        at = [nodule.center_xyz]
        rois.append(extract_rois(volume, None, at, **kwargs)[0])
        readers = Volume(mask.astype(np.float32), volume.spacing, volume.origin, volume.direction)
        masks.append(sample_planes(readers, at, **kwargs)[0])
        sizes.append(size_class(nodule.diameter_mm))
        textures.append(TEXTURES.index(texture_class(nodule.texture)))
        group = malignancy_group(nodule.malignancy)
        groups.append(-1 if group is None else group)
        diameters.append(nodule.diameter_mm)
        patients.append(nodule.patient_id)
    if skipped:
        logger.warning("%d nodule(s) left out: centre outside their crop", len(skipped))
    return (
        RoiSet(
            np.asarray(rois, np.float32),
            np.asarray(sizes, np.int64),
            np.asarray(textures, np.int64),
            np.asarray(patients),
            malignancy=np.asarray(groups, np.int64),
            diameter_mm=np.asarray(diameters, np.float32),
            masks=np.asarray(masks, np.float16),
        ),
        skipped,
    )
