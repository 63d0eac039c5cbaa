"""storage.index.fused: the compiled single-pass scans against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from storage.index import fused
from storage.index.numpy_backend import joint

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba is not installed")


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, size=(3, n), dtype=np.uint64, endpoint=True)


def _expected(d: np.ndarray, keep: int, limit: int) -> set[int]:
    """Rows within the keep-th smallest distance (ties kept), none beyond ``limit``."""
    allowed = np.flatnonzero(d <= limit)
    if allowed.size <= keep:
        return set(allowed.tolist())
    cut = np.sort(d[allowed])[keep - 1]
    return set(np.flatnonzero(d <= cut).tolist())


@pytest.mark.parametrize("n_views", [1, 3])
@pytest.mark.parametrize(("a", "b"), [(0, 9_000), (1_234, 7_001), (5, 6)])
def test_scan_joint_matches_brute_force(n_views: int, a: int, b: int) -> None:
    rng = np.random.default_rng(n_views * 100 + a)
    words = _words(rng, 9_000)
    labels = np.zeros(9_000, np.uint8)
    qv = _words(rng, n_views).T.copy()  # (n_views, 3)
    rows, dist = fused.scan_joint(words, labels, qv, None, a, b, 10)
    ref = joint(qv, words[:, a:b])  # the numpy backend's joint distance
    assert set(rows.tolist()) == {a + r for r in _expected(ref, 10, 192)}
    np.testing.assert_array_equal(dist, ref[rows - a])


def test_scan_joint_penalty_excludes_filtered_labels() -> None:
    rng = np.random.default_rng(3)
    words = _words(rng, 5_000)
    labels = rng.integers(0, 4, 5_000).astype(np.uint8)
    penalty = np.full(256, 1 << 16, np.int32)
    penalty[[1, 3]] = 0
    qv = _words(rng, 1).T.copy()
    rows, dist = fused.scan_joint(words, labels, qv, penalty, 0, 5_000, 25)
    ref = joint(qv, words) + penalty[labels]
    assert set(rows.tolist()) == _expected(ref, 25, 192)
    assert set(labels[rows].tolist()) <= {1, 3}
    # every label filtered out: nothing comes back
    rows, _ = fused.scan_joint(words, labels, qv, np.full(256, 1 << 16, np.int32), 0, 5_000, 5)
    assert rows.size == 0


def test_ties_beyond_the_candidate_buffer_are_all_kept() -> None:
    """20,000 identical rows tie at the cut: the buffer grows (a retry), none is lost."""
    rng = np.random.default_rng(4)
    words = _words(rng, 30_000)
    words[:, 5_000:25_000] = words[:, :1]
    qv = words[:, :1].T.copy()  # the duplicated code itself: distance 0
    rows, dist = fused.scan_joint(words, np.zeros(30_000, np.uint8), qv, None, 0, 30_000, 10)
    assert set(rows.tolist()) == {0, *range(5_000, 25_000)} and not dist.any()


@pytest.mark.parametrize("keep", [1, 10, 1_000])
def test_scan_coarse_matches_brute_force(keep: int) -> None:
    rng = np.random.default_rng(keep)
    layer = _words(rng, 20_000)[1]
    q = np.uint64(rng.integers(0, 2**63))
    rows, dist = fused.scan_coarse(layer, q, 0, layer.size, keep)
    ref = np.bitwise_count(layer ^ q).astype(np.int32)
    assert set(rows.tolist()) == _expected(ref, keep, 64)
    np.testing.assert_array_equal(dist, ref[rows])
