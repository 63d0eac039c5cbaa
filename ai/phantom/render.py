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
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from ai.phantom.anatomy import Patient, make_patient
from ai.phantom.grid import render_grid
from ai.phantom.nodules import NoduleTrack, NoduleTruth, place_tracks, plan_tracks, truth_for_study
from ai.types import Volume

__all__ = [
    "FAMILIES",
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

#: Phantom families: ``"a"`` analytic (default), ``"b"`` independent (``ai.phantom.family_b``).
FAMILIES: tuple[str, ...] = ("a", "b")


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
    family : str
        Phantom family, ``"a"`` or ``"b"`` (:mod:`ai.phantom.family_b`).
    """

    seed: int
    patient_index: int
    patient: Patient
    tracks: tuple[NoduleTrack, ...]
    n_studies: int
    family: str = "a"

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
    family: str = "a",
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
    family : {"a", "b"}, optional
        Phantom family: ``"b"`` draws other vessels, real nodule shapes and
        another scanner (:mod:`ai.phantom.family_b`).

    Returns
    -------
    PatientPlan
        The patient and its placed lesions.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    patient_seed = int(np.random.SeedSequence([seed, patient_index]).generate_state(1)[0])
    if family == "b":
        from ai.phantom.family_b import make_patient_b, plan_tracks_b

        patient = make_patient_b(patient_seed, anatomy_scale=anatomy_scale)
        tracks = plan_tracks_b(seed, patient_index, n_tracks=n_tracks, n_studies=n_studies)
    else:
        patient = make_patient(patient_seed, anatomy_scale=anatomy_scale)
        tracks = plan_tracks(seed, patient_index, n_tracks=n_tracks, n_studies=n_studies)
    placed = place_tracks(patient, tracks, seed)
    return PatientPlan(
        seed=seed,
        patient_index=patient_index,
        patient=patient,
        tracks=tuple(placed),
        n_studies=n_studies,
        family=family,
    )


def study_offset(plan: PatientPlan, study_index: int) -> npt.NDArray[np.float64]:
    """World minus patient-frame position for one study (table and positioning), mm."""
    rng = np.random.default_rng([plan.seed, plan.patient_index, study_index, 404])
    return np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(-170, -130)])


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
        Gaussian blur sigma ``(z, y, x)`` in voxels (scanner resolution; family A
        only: family B draws its reconstruction kernel from the study's key,
        :func:`ai.phantom.grid_b.scanner_b`).
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
    axes = (zs.astype(np.float64), ys.astype(np.float64), xs.astype(np.float64))
    noise_key = plan.seed * 1000 + plan.patient_index * 10 + study_index
    if plan.family == "b":
        from ai.phantom.grid_b import render_grid_b, scanner_b

        image, lungs, nodule_mask = render_grid_b(
            patient,
            offset,
            axes,
            drawn if with_nodules else [],
            noise_key=noise_key,
            noise_hu=noise_hu,
            scanner=scanner_b(noise_key, slice_mm=geometry.slice_mm),
        )
    else:
        image, lungs, nodule_mask = render_grid(
            patient,
            offset,
            axes,
            drawn if with_nodules else [],
            noise_key=noise_key,
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
    family: str = "a",
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
    family : {"a", "b"}, optional
        Phantom family (:data:`FAMILIES`).

    Returns
    -------
    PhantomStudy
        HU volume (world LPS geometry), lung mask, nodule mask, nodule truth.
    """
    plan = plan_patient(
        seed,
        patient_index,
        n_tracks=n_tracks,
        n_studies=n_studies,
        anatomy_scale=anatomy_scale,
        family=family,
    )
    return render_study(plan, study_index, geometry, noise_hu=noise_hu, with_nodules=with_nodules)


def first_studies(
    patients: int,
    *,
    seed: int = 0,
    geometry: ScanGeometry = DEFAULT_GEOMETRY,
    anatomy_scale: float = 1.0,
    noise_hu: float = 20.0,
    family: str = "a",
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
    family : {"a", "b"}, optional
        Phantom family (:data:`FAMILIES`).

    Yields
    ------
    PhantomStudy
        Study 0 of patients ``0 .. patients - 1``.
    """
    for index in range(patients):
        plan = plan_patient(seed, index, anatomy_scale=anatomy_scale, family=family)
        yield render_study(plan, 0, geometry, noise_hu=noise_hu)
