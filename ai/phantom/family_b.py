"""Phantom family B: another patient and lesion model, independent of family A's.

Family A (the rest of :mod:`ai.phantom`) draws analytic nodules (spheres with
Legendre lobulation and paired spicules) beside binary vessel trees. So that
no figure depends on the generator it was tuned on, family B changes every
part the hashing network could learn by heart:

- **vessels**: grown by space colonisation (Runions et al. 2007) towards
  points scattered through each lung, so branches curve, branch unevenly and
  fill the lung as real pulmonary trees do; radii follow Murray's law from
  the leaves (``r³`` of a parent is the sum of its children's); drawn with a
  soft logistic edge (:mod:`ai.phantom.grid_b`);
- **nodules**: real shapes, the LIDC-IDRI readers' masks
  (:mod:`ai.phantom.lidc_shapes`), scaled to the diameter asked for, turned
  about z and mirrored; a part-solid core that follows the shape (its deepest
  part) rather than a centred sphere; ground glass with internal texture;
- **scanner** (in :mod:`ai.phantom.grid_b`): ramp-shaped noise power
  spectrum, edge-enhancing kernels, box slice profiles.

Body, lungs, airways and great vessels are family A's analytic anatomy.
Truth diameters are equivalent-sphere diameters (as in the real crops'
``nodules.csv``); the truth ``shape`` is read from the readers' ratings
(spiculation 3 or more: spiculated, else lobulation 3 or more: lobulated,
else round).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from ai.phantom.anatomy import LEFT_LUNG, RIGHT_LUNG, Capsules, Patient, lung_label_at, make_patient
from ai.phantom.lidc_shapes import ShapeLibrary, load_shapes
from ai.phantom.nodules import _CLASS_RANGES_MM, LOCATIONS, TEXTURES, NoduleTrack

__all__ = ["make_patient_b", "nodule_occupancy_b", "plan_tracks_b", "shape_label"]

logger = logging.getLogger(__name__)

_STEP_MM = 2.5
_INFLUENCE_MM = 30.0
_KILL_MM = 5.0
_LEAF_RADIUS_MM = 0.45


def _attractors(
    patient: Patient, label: int, count: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """``count`` points uniformly inside one lung (rejection sampling)."""
    s = patient.scale
    sign = -1.0 if label == RIGHT_LUNG else 1.0
    found: list[npt.NDArray[np.float64]] = []
    total = 0
    while total < count:
        p = np.c_[
            sign * rng.uniform(20 * s, 140 * s, 4 * count),
            rng.uniform(-75 * s, 95 * s, 4 * count),
            rng.uniform(patient.z_base, patient.z_apex, 4 * count),
        ]
        keep = p[lung_label_at(patient, p[:, 0], p[:, 1], p[:, 2]) == label]
        found.append(keep)
        total += len(keep)
    return np.concatenate(found)[:count]


def _colonise(
    roots: npt.NDArray[np.float64], attractors: npt.NDArray[np.float64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Space colonisation: node positions and each node's parent (-1 for roots)."""
    nodes = [r for r in roots]
    parent = [-1] * len(roots)
    alive = attractors.copy()
    for _ in range(400):
        if len(alive) == 0:
            break
        tree = cKDTree(np.asarray(nodes))
        dist, nearest = tree.query(alive, distance_upper_bound=_INFLUENCE_MM)
        pulled = np.isfinite(dist)
        if not pulled.any():
            break
        grown = 0
        for node in np.unique(nearest[pulled]):
            toward = alive[pulled & (nearest == node)] - nodes[node]
            direction = (toward / np.linalg.norm(toward, axis=1, keepdims=True)).sum(axis=0)
            direction += rng.normal(scale=0.25, size=3) * np.linalg.norm(direction)
            norm = np.linalg.norm(direction)
            if norm < 1e-9:
                continue
            nodes.append(nodes[node] + _STEP_MM * direction / norm)
            parent.append(int(node))
            grown += 1
        if not grown:
            break
        near = cKDTree(np.asarray(nodes[-grown:])).query(alive, distance_upper_bound=_KILL_MM)[0]
        alive = alive[~np.isfinite(near)]
    return np.asarray(nodes), np.asarray(parent, np.int64)


def _murray_radii(parent: npt.NDArray[np.int64], root_radius: float) -> npt.NDArray[np.float64]:
    """Radius at every node from the leaves up: ``r_parent³ = Σ r_child³``, capped at the root's."""
    cubes = np.zeros(len(parent))
    has_child = np.zeros(len(parent), bool)
    has_child[parent[parent >= 0]] = True
    cubes[~has_child] = _LEAF_RADIUS_MM**3
    for node in range(len(parent) - 1, -1, -1):  # children always come after their parent
        if parent[node] >= 0:
            cubes[parent[node]] += cubes[node]
    result: npt.NDArray[np.float64] = np.minimum(np.cbrt(cubes), root_radius)
    return result


