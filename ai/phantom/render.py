"""Render one phantom study into a scanner grid.

The scanner grid is axial: columns along world ``+x`` (patient left), rows
along ``+y`` (posterior), slice index along ``+z`` (superior), centred on the
scanner's isocentre in ``x``/``y``. Each study places the patient with its own
table offset, so world coordinates differ between a patient's studies just as
they do on a real scanner.

Output arrays are ``(z, y, x)``:

- HU volume, int16, after the scanner's blur and noise;
- lung mask, uint8: ``0`` outside the lungs, ``1`` the patient's right lung
  (negative ``x``), ``2`` the left lung. It is the parenchyma region with the
  vessels and nodules inside it, without the trachea and main bronchi
  (lumen and wall), judged at each voxel centre;
- nodule mask, uint8: ``i + 1`` where nodule ``i`` of the study's truth list
  occupies at least half the voxel.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai.phantom import anatomy as A
from ai.phantom.anatomy import Capsules, Patient, lung_label_at, make_patient
from ai.phantom.nodules import (
    NoduleTrack,
    NoduleTruth,
    nodule_occupancy,
    place_tracks,
    plan_tracks,
    truth_for_study,
)
from ai.types import Volume

__all__ = [
    "first_studies",
    "process_pool",
    "ScanGeometry",
    "PatientPlan",
    "PhantomStudy",
    "plan_patient",
    "render_study",
    "synthesize_study",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanGeometry:
    """How the phantom is scanned.

    Parameters
    ----------
    matrix : int
        Rows = columns of each slice.
    pixel_mm : float
        In-plane pixel size in mm.
    slice_mm : float
        Slice spacing = slice thickness in mm.
    slices : int or None
        Number of slices; ``None`` covers the lungs with a 10 mm margin.
    """

    matrix: int = 512
    pixel_mm: float = 0.7
    slice_mm: float = 1.25
    slices: int | None = None

    def __post_init__(self) -> None:
        if self.matrix < 16 or self.pixel_mm <= 0 or self.slice_mm <= 0:
            raise ValueError(f"bad scan geometry {self}")
        if self.slices is not None and self.slices < 2:
            raise ValueError("slices must be at least 2")


#: Default CLI geometry: 512 x 512, 0.7 mm pixels, 1.25 mm slices covering the lungs.
DEFAULT_GEOMETRY = ScanGeometry()

#: Small, fast geometry for tests (128 x 128 x about 80; anatomy_scale 0.6).
TEST_GEOMETRY = ScanGeometry(matrix=128, pixel_mm=2.5, slice_mm=2.0)


@dataclass(frozen=True)
class PatientPlan:
    """A patient and its placed lesions (fixed across its studies).

    Parameters
    ----------
    seed : int
        Cohort seed.
    patient_index : int
        0-based patient number.
    patient : Patient
        Anatomy.
    tracks : tuple of NoduleTrack
        Placed lesions.
    n_studies : int
        Number of studies of the patient.
    """

    seed: int
    patient_index: int
    patient: Patient
    tracks: tuple[NoduleTrack, ...]
    n_studies: int

    @property
    def label(self) -> str:
        """Patient label used in ids, ``"P0007"``."""
        return f"P{self.patient_index:04d}"


@dataclass(frozen=True)
class PhantomStudy:
    """One synthesized study in memory.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` int16 HU, identity direction, ``z`` ascending = superior.
    lung_mask : numpy.ndarray
        ``(z, y, x)`` uint8; 0 outside, 1 right lung, 2 left lung.
    nodule_mask : numpy.ndarray
        ``(z, y, x)`` uint8; ``i + 1`` inside ``nodules[i]``.
    nodules : tuple of NoduleTruth
        Truth of the nodules present in this study (world LPS mm).
    patient_label : str
        ``"P0007"``.
    study_index : int
        0 for the first (prior) study.
    """

    volume: Volume
    lung_mask: npt.NDArray[np.uint8]
    nodule_mask: npt.NDArray[np.uint8]
    nodules: tuple[NoduleTruth, ...]
    patient_label: str
    study_index: int

    @property
    def patient_index(self) -> int:
        """0-based patient number (from ``patient_label``)."""
        return int(self.patient_label[1:])


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for cohort and patch generation.

    They are *spawned*, not forked: a fork after torch has started its thread
    pool can deadlock the child. Each worker uses one torch thread, so
    ``workers`` processes use about ``workers`` cores.
    """
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_one_torch_thread,
    )


def plan_patient(
    seed: int,
    patient_index: int,
    *,
    n_tracks: int = 4,
    n_studies: int = 2,
    anatomy_scale: float = 1.0,
) -> PatientPlan:
    """Make one patient and place its lesions (deterministic for the arguments).

    Parameters
    ----------
    seed : int
        Cohort seed.
    patient_index : int
        0-based patient number.
    n_tracks : int, optional
        Lesions per patient.
    n_studies : int, optional
        Studies per patient (prior and follow-ups).
    anatomy_scale : float, optional
        Body size factor (1.0 adult; about 0.6 for the small test geometry).

    Returns
    -------
    PatientPlan
        The patient and its placed lesions.
    """
    patient_seed = int(np.random.SeedSequence([seed, patient_index]).generate_state(1)[0])
    patient = make_patient(patient_seed, anatomy_scale=anatomy_scale)
    tracks = plan_tracks(seed, patient_index, n_tracks=n_tracks, n_studies=n_studies)
    placed = place_tracks(patient, tracks, seed)
    return PatientPlan(
        seed=seed,
        patient_index=patient_index,
        patient=patient,
        tracks=tuple(placed),
        n_studies=n_studies,
    )


def study_offset(plan: PatientPlan, study_index: int) -> npt.NDArray[np.float64]:
    """World minus patient-frame position for one study (table and positioning), mm."""
    rng = np.random.default_rng([plan.seed, plan.patient_index, study_index, 404])
    return np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(-170, -130)])


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


def _capsule_occupancy(
    caps: Capsules, i: int, points: npt.NDArray[np.float64], extra: float, edge: float
) -> npt.NDArray[np.float64]:
    seg = caps.p1[i] - caps.p0[i]
    length2 = max(float(seg @ seg), 1e-12)
    rel = points - caps.p0[i]
    t = np.clip((rel @ seg) / length2, 0.0, 1.0)
    dist = np.sqrt(((rel - t[..., None] * seg) ** 2).sum(axis=-1))
    radius = caps.r0[i] + t * (caps.r1[i] - caps.r0[i]) + extra
    result: npt.NDArray[np.float64] = np.clip(0.5 + (radius - dist) / edge, 0.0, 1.0)
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
    hu = np.empty(shape, dtype=np.float32)
    lungs = np.empty(shape, dtype=np.uint8)
    xp = (xs - offset[0])[None, :]
    yp = (ys - offset[1])[:, None]
    anatomy = _SliceAnatomy(patient, xp, yp)
    for k, z in enumerate(zs):
        hu[k], lungs[k] = anatomy(float(z - offset[2]))
    texture = _texture(shape, (dz, px, px), noise_key + 1)
    gravity = np.clip(
        (ys - offset[1] - 8.0 * patient.scale) / (78.0 * patient.scale), -1, 1
    ).astype(np.float32)
    texture *= np.float32(22.0)
    texture += (A.HU_LUNG + 45.0 * gravity)[None, :, None].astype(np.float32)
    np.copyto(hu, texture, where=lungs > 0)
    del texture
    edge = float(px)
    # great vessels and airways carve the lungs
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


def render_study(
    plan: PatientPlan,
    study_index: int,
    geometry: ScanGeometry = DEFAULT_GEOMETRY,
    *,
    noise_hu: float = 20.0,
    blur_voxels: tuple[float, float, float] = (0.45, 0.6, 0.6),
    with_nodules: bool = True,
) -> PhantomStudy:
    """Render one study of a planned patient.

    Parameters
    ----------
    plan : PatientPlan
        From :func:`plan_patient`.
    study_index : int
        0-based study number (``< plan.n_studies``).
    geometry : ScanGeometry, optional
        Scanner grid.
    noise_hu : float, optional
        Standard deviation of the image noise in HU after blurring.
    blur_voxels : tuple of float, optional
        Gaussian blur sigma ``(z, y, x)`` in voxels (scanner resolution).
    with_nodules : bool, optional
        ``False`` renders the same study without its nodules (same noise).

    Returns
    -------
    PhantomStudy
        Volume, lung and nodule masks, truth.
    """
    if not 0 <= study_index < plan.n_studies:
        raise ValueError(f"study_index {study_index} outside 0..{plan.n_studies - 1}")
    patient = plan.patient
    offset = study_offset(plan, study_index)
    n, px, dz = geometry.matrix, geometry.pixel_mm, geometry.slice_mm
    xs = (np.arange(n) - (n - 1) / 2.0) * px
    ys = xs.copy()
    z_low, z_high = patient.z_range[0] + offset[2] - 10.0, patient.z_range[1] + offset[2] + 10.0
    n_slices = (
        geometry.slices
        if geometry.slices is not None
        else int(math.ceil((z_high - z_low) / dz)) + 1
    )
    z_center = 0.5 * (z_low + z_high)
    z0 = round((z_center - (n_slices - 1) / 2.0 * dz) / dz) * dz
    zs = z0 + np.arange(n_slices) * dz
    truths: list[NoduleTruth] = []
    drawn: list[tuple[NoduleTrack, NoduleTruth]] = []
    for track in plan.tracks:
        truth = truth_for_study(track, plan.label, study_index, offset)
        if truth is not None:
            truths.append(truth)
            drawn.append((track, truth))
    image, lungs, nodule_mask = render_grid(
        patient,
        offset,
        (zs.astype(np.float64), ys.astype(np.float64), xs.astype(np.float64)),
        drawn if with_nodules else [],
        noise_key=plan.seed * 1000 + plan.patient_index * 10 + study_index,
        noise_hu=noise_hu,
        blur_voxels=blur_voxels,
    )
    volume = Volume(
        array=image,
        spacing=(float(dz), float(px), float(px)),
        origin=(float(xs[0]), float(ys[0]), float(zs[0])),
        direction=np.eye(3),
    )
    return PhantomStudy(
        volume=volume,
        lung_mask=lungs,
        nodule_mask=nodule_mask,
        nodules=tuple(truths),
        patient_label=plan.label,
        study_index=study_index,
    )


def synthesize_study(
    seed: int = 0,
    *,
    patient_index: int = 0,
    study_index: int = 0,
    n_studies: int = 2,
    n_tracks: int = 4,
    geometry: ScanGeometry = DEFAULT_GEOMETRY,
    anatomy_scale: float = 1.0,
    noise_hu: float = 20.0,
    with_nodules: bool = True,
) -> PhantomStudy:
    """Synthesize one chest-CT study in memory.

    Parameters
    ----------
    seed : int, optional
        Cohort seed; everything is deterministic for the arguments.
    patient_index : int, optional
        0-based patient number in the cohort.
    study_index : int, optional
        Which of the patient's studies (0 = prior).
    n_studies, n_tracks : int, optional
        Studies per patient and lesions per patient.
    geometry : ScanGeometry, optional
        Scanner grid; :data:`TEST_GEOMETRY` with ``anatomy_scale=0.6`` is small and fast.
    anatomy_scale : float, optional
        Body size factor.
    noise_hu : float, optional
        Image noise std in HU.
    with_nodules : bool, optional
        ``False`` leaves the nodules out of the image (truth still listed).

    Returns
    -------
    PhantomStudy
        HU volume (world LPS geometry), lung mask, nodule mask, nodule truth.
    """
    plan = plan_patient(
        seed, patient_index, n_tracks=n_tracks, n_studies=n_studies, anatomy_scale=anatomy_scale
    )
    return render_study(plan, study_index, geometry, noise_hu=noise_hu, with_nodules=with_nodules)


def first_studies(
    patients: int,
    *,
    seed: int = 0,
    geometry: ScanGeometry = DEFAULT_GEOMETRY,
    anatomy_scale: float = 1.0,
    noise_hu: float = 20.0,
) -> Iterator[PhantomStudy]:
    """The first (prior) study of each patient, rendered one at a time.

    Parameters
    ----------
    patients : int
        Number of patients.
    seed : int, optional
        Cohort seed.
    geometry : ScanGeometry, optional
        Scanner grid.
    anatomy_scale : float, optional
        Body size factor.
    noise_hu : float, optional
        Noise std in HU.

    Yields
    ------
    PhantomStudy
        Study 0 of patients ``0 .. patients - 1``.
    """
    for index in range(patients):
        plan = plan_patient(seed, index, anatomy_scale=anatomy_scale)
        yield render_study(plan, 0, geometry, noise_hu=noise_hu)
