"""Retrieval evaluation: ours against LSH and ITQ, shaped like the FCDN paper's Table 1.

Queries and database are patient-disjoint ROI sets. Distances:

- ours, joint: the FCDN joint distance of the three layers, using the first
  ``K`` bits of each 64-bit layer for K = 24, 32, 48, 64;
- ours, single layers (shallow, middle, deep) at 64 bits;
- ours, joint then float rerank: the joint-distance top 100 reordered by the
  embedding's L2 distance (what the node does), the rest after them;
- ours, float embedding alone (L2);
- the same two with the database embeddings rounded to float16, as the
  node's index keeps them (``storage.index``): the rerank's quality before
  and after;
- LSH and ITQ at every K, on raw pixels and on our float embedding.

Relevance (:func:`relevance_labels`), each reported with mAP over the whole
database, mAP@100 and P@10 under its own key suffix: same size class (no
suffix: ``map``, ``map@100``, ``p@10``), same size class and texture
(``_size_texture``), same texture (``_texture``) and, where the ROIs carry it,
same malignancy group (``_malignancy``: benign 1-2 / malignant 4-5, as seed
004; nodules rated 3 are left out both as queries and from the database).

:func:`kfold_retrieval` repeats the table over patient-disjoint folds (each
fold's nodules query the other folds') and gives the mean and the standard
deviation over folds (keys with ``_sd``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.hashing.baselines import ITQ, LSH, flatten_rois
from ai.hashing.codes import HashCodes
from ai.hashing.metrics import (
    PRCurve,
    hamming_distances,
    joint_distances,
    label_relevance,
    mean_average_precision,
    pr_curve,
    precision_at_k,
)
from ai.hashing.train import RoiSet

__all__ = [
    "CODE_LENGTHS",
    "FoldedEvaluation",
    "RetrievalEvaluation",
    "evaluate_retrieval_table",
    "kfold_retrieval",
    "relevance_labels",
]

CODE_LENGTHS = (24, 32, 48, 64)


@dataclass(frozen=True)
class RetrievalEvaluation:
    """Rows ``{method: {metric: value}}`` and the PR curves at 64 bits."""

    rows: dict[str, dict[str, float]]
    curves: dict[str, PRCurve]
    n_queries: int
    n_database: int


def _prefix(layer: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    unpacked = np.unpackbits(layer, axis=1)[:, :bits]
    return np.packbits(unpacked, axis=1)


def _reranked(
    joint: npt.NDArray[np.int32], l2: npt.NDArray[np.float32], shortlist: int = 100
) -> npt.NDArray[np.float64]:
    """Distances ordering the joint top ``shortlist`` by L2, then the rest by joint distance."""
    order = np.argsort(joint, axis=1, kind="stable")
    result = np.empty(joint.shape, np.float64)
    rows = np.arange(joint.shape[0])[:, None]
    top = order[:, :shortlist]
    # top: rank by L2 inside [0, 1); the rest: 1 + joint distance
    l2_top = l2[rows, top]
    result[:] = 1.0 + joint
    result[rows, top] = l2_top / (l2_top.max(axis=1, keepdims=True) + 1e-9) * 0.999
    return result


def relevance_labels(rois: RoiSet) -> dict[str, npt.NDArray[Any]]:
    """Labels per relevance, keyed by metric suffix; -1 marks a label left out."""
    labels: dict[str, npt.NDArray[Any]] = {
        "": rois.size_class,
        "_size_texture": np.where(
            (rois.texture >= 0)[:, None], np.c_[rois.size_class, rois.texture], -1
        ),
        "_texture": rois.texture,
    }
    if rois.malignancy is not None and (rois.malignancy >= 0).any():
        labels["_malignancy"] = rois.malignancy
    return labels


def _metrics(
    d: npt.ArrayLike, query: dict[str, npt.NDArray[Any]], database: dict[str, npt.NDArray[Any]]
) -> dict[str, float]:
    """mAP, mAP@100 and P@10 for every relevance; rows and columns labelled -1 are left out."""
    distances = np.asarray(d)
    out: dict[str, float] = {}
    for suffix, q_labels in query.items():
        db_labels = database[suffix]
        q_keep = (q_labels >= 0) if q_labels.ndim == 1 else (q_labels >= 0).all(axis=1)
        db_keep = (db_labels >= 0) if db_labels.ndim == 1 else (db_labels >= 0).all(axis=1)
        if not q_keep.any() or not db_keep.any():
            continue
        sub = distances[q_keep][:, db_keep]
        rel = label_relevance(q_labels[q_keep], db_labels[db_keep])
        out[f"map{suffix}"] = mean_average_precision(sub, rel)
        out[f"map@100{suffix}"] = mean_average_precision(sub, rel, top=100)
        out[f"p@10{suffix}"] = precision_at_k(sub, rel, 10)
    return out


def evaluate_retrieval_table(
    queries: RoiSet, database: RoiSet, q: HashCodes, db: HashCodes, *, seed: int = 0
) -> RetrievalEvaluation:
    """Evaluate our codes (already encoded) and the baselines on the same ROIs.

    Parameters
    ----------
    queries, database : RoiSet
        Patient-disjoint labelled ROIs.
    q, db : HashCodes
        Our codes of ``queries`` and ``database`` (64-bit layers).
    seed : int
        Seed of LSH's projections and ITQ's rotation.
    """
    q_labels, db_labels = relevance_labels(queries), relevance_labels(database)
    db_labels = {k: v for k, v in db_labels.items() if k in q_labels}
    q_labels = {k: v for k, v in q_labels.items() if k in db_labels}
    rel_size = label_relevance(queries.size_class, database.size_class)
    rows: dict[str, dict[str, float]] = {}
    curves: dict[str, PRCurve] = {}
    l2 = ((q.embedding[:, None, :] - db.embedding[None, :, :]) ** 2).sum(-1)
    db16 = db.embedding.astype(np.float16).astype(np.float32)  # as the index keeps them
    l2_16 = ((q.embedding[:, None, :] - db16[None, :, :]) ** 2).sum(-1)
    raw_db, raw_q = flatten_rois(database.rois), flatten_rois(queries.rois)
    for bits in CODE_LENGTHS:
        if bits > q.n_bits:
            continue
        joint = joint_distances(
            tuple(_prefix(getattr(q, k), bits) for k in ("shallow", "middle", "deep")),
            tuple(_prefix(getattr(db, k), bits) for k in ("shallow", "middle", "deep")),
        )
        rows[f"ours joint {bits}"] = _metrics(joint, q_labels, db_labels)
        rows[f"ours joint + float rerank {bits}"] = _metrics(
            _reranked(joint, l2), q_labels, db_labels
        )
        if bits == 64:
            rows[f"ours joint + float16 rerank {bits}"] = _metrics(
                _reranked(joint, l2_16), q_labels, db_labels
            )
        for name, method in (("ITQ", ITQ(bits, seed=seed)), ("LSH", LSH(bits, seed=seed))):
            # ITQ learns a rotation of a PCA: at most min(n, d) bits.
            for features, query_features, label in (
                (raw_db, raw_q, "raw pixels"),
                (db.embedding, q.embedding, "on our embedding"),
            ):
                if name == "ITQ" and bits > min(features.shape):
                    continue
                fitted = type(method)(bits, seed=seed).fit(features)
                d = hamming_distances(fitted.encode(query_features), fitted.encode(features))
                rows[f"{name} {label} {bits}"] = _metrics(d, q_labels, db_labels)
                if bits == 64 and label == "raw pixels":
                    curves[f"{name} raw pixels"] = pr_curve(d, rel_size)
        if bits == 64:
            curves["ours joint"] = pr_curve(joint, rel_size)
    for layer in ("shallow", "middle", "deep"):
        rows[f"ours {layer} only 64"] = _metrics(
            hamming_distances(getattr(q, layer), getattr(db, layer)), q_labels, db_labels
        )
    rows["ours float embedding"] = _metrics(l2, q_labels, db_labels)
    rows["ours float16 embedding"] = _metrics(l2_16, q_labels, db_labels)
    return RetrievalEvaluation(rows, curves, len(queries), len(database))


@dataclass(frozen=True)
class FoldedEvaluation:
    """:func:`kfold_retrieval`'s result.

    Attributes
    ----------
    rows : dict
        ``{method: {metric: mean over folds, metric + "_sd": standard deviation}}``.
    folds : list of dict
        Each fold's rows, ``n_queries`` and ``n_database``.
    curves : dict
        Precision-recall curves at 64 bits of the first fold.
    n_queries, n_database : int
        Queries over all folds, and the mean database size.
    """

    rows: dict[str, dict[str, float]]
    folds: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, PRCurve] = field(default_factory=dict)
    n_queries: int = 0
    n_database: int = 0


def kfold_retrieval(
    data: RoiSet,
    fold_of: npt.ArrayLike,
    codes: Callable[[int, RoiSet, RoiSet], tuple[HashCodes, HashCodes]],
    *,
    seed: int = 0,
) -> FoldedEvaluation:
    """The table of :func:`evaluate_retrieval_table` over folds, with mean and spread.

    Parameters
    ----------
    data : RoiSet
        All labelled ROIs.
    fold_of : array_like
        ``(n,)`` fold of each ROI (``ai.readers.lidc_crops.patient_folds``
        keeps a patient in one fold).
    codes : callable
        ``codes(fold, queries, database) -> (query_codes, database_codes)``;
        the model behind them must not have seen ``queries``' patients.
    seed : int
        Seed of LSH and ITQ.
    """
    folds = np.asarray(fold_of)
    per_fold: list[dict[str, Any]] = []
    curves: dict[str, PRCurve] = {}
    for k in np.unique(folds):
        queries = data.subset(np.flatnonzero(folds == k))
        database = data.subset(np.flatnonzero(folds != k))
        q, db = codes(int(k), queries, database)
        table = evaluate_retrieval_table(queries, database, q, db, seed=seed)
        per_fold.append(
            {
                "fold": int(k),
                "rows": table.rows,
                "n_queries": len(queries),
                "n_database": len(database),
            }
        )
        curves = curves or table.curves
    rows: dict[str, dict[str, float]] = {}
    for method in per_fold[0]["rows"]:
        metrics = per_fold[0]["rows"][method]
        rows[method] = {}
        for metric in metrics:
            values = np.array([f["rows"][method].get(metric, np.nan) for f in per_fold])
            rows[method][metric] = float(np.nanmean(values))
            rows[method][f"{metric}_sd"] = float(np.nanstd(values))
    return FoldedEvaluation(
        rows=rows,
        folds=per_fold,
        curves=curves,
        n_queries=int(sum(f["n_queries"] for f in per_fold)),
        n_database=int(round(np.mean([f["n_database"] for f in per_fold]))),
    )
