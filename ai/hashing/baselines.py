"""Data-independent and unsupervised hashing baselines: LSH and ITQ.

Both take float features ``(n, d)`` (network features, or raw pixels through
:func:`flatten_rois`) and give packed codes ``(n, ceil(K/8))`` uint8 in the
same bit convention as :func:`ai.hashing.codes.pack_signs`, so the same
metrics apply. No maintained PyPI package implements ITQ, so it is written
here with numpy (Gong & Lazebnik, "Iterative Quantization", CVPR 2011).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ai.hashing.codes import pack_signs

__all__ = ["ITQ", "LSH", "flatten_rois"]

logger = logging.getLogger(__name__)


def flatten_rois(rois: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Raw-pixel features: ``(n, C, H, W)`` → ``(n, C·H·W)`` float64."""
    x = np.asarray(rois, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


class LSH:
    """Sign of random Gaussian projections of centred features (Charikar's SimHash).

    Parameters
    ----------
    n_bits : int
        Code length ``K``.
    seed : int
        Seed of the projection matrix.
    """

    def __init__(self, n_bits: int, *, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.mean_: npt.NDArray[np.float64] | None = None
        self.projection_: npt.NDArray[np.float64] | None = None

    def fit(self, x: npt.ArrayLike) -> LSH:
        """Learn the feature mean and draw ``(d, K)`` projections."""
        x = np.asarray(x, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        self.projection_ = np.random.default_rng(self.seed).standard_normal(
            (x.shape[1], self.n_bits)
        )
        return self

    def encode(self, x: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """``(n, d)`` features → ``(n, ceil(K/8))`` packed codes."""
        if self.mean_ is None or self.projection_ is None:
            raise RuntimeError("call fit() first")
        return pack_signs((np.asarray(x, dtype=np.float64) - self.mean_) @ self.projection_)


class ITQ:
    """Iterative quantization: PCA to ``K`` dimensions, then the rotation that
    minimises the quantization error ``‖B − V R‖_F``.

    Parameters
    ----------
    n_bits : int
        Code length ``K`` (at most the feature dimension).
    n_iter : int
        Alternating iterations (the paper uses 50).
    seed : int
        Seed of the initial random rotation.
    """

    def __init__(self, n_bits: int, *, n_iter: int = 50, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.n_iter = n_iter
        self.seed = seed
        self.mean_: npt.NDArray[np.float64] | None = None
        self.pca_: npt.NDArray[np.float64] | None = None
        self.rotation_: npt.NDArray[np.float64] | None = None

    def fit(self, x: npt.ArrayLike) -> ITQ:
        """Learn mean, PCA projection ``(d, K)`` and rotation ``(K, K)``."""
        x = np.asarray(x, dtype=np.float64)
        n, d = x.shape
        if self.n_bits > min(n, d):
            raise ValueError(f"ITQ needs n_bits <= min(n, d) = {min(n, d)}, got {self.n_bits}")
        self.mean_ = x.mean(axis=0)
        xc = x - self.mean_
        # top-K principal directions; Lanczos (scipy) when d is large (raw pixels)
        if self.n_bits < min(n, d) and min(n, d) > 256:
            from scipy.sparse.linalg import svds

            _, sv, vt = svds(xc, k=self.n_bits, rng=self.seed)
            vt = vt[np.argsort(sv)[::-1]]
        else:
            _, _, vt = np.linalg.svd(xc, full_matrices=False)
        self.pca_ = vt[: self.n_bits].T
        v = xc @ self.pca_
        rng = np.random.default_rng(self.seed)
        r, _ = np.linalg.qr(rng.standard_normal((self.n_bits, self.n_bits)))
        for _ in range(self.n_iter):
            b = np.where(v @ r >= 0, 1.0, -1.0)
            ub, _, uat = np.linalg.svd(b.T @ v)
            r = uat.T @ ub.T
        self.rotation_ = r
        logger.debug("ITQ: fitted %d bits on %d x %d", self.n_bits, n, d)
        return self

    def quantization_error(self, x: npt.ArrayLike) -> float:
        """``‖sign(V R) − V R‖_F² / n`` on ``x`` (what ITQ minimises)."""
        vr = self._rotated(x)
        return float(((np.where(vr >= 0, 1.0, -1.0) - vr) ** 2).sum() / vr.shape[0])

    def _rotated(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        if self.mean_ is None or self.pca_ is None or self.rotation_ is None:
            raise RuntimeError("call fit() first")
        out: npt.NDArray[np.float64] = (
            (np.asarray(x, dtype=np.float64) - self.mean_) @ self.pca_
        ) @ self.rotation_
        return out

    def encode(self, x: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """``(n, d)`` features → ``(n, ceil(K/8))`` packed codes."""
        vr = self._rotated(x)
        return pack_signs(np.where(vr >= 0, 1.0, -1.0))
