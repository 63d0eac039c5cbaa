"""ai.hashing.baselines: LSH and ITQ."""

from __future__ import annotations

import numpy as np
import pytest

from ai.hashing.baselines import ITQ, LSH, flatten_rois
from ai.hashing.metrics import hamming_distances, label_relevance, mean_average_precision


def _clustered(rng: np.random.Generator, n: int, d: int = 64, k: int = 8):
    centres = rng.standard_normal((k, d)) * 3.0
    labels = rng.integers(0, k, n)
    # anisotropic noise: many dimensions of pure noise make random projections poor
    x = centres[labels] + rng.standard_normal((n, d)) * np.linspace(0.5, 4.0, d)
    return x, labels


@pytest.mark.parametrize("n_bits", [16, 32])
def test_itq_beats_lsh_on_a_clustered_toy_set(n_bits: int) -> None:
    rng = np.random.default_rng(0)
    x, y = _clustered(rng, 900)
    train, db, q = slice(0, 400), slice(400, 800), slice(800, 900)
    rel = label_relevance(y[q], y[db])
    scores = {}
    for name, method in (("lsh", LSH(n_bits, seed=1)), ("itq", ITQ(n_bits, seed=1))):
        method.fit(x[train])
        scores[name] = mean_average_precision(
            hamming_distances(method.encode(x[q]), method.encode(x[db])), rel
        )
    assert scores["itq"] > scores["lsh"] + 0.05, scores


def test_itq_rotation_lowers_quantization_error_and_stays_orthogonal() -> None:
    rng = np.random.default_rng(2)
    x, _ = _clustered(rng, 300)
    start = ITQ(16, n_iter=0, seed=3).fit(x)
    fitted = ITQ(16, n_iter=50, seed=3).fit(x)
    assert fitted.quantization_error(x) < start.quantization_error(x)
    r = fitted.rotation_
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-8)


def test_codes_shape_and_raw_pixel_features() -> None:
    rng = np.random.default_rng(4)
    rois = rng.random((300, 3, 16, 16)).astype(np.float32)
    feats = flatten_rois(rois)
    assert feats.shape == (300, 768)
    for method in (LSH(24), ITQ(24, n_iter=5)):  # ITQ via Lanczos: min(n, d) > 256
        codes = method.fit(feats).encode(feats[:7])
        assert codes.shape == (7, 3) and codes.dtype == np.uint8
    with pytest.raises(ValueError):
        ITQ(64).fit(rng.random((10, 5)))
    with pytest.raises(RuntimeError):
        LSH(8).encode(feats)
