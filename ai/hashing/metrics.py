"""Retrieval metrics: mAP (whole database and @k), P@k, precision-recall points.

Every function takes a distance matrix ``(nq, n)`` (Hamming, joint, or float)
and a boolean relevance matrix ``(nq, n)``. Ranking is by ascending distance,
ties broken by database order (stable sort), as the hashing literature's
evaluation code does. Queries with no relevant item in the database are left
out of the means (their AP is undefined); if every query is left out the
result is ``nan``.

Definitions (``rel_i`` = relevance of the item ranked ``i``, 1-based):

- ``AP = Σ_i P@i · rel_i / Σ_i rel_i`` over the whole ranking;
- ``AP@k`` the same sums over the top ``k`` (queries with no relevant item in
  their top ``k`` score 0, as in DSH/HashNet evaluation code);
- ``P@k = Σ_{i≤k} rel_i / k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ai.hashing.distance import joint_distance

__all__ = [
    "PRCurve",
    "hamming_distances",
    "joint_distances",
    "label_relevance",
    "mean_average_precision",
    "pr_curve",
    "precision_at_k",
    "relevance_from_function",
]


def hamming_distances(
    queries: npt.NDArray[np.uint8], database: npt.NDArray[np.uint8]
) -> npt.NDArray[np.int32]:
    """``(nq, n)`` int32 Hamming distances between packed codes ``(nq, B)`` and ``(n, B)``."""
    q = np.asarray(queries, dtype=np.uint8)
    db = np.asarray(database, dtype=np.uint8)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"packed codes must be (nq, B) and (n, B), got {q.shape} and {db.shape}")
    out = np.empty((q.shape[0], db.shape[0]), np.int32)
    for i in range(q.shape[0]):
        out[i] = np.bitwise_count(db ^ q[i]).sum(axis=1, dtype=np.int32)
    return out


def joint_distances(
    queries: Sequence[npt.NDArray[np.uint8]], database: Sequence[npt.NDArray[np.uint8]]
) -> npt.NDArray[np.int32]:
    """FCDN joint distance (:func:`ai.hashing.distance.joint_distance`) of one-view queries.

    Parameters
    ----------
    queries, database : sequence of numpy.ndarray
        ``(shallow, middle, deep)`` packed codes, ``(nq, B)`` and ``(n, B)``.
    """
    if len(queries) != len(database):
        raise ValueError("queries and database need the same layers")
    per_layer = np.stack(
        [hamming_distances(q, db) for q, db in zip(queries, database, strict=True)]
    )
    out: npt.NDArray[np.int32] = joint_distance(per_layer[None])
    return out


def label_relevance(
    query_labels: npt.ArrayLike, database_labels: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """Relevant = same label (``(n,)`` labels), or same in every column (``(n, m)`` labels).

    ``label_relevance(size, size_db)`` is "same size class";
    ``label_relevance(np.c_[size, texture], np.c_[size_db, texture_db])`` is
    "same size class and texture".
    """
    q = np.asarray(query_labels)
    db = np.asarray(database_labels)
    if q.ndim == 1:
        q, db = q[:, None], db[:, None]
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"labels must be (nq[, m]) and (n[, m]), got {q.shape} and {db.shape}")
    same: npt.NDArray[np.bool_] = np.all(q[:, None, :] == db[None, :, :], axis=2)
    return same


def relevance_from_function(
    is_relevant: Callable[[int, int], bool], n_queries: int, n_database: int
) -> npt.NDArray[np.bool_]:
    """``(nq, n)`` relevance from a predicate ``is_relevant(query_index, database_index)``."""
    return np.array(
        [[bool(is_relevant(i, j)) for j in range(n_database)] for i in range(n_queries)],
        dtype=np.bool_,
    ).reshape(n_queries, n_database)


def _ranked_relevance(distances: npt.ArrayLike, relevance: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    d = np.asarray(distances)
    rel = np.asarray(relevance, dtype=np.bool_)
    if d.shape != rel.shape or d.ndim != 2:
        raise ValueError(
            f"distances and relevance must both be (nq, n), got {d.shape} and {rel.shape}"
        )
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(rel, order, axis=1)


def mean_average_precision(
    distances: npt.ArrayLike, relevance: npt.ArrayLike, *, top: int | None = None
) -> float:
    """mAP over the whole ranking (``top=None``) or mAP@``top``.

    Parameters
    ----------
    distances : array_like
        ``(nq, n)`` distances, smaller is nearer.
    relevance : array_like
        ``(nq, n)`` bool.
    top : int, optional
        Cut-off ``k`` of mAP@k.
    """
    ranked = _ranked_relevance(distances, relevance)
    has_any = ranked.any(axis=1)
    if top is not None:
        ranked = ranked[:, :top]
    hits = np.cumsum(ranked, axis=1)
    positions = np.arange(1, ranked.shape[1] + 1)
    precision_sum = (hits / positions * ranked).sum(axis=1)
    n_rel = ranked.sum(axis=1)
    ap = np.divide(precision_sum, n_rel, out=np.zeros(len(ranked)), where=n_rel > 0)
    return float(ap[has_any].mean()) if has_any.any() else float("nan")


def precision_at_k(distances: npt.ArrayLike, relevance: npt.ArrayLike, k: int = 10) -> float:
    """Mean precision of the top ``k`` (queries with a relevant item somewhere)."""
    ranked = _ranked_relevance(distances, relevance)
    has_any = ranked.any(axis=1)
    if not has_any.any():
        return float("nan")
    return float(ranked[has_any, :k].mean(axis=1).mean())


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall of "everything within radius r", for each radius.

    Attributes
    ----------
    radius : numpy.ndarray
        ``(m,)`` distance thresholds (inclusive).
    precision, recall : numpy.ndarray
        ``(m,)`` float64, micro-averaged over queries; precision is ``nan``
        where nothing is retrieved.
    """

    radius: npt.NDArray[np.float64]
    precision: npt.NDArray[np.float64]
    recall: npt.NDArray[np.float64]


def pr_curve(
    distances: npt.ArrayLike, relevance: npt.ArrayLike, radii: npt.ArrayLike | None = None
) -> PRCurve:
    """Precision-recall points by distance radius (the hashing papers' PR curve).

    Parameters
    ----------
    distances : array_like
        ``(nq, n)`` distances.
    relevance : array_like
        ``(nq, n)`` bool.
    radii : array_like, optional
        Thresholds; default every distinct distance value.
    """
    d = np.asarray(distances, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.bool_)
    if d.shape != rel.shape:
        raise ValueError(f"distances {d.shape} and relevance {rel.shape} differ")
    r = np.unique(d) if radii is None else np.asarray(radii, dtype=np.float64)
    flat_d, flat_rel = d.ravel(), rel.ravel()
    order = np.argsort(flat_d, kind="stable")
    sorted_d = flat_d[order]
    cum_rel = np.concatenate([[0], np.cumsum(flat_rel[order])])
    retrieved = np.searchsorted(sorted_d, r, side="right")
    tp = cum_rel[retrieved].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(retrieved > 0, tp / np.maximum(retrieved, 1), np.nan)
    recall = tp / max(int(flat_rel.sum()), 1)
    return PRCurve(radius=r, precision=precision, recall=recall)
