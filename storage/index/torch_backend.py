"""torch backend of :class:`storage.index.HashIndex` (imported only when used).

Popcount of ``int64`` words by SWAR arithmetic (torch has no popcount op); the
joint distance is :func:`ai.hashing.distance.joint_distance` on the device. On
CUDA the distance functions are fused by ``torch.compile``; on CPU they run
eagerly, which is slow but exact (it exists so that tests cover this path).
Results follow the numpy backend exactly: the pool is every row within the
``pool``-th smallest coarse distance, cut to ``max_pool`` by (distance, row),
and the final order is ``(D, id)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from ai.hashing.distance import joint_distance
from storage.index.hamming import top_k
from storage.index.rows import CodeRows

__all__ = ["TorchBackend", "TorchCodes", "popcount64"]

logger = logging.getLogger(__name__)

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101
_FLAT_CHUNK = 1 << 22


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Bits set in each ``int64`` element (SWAR); same shape, int64 in 0..64."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56  # wraps; top byte is the popcount (< 128, so non-negative)


def _coarse(words: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(n,)`` int16 Hamming distances of one ``int64`` word to ``(n,)`` words."""
    return popcount64(words ^ q).to(torch.int16)


def _joint(words: torch.Tensor, qv: torch.Tensor) -> torch.Tensor:
    """Joint distances ``(m,)`` int32; ``words`` ``(L, m)``, ``qv`` ``(V, L)``."""
    per = popcount64(words.unsqueeze(0) ^ qv.unsqueeze(2)).to(torch.int32)  # (V, L, m)
    out: torch.Tensor = joint_distance(per, amin=torch.amin)
    return out


class TorchCodes:
    """Device copy of the index words and the (compiled on CUDA) kernels.

    Parameters
    ----------
    words : numpy.ndarray
        ``(n_layers, n)`` uint64 host words.
    labels : numpy.ndarray
        ``(n,)`` uint8 labels (for ``allowed_labels`` filtering).
    device : str
        torch device.
    """

    def __init__(
        self, words: npt.NDArray[np.uint64], labels: npt.NDArray[np.uint8], device: str
    ) -> None:
        self.device = torch.device(device)
        self.words = torch.from_numpy(np.ascontiguousarray(words).view(np.int64)).to(self.device)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64)).to(
            self.device
        )
        self.coarse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _coarse
        self.joint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _joint
        if self.device.type == "cuda":
            self.coarse = torch.compile(_coarse, dynamic=True)
            self.joint = torch.compile(_joint, dynamic=True)

    @property
    def n(self) -> int:
        return int(self.words.shape[1])


def _within(d: torch.Tensor, keep: int) -> torch.Tensor:
    """Rows (ascending) with ``d`` at most the ``keep``-th smallest value."""
    if d.numel() > keep:
        cut = torch.topk(d, keep, largest=False, sorted=False).values.max()
        return torch.nonzero(d <= cut).squeeze(1)
    return torch.arange(d.numel(), device=d.device)


class TorchBackend:
    """Search :class:`CodeRows` with torch on ``device``; the device copy is rebuilt after changes.

    Parameters
    ----------
    device : str
        ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` ...).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._state: TorchCodes | None = None

    def invalidate(self) -> None:
        """Drop the device copy (the rows changed)."""
        self._state = None

    def search(
        self,
        rows: CodeRows,
        qw: npt.NDArray[np.uint64],
        k: int,
        pool: int,
        max_pool: int,
        penalties: list[npt.NDArray[np.int32] | None],
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Joint-distance search; see :meth:`storage.index.HashIndex.search`."""
        if self._state is None:
            self._state = TorchCodes(rows.live_words(), rows.live_labels(), self.device)
        return _search(
            self._state, rows.live_ids(), qw, k, pool, max_pool, rows.coarse_layer, penalties
        )


def _search(
    state: TorchCodes,
    ids: npt.NDArray[np.int64],
    qw: npt.NDArray[np.uint64],
    k: int,
    pool: int,
    max_pool: int,
    coarse_layer: int,
    penalties: list[npt.NDArray[np.int32] | None],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """Joint-distance search over a device copy of the rows.

    Parameters
    ----------
    state : TorchCodes
        Device words.
    ids : numpy.ndarray
        ``(n,)`` int64 ids in row order.
    qw : numpy.ndarray
        ``(nq, n_views, n_layers)`` uint64 query words.
    k, pool, max_pool, coarse_layer : int
        As in ``HashIndex.search``.
    penalties : list
        Per query, ``None`` or a ``(256,)`` int32 distance penalty per label
        (0 where allowed, larger than any distance elsewhere).
    """

    nq = qw.shape[0]
    D = np.full((nq, k), -1, np.int32)
    nbr = np.full((nq, k), -1, np.int64)
    if state.n == 0:
        return D, nbr
    qt = torch.from_numpy(np.ascontiguousarray(qw).view(np.int64)).to(state.device)
    with torch.inference_mode():
        for i in range(nq):
            lut = None if penalties[i] is None else torch.from_numpy(penalties[i]).to(state.device)
            extra = None if lut is None else lut[state.labels]
            if pool:
                d = state.coarse(state.words[coarse_layer], qt[i, 0, coarse_layer])
                if extra is not None:
                    d = d + extra
                rows = _within(d, pool)
                rows = rows[d[rows] <= 64]
                if rows.numel() > max_pool:
                    order = torch.sort(d[rows], stable=True).indices[:max_pool]
                    rows = torch.sort(rows[order]).values
                joint = state.joint(state.words[:, rows], qt[i])
            else:
                parts = [
                    state.joint(state.words[:, s : s + _FLAT_CHUNK], qt[i])
                    for s in range(0, state.n, _FLAT_CHUNK)
                ]
                full = torch.cat(parts)
                if extra is not None:
                    full = full + extra
                rows = _within(full, k)
                rows = rows[full[rows] <= 64 * state.words.shape[0]]
                joint = full[rows]
            rows_np = rows.cpu().numpy()
            D[i], nbr[i] = top_k(joint.cpu().numpy().astype(np.int32), ids[rows_np], k)
    return D, nbr
