"""Phantom nodules: the truth record, their placement and their shapes.

A *track* is one lesion of a patient followed over the patient's studies
(it may grow or stay); in each study it appears as one :class:`NoduleTruth`.
Shapes are point-symmetric about the centre (even Legendre lobulation,
spicules in opposite pairs, a concentric solid core for part-solid nodules),
so the intensity centroid of every nodule is its truth centre, and the
diameter is that of the base sphere (the mean radius of a lobulated
surface).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ai.classes import TEXTURES, size_class
from ai.phantom.anatomy import Patient, lung_label_at

__all__ = [
    "LOCATIONS",
    "SHAPES",
    "TEXTURES",
    "NoduleTruth",
    "NoduleTrack",
    "plan_tracks",
    "place_tracks",
    "nodule_occupancy",
]

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("round", "lobulated", "spiculated")
LOCATIONS: tuple[str, ...] = ("isolated", "juxtapleural", "juxtavascular")

#: Diameter ranges (mm) used to draw a nodule of each size class 1..7.
_CLASS_RANGES_MM: dict[int, tuple[float, float]] = {
    1: (3.5, 4.9),
    2: (5.1, 5.9),
    3: (6.2, 7.8),
    4: (8.5, 12.5),
    5: (13.5, 17.5),
    6: (18.5, 22.5),
    7: (23.5, 29.5),
}

HU_SOLID = 30.0
HU_GROUND_GLASS = -520.0


@dataclass(frozen=True)
class NoduleTruth:
    """One nodule of one study, as the phantom made it.

    Parameters
    ----------
    nodule_id : str
        Stable id of this nodule in this study, ``"<patient>-S<study>-T<track>"``.
    track_id : str
        Id of the lesion across the patient's studies, ``"<patient>-T<track>"``.
    center_xyz : tuple of float
        World centre ``(x, y, z)`` in patient LPS mm (the study's frame).
    diameter_mm : float
        Diameter of the base sphere in mm.
    texture : str
        ``"solid"``, ``"part-solid"`` or ``"ground-glass"``.
    shape : str
        ``"round"``, ``"lobulated"`` or ``"spiculated"``.
    location : str
        ``"isolated"``, ``"juxtapleural"`` or ``"juxtavascular"``.
    size_class : int
        1..7 from :func:`ai.classes.size_class`.
    lung : int
        1 right lung, 2 left lung.
    """

    nodule_id: str
    track_id: str
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    texture: str
    shape: str
    location: str
    size_class: int
    lung: int


@dataclass(frozen=True)
class NoduleTrack:
    """One lesion of a patient in the patient frame, over all studies.

    Parameters
    ----------
    track : int
        Track number within the patient.
    diameters_mm : tuple of float
        Diameter per study; ``0`` where the lesion is not (yet) there.
    texture, shape, location : str
        As in :class:`NoduleTruth`.
    center : tuple of float
        Patient-frame centre ``(x, y, z)`` mm (set by :func:`place_tracks`).
    lung : int
        1 right, 2 left (set by :func:`place_tracks`).
    lobes : tuple of tuple of float
        Lobulation: ``(vx, vy, vz, amplitude)`` per even Legendre term.
    spicules : tuple of tuple of float
        Spicule axes: ``(vx, vy, vz, length_fraction)``, drawn in both directions.
    hu_solid, hu_ground_glass : float
        Attenuation of the solid part (0..60 HU) and of the ground glass (-650..-350 HU).
    library_index : int
        Phantom family B: the real shape drawn (``ai.phantom.lidc_shapes``);
        -1 for family A's analytic shapes.
    angle, mirror, core_fraction : float, bool, float
        Family B: turn about z (radians) and mirror of the real shape, and
        the depth fraction where a part-solid nodule's core begins.
    """

    track: int
    diameters_mm: tuple[float, ...]
    texture: str
    shape: str
    location: str
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lung: int = 0
    lobes: tuple[tuple[float, float, float, float], ...] = ()
    spicules: tuple[tuple[float, float, float, float], ...] = ()
    hu_solid: float = HU_SOLID
    hu_ground_glass: float = HU_GROUND_GLASS
    library_index: int = -1
    angle: float = 0.0
    mirror: bool = False
    core_fraction: float = 0.5


def _unit(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    v = rng.normal(size=3)
    result: npt.NDArray[np.float64] = v / np.linalg.norm(v)
    return result


def plan_tracks(
    seed: int, patient_index: int, *, n_tracks: int, n_studies: int
) -> list[NoduleTrack]:
    """Choose the lesions of one patient (not yet placed).

    The global track number ``patient_index * n_tracks + k`` cycles through
    size classes, textures, shapes and locations, so a cohort of a few
    patients holds every combination's marginals. Small nodules (< 6 mm) are
    solid and part-solid ones are at least 8 mm, as in real CT.

    Parameters
    ----------
    seed : int
        Cohort seed.
    patient_index : int
        0-based patient number.
    n_tracks : int
        Lesions per patient.
    n_studies : int
        Studies per patient; odd tracks grow between studies, even ones stay,
        and in every third patient the last track only appears at the second study.

    Returns
    -------
    list of NoduleTrack
        With ``diameters_mm`` of length ``n_studies``.
    """
    rng = np.random.default_rng([seed, patient_index, 202])
    # attenuation from its own stream, so the shapes and sizes of a seed stay as they were
    attenuation = np.random.default_rng([seed, patient_index, 203])
    tracks: list[NoduleTrack] = []
    for k in range(n_tracks):
        g = patient_index * n_tracks + k
        klass = 1 + g % 7
        low, high = _CLASS_RANGES_MM[klass]
        diameter = float(rng.uniform(low, high))
        texture = TEXTURES[g % 3]
        shape = SHAPES[(g + 2 * (g // 3) + g // 9) % 3]
        location = LOCATIONS[(g + g // 3) % 3]
        if diameter < 6.0:
            texture = "solid"
            shape = "round" if shape == "spiculated" and diameter < 4.5 else shape
        elif texture == "part-solid" and diameter < 8.0:
            texture = "ground-glass"
        growth = float(rng.uniform(1.12, 1.35)) if k % 2 == 1 else 1.0
        first = 1 if (n_studies > 1 and k == n_tracks - 1 and patient_index % 3 == 2) else 0
        diameters = tuple(
            0.0 if i < first else min(29.5, diameter * growth ** (i - first))
            for i in range(n_studies)
        )
        lobes: tuple[tuple[float, float, float, float], ...] = ()
        spicules: tuple[tuple[float, float, float, float], ...] = ()
        if shape == "lobulated":
            lobes = tuple((*_unit(rng), float(rng.uniform(0.10, 0.18))) for _ in range(3))
        elif shape == "spiculated":
            spicules = tuple(
                (*_unit(rng), float(rng.uniform(0.5, 0.9))) for _ in range(int(rng.integers(4, 7)))
            )
        tracks.append(
            NoduleTrack(
                track=k,
                diameters_mm=diameters,
                texture=texture,
                shape=shape,
                location=location,
                lobes=lobes,
                spicules=spicules,
                hu_solid=float(attenuation.uniform(0.0, 60.0)),
                hu_ground_glass=float(attenuation.uniform(-650.0, -350.0)),
            )
        )
    return tracks


def _sphere_points(n: int = 96) -> npt.NDArray[np.float64]:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_SPHERE = _sphere_points()


def _fraction_inside(
    patient: Patient, center: npt.NDArray[np.float64], radius: float, label: int
) -> float:
    pts = center[None] + radius * _SPHERE
    return float((lung_label_at(patient, pts[:, 0], pts[:, 1], pts[:, 2]) == label).mean())


def _vessel_clearance(patient: Patient, center: npt.NDArray[np.float64]) -> float:
    if len(patient.vessels) == 0:
        return np.inf
    dist, radius = patient.vessels.distance(center[None])
    return float((dist - radius).min())


def random_lung_point(
    patient: Patient, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], int]:
    s = patient.scale
    while True:
        p = np.array(
            [
                rng.uniform(-135, 135) * s,
                rng.uniform(-75, 90) * s,
                rng.uniform(patient.z_base, patient.z_apex),
            ]
        )
        label = int(lung_label_at(patient, p[0], p[1], p[2]))
        if label:
            return p, label


def _try_place(
    patient: Patient,
    track: NoduleTrack,
    rng: np.random.Generator,
    relax: float,
    others: list[tuple[npt.NDArray[np.float64], float]],
) -> tuple[npt.NDArray[np.float64], int] | None:
    radius = max(track.diameters_mm) / 2.0
    extent = radius * (1.25 if track.lobes else 1.0) + (
        radius * 0.9 + 1.0 if track.spicules else 0.0
    )
    if track.library_index >= 0:  # family B: a real shape reaches further than its sphere
        from ai.phantom.lidc_shapes import load_shapes

        extent = load_shapes().extent_mm(track.library_index, 2.0 * radius)
    margin = relax * 6.0 * patient.scale
    center: npt.NDArray[np.float64]
    if track.location == "juxtavascular":
        vessels = patient.vessels
        candidates = np.flatnonzero((vessels.r0 >= 1.0 * patient.scale) & (vessels.r0 <= 3.5))
        if candidates.size == 0:
            return None
        i = int(rng.choice(candidates))
        mid = 0.5 * (vessels.p0[i] + vessels.p1[i])
        axis = vessels.p1[i] - vessels.p0[i]
        perp = np.cross(axis, rng.normal(size=3))
        perp /= np.linalg.norm(perp)
        center = mid + perp * (radius + 0.4 * float(vessels.r0[i]))
        label = int(lung_label_at(patient, center[0], center[1], center[2]))
        if not label or _fraction_inside(patient, center, extent + margin, label) < 1.0:
            return None
    elif track.location == "juxtapleural":
        start, label = random_lung_point(patient, rng)
        direction = np.array([rng.normal(), rng.normal(), 0.3 * rng.normal()])
        direction /= np.linalg.norm(direction)
        steps = np.arange(0.0, 300.0, 0.5)[:, None] * direction[None] + start[None]
        inside = lung_label_at(patient, steps[:, 0], steps[:, 1], steps[:, 2]) == label
        exit_index = int(np.argmin(inside)) if not inside.all() else 0
        if exit_index == 0:
            return None
        boundary = steps[exit_index - 1]
        center = boundary - direction * (radius + 0.5)
        # sits against the pleura: the sphere is in the lung, a slightly larger one is not
        if _fraction_inside(patient, center, radius, label) < 0.97:
            return None
        if _fraction_inside(patient, center, radius + 2.5, label) > 0.97:
            return None
        if _vessel_clearance(patient, center) < radius + 1.0:
            return None
    else:
        center, label = random_lung_point(patient, rng)
        if _fraction_inside(patient, center, extent + margin, label) < 1.0:
            return None
        if _vessel_clearance(patient, center) < extent + relax * 2.0:
            return None
    for other_center, other_extent in others:
        if np.linalg.norm(center - other_center) < extent + other_extent + 8.0:
            return None
    return center, label


def place_tracks(patient: Patient, tracks: list[NoduleTrack], seed: int) -> list[NoduleTrack]:
    """Place each lesion in the lungs according to its location type.

    Isolated nodules keep clear of the pleura and of vessels; juxtapleural
    ones touch the pleura from inside; juxtavascular ones touch a vessel of
    1-3.5 mm radius. Nodules never overlap. Constraints are relaxed step by
    step when a small phantom leaves no room.

    Parameters
    ----------
    patient : Patient
        The patient.
    tracks : list of NoduleTrack
        From :func:`plan_tracks`.
    seed : int
        Seed of the placement.

    Returns
    -------
    list of NoduleTrack
        The tracks with ``center`` and ``lung`` set.
    """
    rng = np.random.default_rng([seed, patient.seed, 303])
    placed: list[NoduleTrack] = []
    others: list[tuple[npt.NDArray[np.float64], float]] = []
    for track in tracks:
        result = None
        for relax in (1.0, 0.5, 0.0):
            for _ in range(400):
                result = _try_place(patient, track, rng, relax, others)
                if result is not None:
                    break
            if result is not None:
                break
        if result is None:
            logger.warning(
                "track %d of patient seed %d could not be placed; dropped",
                track.track,
                patient.seed,
            )
            continue
        center, label = result
        radius = max(track.diameters_mm) / 2.0
        others.append((center, radius * 1.9 + 1.0))
        placed.append(
            dataclasses.replace(
                track, center=(float(center[0]), float(center[1]), float(center[2])), lung=label
            )
        )
    return placed


def nodule_occupancy(
    track: NoduleTrack, diameter_mm: float, rel: npt.NDArray[np.float64], edge_mm: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Partial-volume occupancy and intensity of one nodule at points.

    Parameters
    ----------
    track : NoduleTrack
        The lesion (shape, texture).
    diameter_mm : float
        Its diameter in this study.
    rel : numpy.ndarray
        ``(..., 3)`` float64 point offsets from the nodule centre, mm.
    edge_mm : float
        Width of the partial-volume ramp at the surface (about a voxel), mm.

    Returns
    -------
    tuple of numpy.ndarray
        Occupancy in ``[0, 1]`` and nodule HU, both float32 of shape ``rel.shape[:-1]``.
    """
    radius = diameter_mm / 2.0
    dist = np.sqrt((rel**2).sum(axis=-1))
    safe = np.maximum(dist, 1e-9)
    surface = np.full(dist.shape, radius)
    for vx, vy, vz, amplitude in track.lobes:
        c = (rel[..., 0] * vx + rel[..., 1] * vy + rel[..., 2] * vz) / safe
        p2 = 0.5 * (3.0 * c * c - 1.0)
        p4 = (35.0 * c**4 - 30.0 * c * c + 3.0) / 8.0
        surface = surface + radius * amplitude * (0.6 * p2 + 0.4 * p4)
    occupancy = np.clip(0.5 + (surface - dist) / edge_mm, 0.0, 1.0)
    for vx, vy, vz, length in track.spicules:
        v = np.array([vx, vy, vz])
        t = rel @ v  # signed position along the spicule axis
        radial = np.sqrt(np.maximum(dist**2 - t**2, 0.0))
        reach = radius * (1.0 + length)
        frac = np.clip(np.abs(t) / reach, 0.0, 1.0)
        spike_radius = np.maximum(0.45, 0.18 * radius) * (1.0 - frac) + 0.2
        spike = np.clip(0.5 + (spike_radius - radial) / edge_mm, 0.0, 1.0) * (np.abs(t) <= reach)
        occupancy = np.maximum(occupancy, spike)
    if track.texture == "solid":
        hu = np.full(dist.shape, track.hu_solid)
    else:
        hu = np.full(dist.shape, track.hu_ground_glass)
        if track.texture == "part-solid":
            core = np.clip(0.5 + (0.5 * radius - dist) / edge_mm, 0.0, 1.0)
            hu = hu + core * (track.hu_solid - track.hu_ground_glass)
    return occupancy.astype(np.float32), hu.astype(np.float32)


def truth_for_study(
    track: NoduleTrack, patient_label: str, study: int, offset_xyz: npt.NDArray[np.float64]
) -> NoduleTruth | None:
    """The :class:`NoduleTruth` of one lesion in one study (``None`` if absent)."""
    diameter = track.diameters_mm[study]
    if diameter <= 0.0:
        return None
    center = np.asarray(track.center) + offset_xyz
    return NoduleTruth(
        nodule_id=f"{patient_label}-S{study}-T{track.track}",
        track_id=f"{patient_label}-T{track.track}",
        center_xyz=(float(center[0]), float(center[1]), float(center[2])),
        diameter_mm=round(float(diameter), 3),
        texture=track.texture,
        shape=track.shape,
        location=track.location,
        size_class=size_class(round(float(diameter), 3)),
        lung=track.lung,
    )
