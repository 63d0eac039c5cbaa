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

Relevance is "same size class" and, reported apart, "same size class and
texture". Metrics: mAP over the whole database, mAP@100, P@10.
"""

from __future__ import annotations

from dataclasses import dataclass

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

__all__ = ["CODE_LENGTHS", "RetrievalEvaluation", "evaluate_retrieval_table"]

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


def _metrics(
    d: npt.ArrayLike, rel_size: npt.NDArray[np.bool_], rel_both: npt.NDArray[np.bool_]
) -> dict[str, float]:
    return {
        "map": mean_average_precision(d, rel_size),
        "map@100": mean_average_precision(d, rel_size, top=100),
        "p@10": precision_at_k(d, rel_size, 10),
        "map_size_texture": mean_average_precision(d, rel_both),
    }


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
    rel_size = label_relevance(queries.size_class, database.size_class)
    rel_both = label_relevance(
        np.c_[queries.size_class, queries.texture], np.c_[database.size_class, database.texture]
    )
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
        rows[f"ours joint {bits}"] = _metrics(joint, rel_size, rel_both)
        rows[f"ours joint + float rerank {bits}"] = _metrics(
            _reranked(joint, l2), rel_size, rel_both
        )
        if bits == 64:
            rows[f"ours joint + float16 rerank {bits}"] = _metrics(
                _reranked(joint, l2_16), rel_size, rel_both
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
                rows[f"{name} {label} {bits}"] = _metrics(d, rel_size, rel_both)
                if bits == 64 and label == "raw pixels":
                    curves[f"{name} raw pixels"] = pr_curve(d, rel_size)
        if bits == 64:
            curves["ours joint"] = pr_curve(joint, rel_size)
    for layer in ("shallow", "middle", "deep"):
        rows[f"ours {layer} only 64"] = _metrics(
            hamming_distances(getattr(q, layer), getattr(db, layer)), rel_size, rel_both
        )
    rows["ours float embedding"] = _metrics(l2, rel_size, rel_both)
    rows["ours float16 embedding"] = _metrics(l2_16, rel_size, rel_both)
    return RetrievalEvaluation(rows, curves, len(queries), len(database))
