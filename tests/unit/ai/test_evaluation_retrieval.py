"""ai.evaluation.retrieval: relevance per label, malignancy 3 left out, folds, mean and spread."""

from __future__ import annotations

import numpy as np
import pytest

from ai.evaluation.retrieval import evaluate_retrieval_table, kfold_retrieval, relevance_labels
from ai.hashing.codes import HashCodes, pack_signs
from ai.hashing.train import RoiSet


def _codes(size_class: np.ndarray, malignancy: np.ndarray, rng: np.random.Generator) -> HashCodes:
    """Codes whose shallow and deep layers spell the size class (8 bits a class, as a
    thermometer) and whose middle layer spells the malignancy group in 4 bits."""
    n = len(size_class)
    by_size = np.where(np.arange(64)[None, :] < 8 * size_class[:, None], 1.0, -1.0)
    by_group = np.where((malignancy[:, None] == 1) & (np.arange(64)[None, :] < 4), 1.0, -1.0)
    return HashCodes(
        shallow=pack_signs(by_size),
        middle=pack_signs(by_group),
        deep=pack_signs(by_size),
        embedding=rng.normal(size=(n, 8)).astype(np.float32),
        size_probs=np.full((n, 8), 1 / 8, np.float32),
        texture_probs=np.full((n, 3), 1 / 3, np.float32),
        n_bits=64,
    )


def _rois(n: int, rng: np.random.Generator) -> RoiSet:
    size_class = rng.integers(1, 8, n)
    malignancy = rng.integers(-1, 2, n)
    return RoiSet(
        rng.random((n, 1, 8, 8), dtype=np.float32),
        size_class.astype(np.int64),
        rng.integers(0, 3, n).astype(np.int64),
        np.array([f"P{i // 2}" for i in range(n)]),
        malignancy=malignancy.astype(np.int64),
    )


def test_relevance_by_each_label_and_rated_3_left_out() -> None:
    rng = np.random.default_rng(0)
    data = _rois(60, rng)
    labels = relevance_labels(data)
    assert set(labels) == {"", "_size_texture", "_texture", "_malignancy"}
    queries, database = data.subset(np.arange(20)), data.subset(np.arange(20, 60))
    q = _codes(queries.size_class, queries.malignancy, rng)
    db = _codes(database.size_class, database.malignancy, rng)
    rows = evaluate_retrieval_table(queries, database, q, db).rows
    joint = rows["ours joint 64"]
    # one size class apart costs 16 bits, another malignancy group 4: same size ranks first
    assert joint["map"] == pytest.approx(1.0)
    assert rows["ours middle only 64"]["map_malignancy"] == pytest.approx(1.0)
    # rated-3 database items do not count: all-but-unknown items of the same group come first
    assert rows["ours middle only 64"]["p@10_malignancy"] == pytest.approx(1.0)
    assert rows["ours shallow only 64"]["map_malignancy"] < 0.9
    unrated = RoiSet(data.rois, data.size_class, data.texture, data.patient)
    assert "map_malignancy" not in relevance_labels(unrated)


def test_folds_give_mean_and_spread_and_never_mix_a_fold() -> None:
    rng = np.random.default_rng(1)
    data = _rois(90, rng)
    folds = (np.arange(90) // 2) % 3  # a patient's two nodules share a fold
    seen: list[tuple[int, int, int]] = []

    def codes(fold: int, queries: RoiSet, database: RoiSet):
        seen.append((fold, len(queries), len(database)))
        assert not set(queries.patient) & set(database.patient)
        return (
            _codes(queries.size_class, queries.malignancy, rng),
            _codes(database.size_class, database.malignancy, rng),
        )

    result = kfold_retrieval(data, folds, codes)
    assert seen == [(0, 30, 60), (1, 30, 60), (2, 30, 60)]
    assert result.n_queries == 90 and result.n_database == 60
    joint = result.rows["ours joint 64"]
    assert joint["map"] == pytest.approx(1.0) and joint["map_sd"] == pytest.approx(0.0)
    itq = [f["rows"]["ITQ raw pixels 24"]["map"] for f in result.folds]
    assert result.rows["ITQ raw pixels 24"]["map"] == pytest.approx(np.mean(itq))
    assert result.rows["ITQ raw pixels 24"]["map_sd"] == pytest.approx(np.std(itq))