def _vessels_b(patient: Patient, seed: int) -> Capsules:
    """Both lungs' trees grown from three roots at each hilum."""
    rng = np.random.default_rng([seed, 707])
    s = patient.scale
    segments: list[Capsules] = []
    for label, sign in ((RIGHT_LUNG, -1.0), (LEFT_LUNG, 1.0)):
        hilum = np.array([sign * 30.0 * s, 6.0 * s, -12.0 * s])
        roots = (
            hilum
            + np.array(
                [[sign * 4.0, 0.0, 18.0], [sign * 6.0, -4.0, -2.0], [sign * 4.0, 4.0, -22.0]]
            )
            * s
        )
        attractors = _attractors(patient, label, int(2600 * s**3), rng)
        nodes, parent = _colonise(roots, attractors, rng)
        radius = _murray_radii(parent, 4.5 * s)
        child = np.flatnonzero(parent >= 0)
        segments.append(
            Capsules(
                p0=nodes[parent[child]], p1=nodes[child], r0=radius[parent[child]], r1=radius[child]
            )
        )
    return Capsules(
        p0=np.concatenate([c.p0 for c in segments]),
        p1=np.concatenate([c.p1 for c in segments]),
        r0=np.concatenate([c.r0 for c in segments]),
        r1=np.concatenate([c.r1 for c in segments]),
    )


@functools.lru_cache(maxsize=16)
def make_patient_b(seed: int, *, anatomy_scale: float = 1.0) -> Patient:
    """A family-B patient: family A's body and airways, space-colonisation vessels.

    Cached per process (growing both trees takes about a second).
    """
    base = make_patient(seed, anatomy_scale=anatomy_scale, with_vessels=False)
    vessels = _vessels_b(base, seed)
    logger.debug("family B patient %d: %d vessel segments", seed, len(vessels))
    return dataclasses.replace(base, vessels=vessels)


def shape_label(library: ShapeLibrary, index: int) -> str:
    """``round``, ``lobulated`` or ``spiculated`` from the reader's ratings of a shape."""
    if library.rating("spiculation")[index] >= 3:
        return "spiculated"
    if library.rating("lobulation")[index] >= 3:
        return "lobulated"
    return "round"


def plan_tracks_b(
    seed: int, patient_index: int, *, n_tracks: int, n_studies: int
) -> list[NoduleTrack]:
    """Family B's lesions of one patient (not yet placed; :func:`ai.phantom.nodules.place_tracks`).

    Size classes, textures and locations cycle over the cohort as in family
    A; each lesion takes a real shape of its texture (where the library has
    one near its size), a turn about z and a mirror, its own attenuation, and
    for part-solid lesions a core fraction.
    """
    library = load_shapes()
    rng = np.random.default_rng([seed, patient_index, 212])
    tracks: list[NoduleTrack] = []
    for k in range(n_tracks):
        g = patient_index * n_tracks + k
        klass = 1 + (g * 3) % 7
        low, high = _CLASS_RANGES_MM[klass]
        diameter = float(rng.uniform(low, high))
        texture = TEXTURES[(g + g // 7) % 3]
        if diameter < 6.0:
            texture = "solid"
        elif texture == "part-solid" and diameter < 8.0:
            texture = "ground-glass"
        index = library.choose(rng, texture, diameter)
        growth = float(rng.uniform(1.1, 1.4)) if k % 2 == 0 else 1.0
        diameters = tuple(min(29.5, diameter * growth**i) for i in range(n_studies))
        tracks.append(
            NoduleTrack(
                track=k,
                diameters_mm=diameters,
                texture=texture,
                shape=shape_label(library, index),
                location=LOCATIONS[(g * 2 + g // 3) % 3],
                hu_solid=float(rng.uniform(-10.0, 70.0)),
                hu_ground_glass=float(rng.uniform(-720.0, -380.0)),
                library_index=index,
                angle=float(rng.uniform(0.0, 2.0 * np.pi)),
                mirror=bool(rng.random() < 0.5),
                core_fraction=float(rng.uniform(0.35, 0.65)),
            )
        )
    return tracks


def nodule_occupancy_b(
    track: NoduleTrack, diameter_mm: float, rel: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Occupancy and HU of a family-B nodule at points (as ``ai.phantom.nodules.nodule_occupancy``).

    Ground glass carries a smooth internal texture (a few random plane waves
    of 2-5 mm wavelength, ±60 HU, fixed by the track); a part-solid nodule's
    solid part is the shape's core.
    """
    library = load_shapes()
    args = (track.library_index, rel, diameter_mm, track.angle, track.mirror)
    occupancy = library.occupancy(*args)
    if track.texture == "solid":
        hu = np.full(occupancy.shape, track.hu_solid, np.float32)
        return occupancy, hu
    rng = np.random.default_rng([track.library_index, int(track.angle * 1e6), 313])
    waves = np.zeros(occupancy.shape)
    for _ in range(4):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(2.0, 5.0)
        waves += np.cos(2 * np.pi * (rel @ direction) / wavelength + rng.uniform(0, 2 * np.pi))
    hu = (track.hu_ground_glass + 30.0 * waves).astype(np.float32)
    if track.texture == "part-solid":
        core = library.occupancy(*args, core_fraction=track.core_fraction)
        hu = hu + core * (track.hu_solid - hu)
    return occupancy, hu.astype(np.float32)
