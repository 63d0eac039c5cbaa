"""Size classes of papers.md (used by the per-size-class evaluation)."""

from __future__ import annotations

import math

import pytest

from ai.classes import SIZE_CLASS_LABELS, size_class


@pytest.mark.parametrize(
    ("diameter", "expected"),
    [(0.0, 0), (-1.0, 0), (0.5, 1), (4.99, 1), (5.0, 2), (5.5, 2), (6.0, 3), (7.9, 3), (8.0, 4),
     (12.9, 4), (13.0, 5), (18.0, 6), (22.9, 6), (23.0, 7), (40.0, 7)],
)
def test_size_class_edges(diameter: float, expected: int) -> None:
    assert size_class(diameter) == expected
    assert 0 <= expected < len(SIZE_CLASS_LABELS)


def test_size_class_rejects_nan() -> None:
    with pytest.raises(ValueError):
        size_class(math.nan)
