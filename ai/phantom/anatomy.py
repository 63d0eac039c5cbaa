"""Analytic chest anatomy of the phantom, in the patient frame.

The patient frame is LPS millimetres (``x`` towards the patient's left, ``y``
posterior, ``z`` superior) with the carina near ``z = 0`` and the body axis on
``x = y = 0``. A :class:`Patient` holds everything that stays the same across a
patient's studies: body size, the vessel trees and the airways. Rendering into
a scanner grid happens in :mod:`ai.phantom.render`.

Tissue values (HU): air -1000, lung parenchyma about -860 (denser
posteriorly, with smooth texture), fat -100, muscle and blood 40, cancellous
bone 250, cortical bone 800, vessels in lung 40 (partial volume at their
edges).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Capsules", "Patient", "make_patient", "lung_label_at", "RIGHT_LUNG", "LEFT_LUNG"]

logger = logging.getLogger(__name__)

#: Lung label of the patient's right lung (negative LPS ``x``).
RIGHT_LUNG = 1
#: Lung label of the patient's left lung (positive LPS ``x``).
LEFT_LUNG = 2

HU_AIR = -1000.0
HU_LUNG = -860.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LIVER = 60.0
HU_CANCELLOUS = 250.0
HU_CORTICAL = 800.0
HU_VESSEL = 40.0


@dataclass(frozen=True)
class Capsules:
    """Tapered line segments (vessels, airways): ``n`` capsules.

    Parameters
    ----------
    p0, p1 : numpy.ndarray
        ``(n, 3)`` float64 end points, patient-frame ``(x, y, z)`` mm.
    r0, r1 : numpy.ndarray
        ``(n,)`` float64 radii in mm at ``p0`` and ``p1``.
    """

    p0: npt.NDArray[np.float64]
    p1: npt.NDArray[np.float64]
    r0: npt.NDArray[np.float64]
    r1: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.r0.shape[0])

    def distance(
        self, points: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Distance of points to every capsule axis and the local radius.

        Parameters
        ----------
        points : numpy.ndarray
            ``(m, 3)`` float64 patient-frame mm.

        Returns
        -------
        tuple of numpy.ndarray
            ``(m, n)`` distances to the segment axes (mm) and ``(m, n)`` radii there (mm).
        """
        seg = self.p1 - self.p0
        length2 = np.maximum((seg**2).sum(axis=1), 1e-12)
        rel = points[:, None, :] - self.p0[None, :, :]
        t = np.clip((rel * seg[None]).sum(axis=2) / length2[None], 0.0, 1.0)
        closest = self.p0[None] + t[..., None] * seg[None]
        dist = np.sqrt(((points[:, None, :] - closest) ** 2).sum(axis=2))
        radius = self.r0[None] + t * (self.r1 - self.r0)[None]
        return dist, radius


@dataclass(frozen=True)
class Patient:
    """Everything about one synthetic patient that is fixed across studies.

    Parameters
    ----------
    scale : float
        Body size factor (1.0: a 330 mm wide adult chest).
    vessels : Capsules
        Pulmonary vessel trees of both lungs, branching and tapering from the hila.
    airways : Capsules
        Trachea and main bronchi (lumen radii; the wall is added when rendering).
    great_vessels : Capsules
        Aorta (ascending, arch, descending), rendered as blood (40 HU).
    seed : int
        Seed that made this patient.
    """

    scale: float
    vessels: Capsules
    airways: Capsules
    great_vessels: Capsules
    seed: int

    # -- geometry of the analytic regions (all in mm, scaled) -------------
    @property
    def body_axes(self) -> tuple[float, float]:
        """Semi-axes (x, y) of the body outline ellipse."""
        return (165.0 * self.scale, 115.0 * self.scale)

    @property
    def z_apex(self) -> float:
        """Superior end of the lungs."""
        return 110.0 * self.scale

    @property
    def z_base(self) -> float:
        """Deepest point of the costophrenic recesses."""
        return -130.0 * self.scale

    @property
    def z_range(self) -> tuple[float, float]:
        """``(inferior, superior)`` z extent of the lungs in mm."""
        return (self.z_base, self.z_apex)


