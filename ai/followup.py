"""The same nodule across a patient's scans: matching after registration, and growth.

:func:`match_nodules` is pure: it takes the current scan's nodules, a
prior's and the :class:`ai.registration.Registration` between the two
scans, brings the prior centres into the current scan's world, pairs
nodules by the assignment of least total distance (Hungarian, scipy) within
a gate, and gives each pair's growth: diameter change in mm and %, volume
change in %, and the volume doubling time when the interval is known.
Unpaired current nodules are ``new``; unpaired prior ones ``resolved``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from ai.registration import Registration

__all__ = ["MeasuredNodule", "NoduleChange", "match_nodules"]

logger = logging.getLogger(__name__)


class MeasuredNodule(Protocol):
    """What matching needs of a nodule (:class:`ai.measure.NoduleCandidate` has it)."""

    @property
    def center_xyz(self) -> tuple[float, float, float]:
        """World LPS centre, mm."""

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter, mm."""

    @property
    def volume_mm3(self) -> float:
        """Segmented volume, mm³."""


@dataclass(frozen=True)
class NoduleChange:
    """One nodule followed from a prior to the current scan.

    Parameters
    ----------
    status : {"matched", "new", "resolved"}
    current_index, prior_index : int or None
        Positions in the lists handed to :func:`match_nodules`.
    distance_mm : float or None
        Between the current centre and the registered prior centre.
    diameter_change_mm : float or None
        Current minus prior equivalent diameter.
    diameter_change_pct : float or None
        ``100 * (current / prior - 1)`` of the diameter.
    volume_change_pct : float or None
        ``100 * (current / prior - 1)`` of the volume.
    volume_doubling_days : float or None
        ``interval * ln 2 / ln(V_current / V_prior)`` (negative when shrinking;
        ``None`` without an interval or when the volume did not change).
    """

    status: Literal["matched", "new", "resolved"]
    current_index: int | None
    prior_index: int | None
    distance_mm: float | None = None
    diameter_change_mm: float | None = None
    diameter_change_pct: float | None = None
    volume_change_pct: float | None = None
    volume_doubling_days: float | None = None


def match_nodules(
    current: Sequence[MeasuredNodule],
    prior: Sequence[MeasuredNodule],
    registration: Registration,
    *,
    max_distance_mm: float = 10.0,
    interval_days: float | None = None,
) -> tuple[NoduleChange, ...]:
    """Pair the nodules of two scans of one patient and measure their growth.

    Parameters
    ----------
    current, prior : sequence of MeasuredNodule
        Nodules of the current scan and of the prior, each in its own scan's
        world coordinates.
    registration : Registration
        From :func:`ai.registration.register` (current, prior).
    max_distance_mm : float
        A pair may be at most this far apart after registration, plus half
        the larger of the two diameters (a large nodule's centre moves as it
        grows unevenly).
    interval_days : float, optional
        Days between the two scans (for the volume doubling time).

    Returns
    -------
    tuple of NoduleChange
        The matched pairs in current order, then new nodules, then resolved ones.
    """
    if max_distance_mm <= 0:
        raise ValueError(f"max_distance_mm must be positive, got {max_distance_mm}")
    pairs: list[tuple[int, int, float]] = []
    if current and prior:
        here = np.asarray([n.center_xyz for n in current], np.float64)
        there = registration.map_prior_to_current([n.center_xyz for n in prior])
        distance = np.linalg.norm(here[:, None, :] - there[None, :, :], axis=-1)
        sizes = np.asarray([n.diameter_mm for n in current])[:, None]
        prior_sizes = np.asarray([n.diameter_mm for n in prior])[None, :]
        gate = max_distance_mm + 0.5 * np.maximum(sizes, prior_sizes)
        cost = np.where(distance <= gate, distance, 1e6)
        rows, cols = linear_sum_assignment(cost)
        pairs = [
            (int(r), int(c), float(distance[r, c]))
            for r, c in zip(rows, cols, strict=True)
            if distance[r, c] <= gate[r, c]
        ]
    changes = [_change(current[i], prior[j], i, j, d, interval_days) for i, j, d in sorted(pairs)]
    paired_current = {i for i, _, _ in pairs}
    paired_prior = {j for _, j, _ in pairs}
    changes += [
        NoduleChange("new", i, None) for i in range(len(current)) if i not in paired_current
    ]
    changes += [
        NoduleChange("resolved", None, j) for j in range(len(prior)) if j not in paired_prior
    ]
    logger.debug(
        "follow-up: %d matched, %d new, %d resolved",
        len(pairs),
        len(current) - len(pairs),
        len(prior) - len(pairs),
    )
    return tuple(changes)


def _change(
    now: MeasuredNodule,
    before: MeasuredNodule,
    i: int,
    j: int,
    distance: float,
    interval_days: float | None,
) -> NoduleChange:
    d_now, d_before = float(now.diameter_mm), float(before.diameter_mm)
    v_now, v_before = float(now.volume_mm3), float(before.volume_mm3)
    doubling = None
    if interval_days is not None and v_before > 0 and v_now > 0 and v_now != v_before:
        doubling = interval_days * math.log(2.0) / math.log(v_now / v_before)
    return NoduleChange(
        status="matched",
        current_index=i,
        prior_index=j,
        distance_mm=distance,
        diameter_change_mm=d_now - d_before,
        diameter_change_pct=100.0 * (d_now / d_before - 1.0) if d_before > 0 else None,
        volume_change_pct=100.0 * (v_now / v_before - 1.0) if v_before > 0 else None,
        volume_doubling_days=doubling,
    )
