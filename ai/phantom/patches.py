"""Patch mode: nodule-centred and nodule-free 3-D patches with labels, for training.

No whole volume is made: each patch renders only its own small grid
(:func:`ai.phantom.grid.render_grid`, or :func:`ai.phantom.grid_b.render_grid_b` for
family B), around a fresh nodule placed in one of
a small pool of synthetic patients (isolated, juxtapleural or juxtavascular as
drawn), or around a random lung point for a negative (half of them at a
vessel, the hard case). Sizes, textures, shapes and locations are drawn
uniformly over the 7 size classes and the 3 x 3 x 3 kinds. Work is split into
chunks that run in parallel processes (``workers``), each with its own seed,
so the result does not depend on the number of workers.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.classes import size_class
from ai.phantom.anatomy import Patient, make_patient
from ai.phantom.grid import render_grid
from ai.phantom.nodules import (
    LOCATIONS,
    SHAPES,
    TEXTURES,
    NoduleTrack,
    NoduleTruth,
    place_tracks,
    plan_tracks,
    random_lung_point,
)
from ai.phantom.render import FAMILIES, process_pool

__all__ = ["PatchBatch", "make_patches"]

logger = logging.getLogger(__name__)

_CHUNK = 64
_PAD = 3


@dataclass(frozen=True)
class PatchBatch:
    """``n`` patches and their labels.

    Parameters
    ----------
    patches : numpy.ndarray
        ``(n, d, h, w)`` int16 HU, axial grid, ``z`` superior, isotropic ``spacing_mm``.
    nodule_masks : numpy.ndarray
        ``(n, d, h, w)`` uint8, 1 inside the patch's nodule.
    lung_masks : numpy.ndarray
        ``(n, d, h, w)`` uint8 lung labels (0, 1 right, 2 left).
    has_nodule : numpy.ndarray
        ``(n,)`` bool.
    diameter_mm : numpy.ndarray
        ``(n,)`` float32, 0 for negatives.
    size_class : numpy.ndarray
        ``(n,)`` int64, 0 for negatives (:func:`ai.classes.size_class`).
    texture, shape, location : numpy.ndarray
        ``(n,)`` int64 indices into ``TEXTURES``/``SHAPES``/``LOCATIONS``; -1 for negatives.
    offset_mm : numpy.ndarray
        ``(n, 3)`` float32 nodule centre minus patch centre, ``(x, y, z)`` mm.
    spacing_mm : float
        Voxel size in mm.
    """

    patches: npt.NDArray[np.int16]
    nodule_masks: npt.NDArray[np.uint8]
    lung_masks: npt.NDArray[np.uint8]
    has_nodule: npt.NDArray[np.bool_]
    diameter_mm: npt.NDArray[np.float32]
    size_class: npt.NDArray[np.int64]
    texture: npt.NDArray[np.int64]
    shape: npt.NDArray[np.int64]
    location: npt.NDArray[np.int64]
    offset_mm: npt.NDArray[np.float32]
    spacing_mm: float

    def __len__(self) -> int:
        return int(self.patches.shape[0])


def _axes(
    center: npt.NDArray[np.float64], size_zyx: tuple[int, int, int], spacing: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    z, y, x = (
        c + (np.arange(n + 2 * _PAD) - (n + 2 * _PAD - 1) / 2.0) * spacing
        for c, n in zip((center[2], center[1], center[0]), size_zyx, strict=True)
    )
    return z, y, x


def _random_lung_point(
    patient: Patient, rng: np.random.Generator, at_vessel: bool
) -> npt.NDArray[np.float64]:
    if at_vessel and len(patient.vessels):
        candidates = np.flatnonzero(patient.vessels.r0 >= 0.8)
        if candidates.size:
            i = int(rng.choice(candidates))
            point: npt.NDArray[np.float64] = patient.vessels.p1[i].copy()
            return point
    return random_lung_point(patient, rng)[0]


@functools.lru_cache(maxsize=32)
def _patient(seed: int, index: int, scale: float, family: str = "a") -> Patient:
    """Pool patient ``index`` (cached per process: planning vessel trees takes ~0.5 s)."""
    patient_seed = int(np.random.SeedSequence([seed, index, 808]).generate_state(1)[0])
    if family == "b":
        from ai.phantom.family_b import make_patient_b

        return make_patient_b(patient_seed, anatomy_scale=scale)
    return make_patient(patient_seed, anatomy_scale=scale)


def _chunk(
    args: tuple[int, int, int, tuple[int, int, int], float, float, float, int, float, float, str],
) -> dict[str, np.ndarray]:
    seed, chunk, count, size, spacing, positive_fraction, jitter_mm, pool, scale, noise, family = (
        args
    )
    rng = np.random.default_rng([seed, chunk, 909])
    patients = [_patient(seed, p, scale, family) for p in range(pool)]
    if family == "b":
        from ai.phantom.family_b import plan_tracks_b as planner
    else:
        planner = plan_tracks
    out: dict[str, list[Any]] = {
        k: []
        for k in (
            "patches",
            "nodule_masks",
            "lung_masks",
            "has_nodule",
            "diameter_mm",
            "size_class",
            "texture",
            "shape",
            "location",
            "offset_mm",
        )
    }
    made = 0
    while made < count:
        patient = patients[int(rng.integers(pool))]
        positive = bool(rng.random() < positive_fraction)
        drawn: list[tuple[NoduleTrack, NoduleTruth]] = []
        if positive:
            track = planner(
                int(rng.integers(2**31)), int(rng.integers(7 * 27 * 100)), n_tracks=1, n_studies=1
            )[0]
            placed = place_tracks(patient, [track], int(rng.integers(2**31)))
            if not placed:
                continue
            track = placed[0]
            nodule_center = np.asarray(track.center)
            truth = NoduleTruth(
                nodule_id="patch",
                track_id="patch",
                center_xyz=track.center,
                diameter_mm=track.diameters_mm[0],
                texture=track.texture,
                shape=track.shape,
                location=track.location,
                size_class=size_class(track.diameters_mm[0]),
                lung=track.lung,
            )
            drawn.append((track, truth))
            center = nodule_center + rng.uniform(-jitter_mm, jitter_mm, size=3)
        else:
            center = _random_lung_point(patient, rng, at_vessel=bool(rng.random() < 0.5))
        if family == "b":
            from ai.phantom.grid_b import render_grid_b

            image, lungs, nodules = render_grid_b(
                patient,
                np.zeros(3),
                _axes(center, size, spacing),
                drawn,
                noise_key=int(rng.integers(2**31)),
                noise_hu=noise * float(rng.uniform(0.5, 2.0)),
            )
        else:
            image, lungs, nodules = render_grid(
                patient,
                np.zeros(3),
                _axes(center, size, spacing),
                drawn,
                noise_key=int(rng.integers(2**31)),
                noise_hu=noise,
                blur_voxels=(0.5, 0.5, 0.5),
            )
        crop = (slice(_PAD, -_PAD),) * 3
        out["patches"].append(image[crop])
        out["nodule_masks"].append((nodules[crop] > 0).astype(np.uint8))
        out["lung_masks"].append(lungs[crop])
        out["has_nodule"].append(np.array(positive))
        if positive:
            track, truth = drawn[0]
            out["diameter_mm"].append(np.float32(truth.diameter_mm))
            out["size_class"].append(np.int64(truth.size_class))
            out["texture"].append(np.int64(TEXTURES.index(track.texture)))
            out["shape"].append(np.int64(SHAPES.index(track.shape)))
            out["location"].append(np.int64(LOCATIONS.index(track.location)))
            out["offset_mm"].append((np.asarray(truth.center_xyz) - center).astype(np.float32))
        else:
            out["diameter_mm"].append(np.float32(0.0))
            for key in ("texture", "shape", "location"):
                out[key].append(np.int64(-1))
            out["size_class"].append(np.int64(0))
            out["offset_mm"].append(np.zeros(3, dtype=np.float32))
        made += 1
    return {k: np.stack(v) for k, v in out.items()}


def make_patches(
    n: int,
    *,
    seed: int = 0,
    size_zyx: tuple[int, int, int] = (32, 64, 64),
    spacing_mm: float = 1.0,
    positive_fraction: float = 0.5,
    jitter_mm: float = 2.0,
    patients: int = 4,
    anatomy_scale: float = 1.0,
    noise_hu: float = 20.0,
    workers: int = 1,
    family: str = "a",
) -> PatchBatch:
    """Make ``n`` labelled 3-D patches without rendering whole volumes.

    Parameters
    ----------
    n : int
        Number of patches.
    seed : int, optional
        Seed; the result depends on it, not on ``workers``.
    size_zyx : tuple of int, optional
        Patch size in voxels.
    spacing_mm : float, optional
        Isotropic voxel size in mm.
    positive_fraction : float, optional
        Expected fraction of nodule-centred patches.
    jitter_mm : float, optional
        Uniform displacement of the patch centre from the nodule centre per axis, mm.
    patients : int, optional
        Synthetic patients in the anatomy pool (each process builds them once).
    anatomy_scale : float, optional
        Body size factor.
    noise_hu : float, optional
        Noise std in HU.
    workers : int, optional
        Processes (one chunk of 64 patches at a time each).
    family : {"a", "b"}, optional
        Phantom family (``ai.phantom.render.FAMILIES``); family B draws a
        reconstruction per patch (slice thickness, kernel) and a noise level
        between half and twice ``noise_hu``.

    Returns
    -------
    PatchBatch
        Patches and labels.
    """
    if n < 1 or min(size_zyx) < 4 or spacing_mm <= 0 or not 0 <= positive_fraction <= 1:
        raise ValueError("need n >= 1, patch sides >= 4, spacing > 0, 0 <= positive_fraction <= 1")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    jobs = [
        (
            seed,
            c,
            min(_CHUNK, n - c * _CHUNK),
            size_zyx,
            float(spacing_mm),
            positive_fraction,
            jitter_mm,
            patients,
            anatomy_scale,
            noise_hu,
            family,
        )
        for c in range((n + _CHUNK - 1) // _CHUNK)
    ]
    if workers > 1 and len(jobs) > 1:
        with process_pool(workers) as pool:
            parts = list(pool.map(_chunk, jobs))
    else:
        parts = [_chunk(job) for job in jobs]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    logger.info("made %d patches (%d with a nodule)", n, int(merged["has_nodule"].sum()))
    return PatchBatch(spacing_mm=float(spacing_mm), **merged)