def lung_label_at(
    patient: Patient,
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64] | float,
) -> npt.NDArray[np.uint8]:
    """Lung label (0, 1 right, 2 left) of points in the patient frame.

    This is the lung region before the airways are cut out of it (the
    main bronchi are removed when rendering).

    Parameters
    ----------
    patient : Patient
        The patient.
    x, y : numpy.ndarray
        Broadcastable float64 patient-frame coordinates in mm.
    z : numpy.ndarray or float
        Broadcastable patient-frame ``z`` in mm.

    Returns
    -------
    numpy.ndarray
        uint8 labels, the broadcast shape of the inputs.
    """
    s = patient.scale
    z_arr = np.asarray(z, dtype=np.float64)
    taper_len = 75.0 * s
    f = np.sqrt(np.clip((patient.z_apex - z_arr) / taper_len, 0.0, 1.0))
    f = np.maximum(f, 1e-6)
    ax, by, cy = 56.0 * s, 78.0 * s, 8.0 * s
    labels = np.zeros(
        np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z_arr)), dtype=np.uint8
    )
    for label, sign in ((RIGHT_LUNG, -1.0), (LEFT_LUNG, 1.0)):
        cx = sign * 76.0 * s
        # apex drifts posteriorly and medially a little
        u = (x - cx) / (ax * f)
        v = (y - cy - 10.0 * s * (1.0 - f)) / (by * f)
        rho2 = u * u + v * v
        dome = 42.0 * s + (14.0 * s if sign < 0 else 0.0)  # right dome higher (liver)
        z_floor = patient.z_base + dome * np.clip(1.0 - rho2, 0.0, 1.0)
        inside = (rho2 < 1.0) & (z_arr > z_floor) & (z_arr < patient.z_apex) & (sign * x > 22.0 * s)
        labels[inside] = label
    # mediastinal structures carve the lungs: heart, spine, descending aorta
    heart = (
        ((x - 12.0 * s) / (58.0 * s)) ** 2
        + ((y + 20.0 * s) / (52.0 * s)) ** 2
        + ((z_arr + 58.0 * s) / (56.0 * s)) ** 2
    ) < 1.0
    spine = ((x / (26.0 * s)) ** 2 + ((y - 74.0 * s) / (26.0 * s)) ** 2) < 1.0
    aorta = (((x - 24.0 * s) / (17.0 * s)) ** 2 + ((y - 46.0 * s) / (17.0 * s)) ** 2 < 1.0) & (
        z_arr < 45.0 * s
    )
    labels[heart | spine | aorta] = 0
    return labels


