"""The nodule classes: eight diameter classes (paper 001) and three textures.

Classes by nodule diameter in mm: ``=0 | 0-5 | 5-6 | 6-8 | 8-13 | 13-18 |
18-23 | >23``. Class 0 means "no nodule". Intervals are half-open
``[lower, upper)``, so a 5.0 mm nodule is class 2 and a 23.0 mm one class 7.
Phantom truth, evaluation per size class and the hashing network's class head
all use this one function. The textures are the vocabulary of the phantom's
truth, the network's texture head, the catalog and the SR.
"""

from __future__ import annotations

import bisect
import math

__all__ = ["SIZE_CLASS_EDGES_MM", "SIZE_CLASS_LABELS", "TEXTURES", "size_class"]

TEXTURES: tuple[str, str, str] = ("solid", "part-solid", "ground-glass")
"""Nodule textures (index = label of the hashing network's texture head)."""

#: Lower edges (mm) of classes 2..7; class 1 is ``(0, 5)`` and class 0 is ``0``.
SIZE_CLASS_EDGES_MM: tuple[float, ...] = (5.0, 6.0, 8.0, 13.0, 18.0, 23.0)

#: Human-readable label of each class, index = class number.
SIZE_CLASS_LABELS: tuple[str, ...] = (
    "0",
    "0-5",
    "5-6",
    "6-8",
    "8-13",
    "13-18",
    "18-23",
    ">23",
)


def size_class(diameter_mm: float) -> int:
    """Return the size class (0..7) of a nodule diameter.

    Parameters
    ----------
    diameter_mm : float
        Nodule diameter in mm; ``0`` (or less) means no nodule.

    Returns
    -------
    int
        0 for no nodule, else 1..7 by the half-open intervals of
        :data:`SIZE_CLASS_EDGES_MM`.

    Raises
    ------
    ValueError
        If ``diameter_mm`` is not a finite number.
    """
    value = float(diameter_mm)
    if not math.isfinite(value):
        raise ValueError(f"diameter_mm must be finite, got {diameter_mm!r}")
    if value <= 0.0:
        return 0
    return 1 + bisect.bisect_right(SIZE_CLASS_EDGES_MM, value)
