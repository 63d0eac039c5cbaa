"""The FCDN joint distance, written once (``shared/papers.md``, paper 000).

::

    D = min_v D_shallow(q_v, x) + D_middle(q_0, x) + min_v D_deep(q_v, x)

``v`` runs over the query's views (slices or ROIs of one nodule); the middle
(semantic) layer compares the reference view 0 only, as the paper's
``D_middle`` has no minimum. With one view the joint distance is the sum of
the three layers' Hamming distances.

:func:`joint_distance` combines per-layer Hamming distances that the caller
computed where it likes (numpy popcount for evaluation matrices and the
in-memory index, torch on the GPU); the combination is written only here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ai.hashing.codes import LAYERS

__all__ = ["REFERENCE_VIEW_LAYERS", "joint_distance", "layer_roles"]

REFERENCE_VIEW_LAYERS: frozenset[str] = frozenset({"middle"})
"""Layers compared on the query's reference view only (no minimum over views)."""

A = TypeVar("A")


def layer_roles(layers: tuple[str, ...] = LAYERS) -> tuple[bool, ...]:
    """Per layer, True where the distance is the minimum over the query's views."""
    return tuple(name not in REFERENCE_VIEW_LAYERS for name in layers)


def joint_distance(per_view_layer: A, *, amin: Callable[[Any, int], Any] = np.amin) -> A:
    """Joint distance from per-view, per-layer Hamming distances.

    Parameters
    ----------
    per_view_layer : array
        ``(n_views, n_layers, ...)`` Hamming distances (numpy array or torch
        tensor), layers in :data:`ai.hashing.codes.LAYERS` order; any trailing
        shape (database rows, a query-by-database matrix) is kept.
    amin : callable
        ``amin(array, axis)``: ``numpy.amin`` (default) or ``torch.amin``.

    Returns
    -------
    array
        ``(...)`` joint distances, same library as the input.
    """
    roles = layer_roles()
    n_layers = per_view_layer.shape[1]  # type: ignore[attr-defined]
    if n_layers != len(roles):
        raise ValueError(f"joint distance needs {len(roles)} layers {LAYERS}, got {n_layers}")
    total: Any = None
    for layer, over_views in enumerate(roles):
        part = (
            amin(per_view_layer[:, layer], 0)  # type: ignore[index]
            if over_views
            else per_view_layer[0, layer]  # type: ignore[index]
        )
        total = part if total is None else total + part
    return total  # type: ignore[no-any-return]
