"""Binary codes: sign of the relaxed head outputs, packed into bytes.

A ``K``-bit code is ``ceil(K / 8)`` bytes, bits MSB-first (``numpy.packbits``);
a positive relaxed value is a 1 bit, zero or negative a 0 bit. The three layers
concatenated (``HashCodes.rows()``) are the code rows of
``storage.index.HashIndex``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ai.classes import TEXTURES

__all__ = [
    "LAYERS",
    "TEXTURES",
    "HashCodes",
    "pack_signs",
    "unpack_bits",
]

LAYERS: tuple[str, str, str] = ("shallow", "middle", "deep")
"""Hash layers, in code-row order (FCDN: contour, semantics, size/shape)."""



def pack_signs(relaxed: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Codes from relaxed values: ``(n, K)`` float → ``(n, ceil(K/8))`` uint8 (bit = value > 0)."""
    r = np.asarray(relaxed)
    if r.ndim != 2:
        raise ValueError(f"relaxed codes must be (n, K), got {r.shape}")
    return np.packbits(r > 0, axis=1)


def unpack_bits(packed: npt.NDArray[np.uint8], n_bits: int) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`pack_signs`: ``(n, ceil(K/8))`` uint8 → ``(n, K)`` uint8 of 0/1."""
    p = np.asarray(packed, dtype=np.uint8)
    if p.ndim != 2 or p.shape[1] != (n_bits + 7) // 8:
        raise ValueError(f"packed codes must be (n, {(n_bits + 7) // 8}) uint8, got {p.shape}")
    return np.unpackbits(p, axis=1, count=n_bits)


@dataclass(frozen=True)
class HashCodes:
    """Codes of ``n`` ROIs (one per nodule, or per view).

    Attributes
    ----------
    shallow, middle, deep : numpy.ndarray
        ``(n, ceil(n_bits / 8))`` uint8 packed codes of the three layers.
    embedding : numpy.ndarray
        ``(n, d)`` float32 L2-normalised embedding for reranking.
    size_probs : numpy.ndarray
        ``(n, 8)`` float32 probabilities of the diameter classes of ``ai.classes``.
    texture_probs : numpy.ndarray
        ``(n, 3)`` float32 probabilities of :data:`TEXTURES`.
    n_bits : int
        Bits per layer ``K``.
    model_version : str or None
        Version id of the weights that made the codes.
    malignancy_probs : numpy.ndarray or None
        ``(n, 2)`` float32 probabilities of benign and malignant (the LIDC
        readers' groups) from models with a malignancy head, else ``None``.
    diameter_mm : numpy.ndarray or None
        ``(n,)`` float32 nodule diameter the network measured (equivalent
        sphere) from models with a diameter head, else ``None``.
    """

    shallow: npt.NDArray[np.uint8]
    middle: npt.NDArray[np.uint8]
    deep: npt.NDArray[np.uint8]
    embedding: npt.NDArray[np.float32]
    size_probs: npt.NDArray[np.float32]
    texture_probs: npt.NDArray[np.float32]
    n_bits: int
    model_version: str | None = None
    malignancy_probs: npt.NDArray[np.float32] | None = None
    diameter_mm: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        nb = (self.n_bits + 7) // 8
        n = self.shallow.shape[0]
        for name in LAYERS:
            a = getattr(self, name)
            if a.dtype != np.uint8 or a.shape != (n, nb):
                raise ValueError(f"{name} must be ({n}, {nb}) uint8, got {a.shape} {a.dtype}")
        for name, width in (("size_probs", 8), ("texture_probs", 3)):
            if getattr(self, name).shape != (n, width):
                raise ValueError(f"{name} must be ({n}, {width}), got {getattr(self, name).shape}")
        if self.embedding.ndim != 2 or self.embedding.shape[0] != n:
            raise ValueError(f"embedding must be ({n}, d), got {self.embedding.shape}")
        if self.malignancy_probs is not None and self.malignancy_probs.shape != (n, 2):
            raise ValueError(
                f"malignancy_probs must be ({n}, 2), got {self.malignancy_probs.shape}"
            )
        if self.diameter_mm is not None and self.diameter_mm.shape != (n,):
            raise ValueError(f"diameter_mm must be ({n},), got {self.diameter_mm.shape}")

    def __len__(self) -> int:
        return int(self.shallow.shape[0])

    def rows(self) -> npt.NDArray[np.uint8]:
        """``(n, 3 * ceil(K/8))`` uint8 rows (shallow | middle | deep) for ``storage.index``."""
        return np.concatenate([self.shallow, self.middle, self.deep], axis=1)

    @property
    def size_class(self) -> npt.NDArray[np.int64]:
        """``(n,)`` predicted diameter class."""
        out: npt.NDArray[np.int64] = np.argmax(self.size_probs, axis=1).astype(np.int64)
        return out

    @property
    def texture(self) -> npt.NDArray[np.int64]:
        """``(n,)`` predicted texture index into :data:`TEXTURES`."""
        out: npt.NDArray[np.int64] = np.argmax(self.texture_probs, axis=1).astype(np.int64)
        return out
