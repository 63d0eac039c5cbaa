"""ai.hashing.metrics on hand-made cases with known answers, and against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from ai.hashing.metrics import (
    hamming_distances,
    joint_distances,
    label_relevance,
    mean_average_precision,
    pr_curve,
    precision_at_k,
    relevance_from_function,
)


def _brute_force_ap(dist_row: np.ndarray, rel_row: np.ndarray, top: int | None = None) -> float:
    ranked = [
        bool(rel_row[j]) for j in sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
    ]
    ranked = ranked[:top] if top else ranked
    precisions = [sum(ranked[: i + 1]) / (i + 1) for i, r in enumerate(ranked) if r]
    return sum(precisions) / len(precisions) if precisions else 0.0


def test_average_precision_hand_made() -> None:
    # ranking: rel, not, rel, not -> AP = (1/1 + 2/3) / 2
    d = np.array([[0, 1, 2, 3]])
    rel = np.array([[True, False, True, False]])
    assert mean_average_precision(d, rel) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(d, rel, top=2) == pytest.approx(1.0)
    assert precision_at_k(d, rel, k=2) == pytest.approx(0.5)
    # ties are broken by database order: item 1 (relevant) before item 2
    d2 = np.array([[5, 1, 1, 0]])
    rel2 = np.array([[False, True, False, False]])
    assert mean_average_precision(d2, rel2) == pytest.approx(1 / 2)


def test_queries_without_relevant_items_are_left_out() -> None:
    d = np.array([[0, 1], [0, 1]])
    rel = np.array([[False, True], [False, False]])
    assert mean_average_precision(d, rel) == pytest.approx(0.5)
    assert np.isnan(mean_average_precision(d, np.zeros_like(rel)))


def test_map_matches_brute_force_definition() -> None:
    rng = np.random.default_rng(0)
    d = rng.integers(0, 8, size=(12, 40))
    labels_q, labels_db = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    rel = label_relevance(labels_q, labels_db)
    keep = rel.any(axis=1)
    for top in (None, 10):
        expected = np.mean([_brute_force_ap(d[i], rel[i], top) for i in range(12) if keep[i]])
        assert mean_average_precision(d, rel, top=top) == pytest.approx(expected)
    expected_p = np.mean(
        [
            np.mean([rel[i, j] for j in np.argsort(d[i], kind="stable")[:10]])
            for i in range(12)
            if keep[i]
        ]
    )
    assert precision_at_k(d, rel, 10) == pytest.approx(expected_p)


def test_label_relevance_one_and_two_columns_and_function() -> None:
    size_q, size_db = np.array([1, 2]), np.array([1, 1, 2])
    tex_q, tex_db = np.array([0, 0]), np.array([0, 1, 0])
    assert label_relevance(size_q, size_db).tolist() == [[True, True, False], [False, False, True]]
    both = label_relevance(np.c_[size_q, tex_q], np.c_[size_db, tex_db])
    assert both.tolist() == [[True, False, False], [False, False, True]]
    fn = relevance_from_function(
        lambda i, j: size_q[i] == size_db[j] and tex_q[i] == tex_db[j], 2, 3
    )
    np.testing.assert_array_equal(fn, both)


def test_hamming_and_joint_distances_match_unpacked_bits() -> None:
    rng = np.random.default_rng(1)
    layers_q = [rng.integers(0, 256, (3, 4), dtype=np.uint8) for _ in range(3)]
    layers_db = [rng.integers(0, 256, (7, 4), dtype=np.uint8) for _ in range(3)]
    per = [
        (np.unpackbits(q, axis=1)[:, None] != np.unpackbits(db, axis=1)[None]).sum(2)
        for q, db in zip(layers_q, layers_db, strict=True)
    ]
    np.testing.assert_array_equal(hamming_distances(layers_q[0], layers_db[0]), per[0])
    np.testing.assert_array_equal(joint_distances(layers_q, layers_db), per[0] + per[1] + per[2])


def test_pr_curve_hand_made() -> None:
    d = np.array([[0, 1, 1, 2]])
    rel = np.array([[True, False, True, True]])
    curve = pr_curve(d, rel)
    np.testing.assert_array_equal(curve.radius, [0, 1, 2])
    np.testing.assert_allclose(curve.precision, [1.0, 2 / 3, 3 / 4])
    np.testing.assert_allclose(curve.recall, [1 / 3, 2 / 3, 1.0])
    assert np.isnan(pr_curve(d, rel, radii=[-1]).precision[0])