def _rotate(
    direction: npt.NDArray[np.float64], angle: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Rotate a unit vector by ``angle`` radians about a random perpendicular axis."""
    helper = rng.normal(size=3)
    axis = np.cross(direction, helper)
    axis /= np.linalg.norm(axis) + 1e-12
    rotated = direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
    result: npt.NDArray[np.float64] = rotated / np.linalg.norm(rotated)
    return result


def _inside_lung(
    patient: Patient, points: npt.NDArray[np.float64], label: int
) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = (
        lung_label_at(patient, points[:, 0], points[:, 1], points[:, 2]) == label
    )
    return inside


def _grow_tree(
    patient: Patient,
    rng: np.random.Generator,
    label: int,
    root: npt.NDArray[np.float64],
    direction: npt.NDArray[np.float64],
    radius: float,
    length: float,
    out: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float]],
) -> None:
    """Grow one vessel tree breadth-first; segments that leave the lung are shortened or dropped.

    Radii shrink by about 0.8 per generation (Murray's law for a symmetric
    bifurcation gives 2**(-1/3)), lengths by about 0.85, and children lean away
    from the hilum so the tree fills the lung out to the periphery.
    """
    stack = [(root, direction, radius, length, 0)]
    min_radius = 0.45 * patient.scale
    while stack:
        start, d, r, seg_len, depth = stack.pop(0)
        if r < min_radius or depth > 9:
            continue
        r_end = r * 0.93
        end = None
        for attempt_len in (seg_len, 0.6 * seg_len, 0.35 * seg_len):
            candidate = start + d * attempt_len
            samples = start[None] + np.linspace(0.2, 1.0, 5)[:, None] * (candidate - start)[None]
            if depth == 0 or _inside_lung(patient, samples, label).all():
                probe = candidate + d * (r_end + 1.5)
                if depth == 0 or _inside_lung(patient, probe[None], label)[0]:
                    end = candidate
                    break
        if end is None:
            continue
        out.append((start, end, r, r_end))
        outward = end - root
        outward /= np.linalg.norm(outward) + 1e-12
        axis = np.cross(d, rng.normal(size=3))
        axis /= np.linalg.norm(axis) + 1e-12
        for side in (-1.0, 1.0):
            angle = side * np.deg2rad(rng.uniform(20.0, 45.0))
            child = d * np.cos(angle) + np.cross(axis, d) * np.sin(angle) + 0.35 * outward
            child /= np.linalg.norm(child)
            ratio = rng.uniform(0.74, 0.86)
            stack.append((end, child, r_end * ratio, seg_len * rng.uniform(0.78, 0.92), depth + 1))


def make_patient(seed: int, *, anatomy_scale: float = 1.0, with_vessels: bool = True) -> Patient:
    """Build one synthetic patient deterministically from a seed.

    Parameters
    ----------
    seed : int
        Patient seed; the same seed always gives the same patient.
    anatomy_scale : float, optional
        Overall size factor multiplied into the random body size (0.92-1.05).
    with_vessels : bool, optional
        ``False`` leaves the pulmonary vessel trees out (phantom family B grows its own).

    Returns
    -------
    Patient
        The patient, with vessel trees and airways in the patient frame.
    """
    rng = np.random.default_rng([seed, 101])
    s = float(anatomy_scale * rng.uniform(0.92, 1.05))
    stub = Patient(scale=s, vessels=_empty(), airways=_empty(), great_vessels=_empty(), seed=seed)
    segments: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float]] = []
    for label, sign in ((RIGHT_LUNG, -1.0), (LEFT_LUNG, 1.0)) if with_vessels else ():
        hilum = np.array([sign * 27.0 * s, 6.0 * s, -12.0 * s])
        roots = [
            (0.35, -0.1, 0.93),
            (0.3, 0.5, 0.8),
            (1.0, 0.05, 0.25),
            (0.9, -0.4, 0.1),
            (0.55, 0.25, -0.8),
            (0.5, -0.85, -0.15),
            (0.45, 0.8, -0.4),
            (0.6, -0.3, -0.75),
            (0.2, 0.6, -0.75),
        ]
        for rx, ry, rz in roots:
            d = np.array([sign * rx, ry, rz], dtype=np.float64)
            d = _rotate(d / np.linalg.norm(d), np.deg2rad(rng.uniform(0.0, 10.0)), rng)
            _grow_tree(stub, rng, label, hilum, d, 4.0 * s, 26.0 * s, segments)
    vessels = (
        Capsules(
            p0=np.array([seg[0] for seg in segments]),
            p1=np.array([seg[1] for seg in segments]),
            r0=np.array([seg[2] for seg in segments]),
            r1=np.array([seg[3] for seg in segments]),
        )
        if segments
        else _empty()
    )
    carina = np.array([0.0, 2.0 * s, 8.0 * s])
    airway_p0 = np.array([[0.0, -6.0 * s, 260.0 * s], carina, carina])
    airway_p1 = np.array([carina, [-38.0 * s, 6.0 * s, -8.0 * s], [36.0 * s, 8.0 * s, -14.0 * s]])
    airways = Capsules(
        p0=airway_p0,
        p1=airway_p1,
        r0=np.array([9.0, 6.5, 6.0]) * s,
        r1=np.array([8.5, 5.5, 5.0]) * s,
    )
    arch = 48.0 * s
    gv_p0 = np.array(
        [[14.0 * s, -18.0 * s, -20.0 * s], [14.0 * s, -18.0 * s, arch], [24.0 * s, 46.0 * s, arch]]
    )
    gv_p1 = np.array(
        [[14.0 * s, -18.0 * s, arch], [24.0 * s, 46.0 * s, arch], [24.0 * s, 46.0 * s, -400.0 * s]]
    )
    great = Capsules(
        p0=gv_p0, p1=gv_p1, r0=np.array([14.0, 12.0, 12.0]) * s, r1=np.array([13.0, 12.0, 11.0]) * s
    )
    logger.debug("patient seed %d: scale %.3f, %d vessel segments", seed, s, len(vessels))
    return Patient(scale=s, vessels=vessels, airways=airways, great_vessels=great, seed=seed)


def _empty() -> Capsules:
    zero = np.zeros((0, 3))
    return Capsules(p0=zero, p1=zero, r0=np.zeros(0), r1=np.zeros(0))
