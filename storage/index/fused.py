"""Fused single-pass joint-distance scan, compiled by numba (optional).

One pass over the rows computes each nodule's joint distance
(:func:`ai.hashing.distance.joint_distance`: popcount of the three layers'
XOR, minimum over the query's views where the layer's role says so, plus the
label penalty) and keeps, with a shrinking threshold, every row within the
``keep``-th smallest distance, ties included: the same answer as
:func:`storage.index.hamming.smallest` over :func:`storage.index.numpy_backend.joint`,
without materialising per-layer distance arrays.

Why numba: numpy needs one temporary array per ufunc (XOR, popcount, add,
compare), so an exact 10 M-row scan reads and writes about ten times the
240 MB of codes (30 ms on two cores). numba is a well-kept LLVM front end: the
loop below is compiled for the host CPU, ``llvm.ctpop.i64`` vectorises to
AVX-512 ``VPOPCNTQ`` where the CPU has ``avx512_vpopcntdq`` (to ``POPCNT``
elsewhere), and the scan runs at close to memory bandwidth. The kernels
release the GIL, so the numpy backend's thread pool splits rows over cores.
Without numba, :data:`AVAILABLE` is False and the numpy backend keeps its
pure-numpy chunked path (same results, slower).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.hashing.distance import layer_roles

__all__ = ["AVAILABLE", "scan_coarse", "scan_joint"]

logger = logging.getLogger(__name__)

_BLOCK = 2048  # rows per block: distances computed (vectorised), then filtered
_CAPACITY = 4096  # candidate buffer before the first threshold update

try:
    import numba
    from numba.core import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised where numba is absent
    AVAILABLE = False
else:
    AVAILABLE = True

if AVAILABLE:

    def _ctpop(typingctx: Any, x: Any) -> Any:
        """``llvm.ctpop.i64``: population count of a uint64 (one instruction)."""
        sig = types.int64(types.uint64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.ctpop(args[0])

        return sig, codegen

    _popcount: Any = intrinsic(_ctpop)

    @numba.njit(nogil=True, cache=True)
    def _keep_smallest(
        cand_r: Any, cand_d: Any, nc: int, keep: int
    ) -> tuple[int, int]:  # pragma: no cover - compiled
        """Compact candidates to those within the ``keep``-th smallest; (count, threshold)."""
        thr = np.partition(cand_d[:nc].copy(), keep - 1)[keep - 1]
        m = 0
        for j in range(nc):
            if cand_d[j] <= thr:
                cand_r[m] = cand_r[j]
                cand_d[m] = cand_d[j]
                m += 1
        return m, thr

    @numba.njit(nogil=True, cache=True, inline="always")
    def _push(
        r: int, d: int, nc: int, thr: int, cand_r: Any, cand_d: Any, keep: int
    ) -> tuple[int, int]:  # pragma: no cover - compiled
        """Append row ``r`` at distance ``d <= thr``, compacting a full buffer first.

        Returns ``(count, threshold)``; a count of ``-1`` says the buffer is
        full of rows tied at the cut (the caller retries with a larger one).
        """
        if nc == cand_r.size:
            nc, thr = _keep_smallest(cand_r, cand_d, nc, keep)
            if 2 * nc > cand_r.size:
                return -1, thr
            if d > thr:
                return nc, thr
        cand_r[nc] = r
        cand_d[nc] = d
        return nc + 1, thr

    @numba.njit(nogil=True, cache=True, inline="always")
    def _select(
        dbuf: Any, m: int, start: int, nc: int, thr: int, cand_r: Any, cand_d: Any, keep: int
    ) -> tuple[int, int]:  # pragma: no cover - compiled
        """Push the rows of a block (distances ``dbuf[:m]``) within the threshold, as `_push`."""
        for j in range(m):
            if dbuf[j] <= thr:
                nc, thr = _push(start + j, dbuf[j], nc, thr, cand_r, cand_d, keep)
                if nc < 0:
                    break
        return nc, thr

    @numba.njit(nogil=True, cache=True, inline="always")
    def _kept(cand_r: Any, cand_d: Any, nc: int, keep: int) -> tuple[Any, Any, bool]:
        """The scan's answer: candidates within the ``keep``-th smallest (``nc < 0``: overflow)."""
        if nc < 0:
            return cand_r[:0], cand_d[:0], False
        if nc > keep:
            nc, _ = _keep_smallest(cand_r, cand_d, nc, keep)
        return cand_r[:nc].copy(), cand_d[:nc].copy(), True

    @numba.njit(nogil=True, cache=True)
    def _scan_joint(
        w0: Any,
        w1: Any,
        w2: Any,
        labels: Any,
        qv: Any,
        over_views: Any,
        penalty: Any,
        a: int,
        b: int,
        keep: int,
        max_d: int,
        capacity: int,
    ) -> tuple[Any, Any, bool]:  # pragma: no cover - compiled
        cand_r = np.empty(capacity, np.int64)
        cand_d = np.empty(capacity, np.int32)
        dbuf = np.empty(_BLOCK, np.int32)
        lbuf = np.empty(_BLOCK, np.int32)
        nc, thr = 0, max_d
        q0, q1, q2 = qv[0, 0], qv[0, 1], qv[0, 2]
        plain = qv.shape[0] == 1 and penalty.size == 0
        for s in range(a, b, _BLOCK):
            e = min(s + _BLOCK, b)
            if plain:  # the hot loop: no store, vectorised popcount and compare
                x, y, z = w0[s:e], w1[s:e], w2[s:e]
                hits = 0
                for j in range(e - s):
                    d = _popcount(x[j] ^ q0) + _popcount(y[j] ^ q1) + _popcount(z[j] ^ q2)
                    hits += d <= thr
                if hits == 0:
                    continue
                for j in range(e - s):
                    dbuf[j] = _popcount(x[j] ^ q0) + _popcount(y[j] ^ q1) + _popcount(z[j] ^ q2)
            else:  # several views or a label penalty: per-layer block buffers
                m = e - s
                dbuf[:m] = 0
                for layer in range(3):
                    w = (w0 if layer == 0 else (w1 if layer == 1 else w2))[s:e]
                    views = qv.shape[0] if over_views[layer] else 1
                    for j in range(m):
                        lbuf[j] = _popcount(w[j] ^ qv[0, layer])
                    for v in range(1, views):
                        qw = qv[v, layer]
                        for j in range(m):
                            lbuf[j] = min(lbuf[j], _popcount(w[j] ^ qw))
                    for j in range(m):
                        dbuf[j] += lbuf[j]
                if penalty.size:
                    for j in range(m):
                        dbuf[j] += penalty[labels[s + j]]
            nc, thr = _select(dbuf, e - s, s, nc, thr, cand_r, cand_d, keep)
            if nc < 0:
                break
        return _kept(cand_r, cand_d, nc, keep)

    @numba.njit(nogil=True, cache=True)
    def _scan_one_layer(
        words: Any, q: Any, a: int, b: int, keep: int, capacity: int
    ) -> tuple[Any, Any, bool]:  # pragma: no cover - compiled
        cand_r = np.empty(capacity, np.int64)
        cand_d = np.empty(capacity, np.int32)
        dbuf = np.empty(_BLOCK, np.int32)
        nc, thr = 0, 64
        for s in range(a, b, _BLOCK):
            e = min(s + _BLOCK, b)
            x = words[s:e]
            hits = 0
            for j in range(e - s):
                hits += _popcount(x[j] ^ q) <= thr
            if hits == 0:
                continue
            for j in range(e - s):
                dbuf[j] = _popcount(x[j] ^ q)
            nc, thr = _select(dbuf, e - s, s, nc, thr, cand_r, cand_d, keep)
            if nc < 0:
                break
        return _kept(cand_r, cand_d, nc, keep)


_ROLES = np.array(layer_roles(), np.bool_)
_NO_PENALTY = np.zeros(0, np.int32)


def scan_joint(
    words: npt.NDArray[np.uint64],
    labels: npt.NDArray[np.uint8],
    qv: npt.NDArray[np.uint64],
    penalty: npt.NDArray[np.int32] | None,
    a: int,
    b: int,
    keep: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Rows ``a:b`` within the ``keep``-th smallest joint distance, ties included.

    Parameters
    ----------
    words : numpy.ndarray
        ``(3, n)`` uint64 code words, each layer contiguous (``n >= b``).
    labels : numpy.ndarray
        ``(n,)`` uint8 labels (read only with a penalty).
    qv : numpy.ndarray
        ``(n_views, 3)`` uint64 query words.
    penalty : numpy.ndarray or None
        ``(256,)`` int32 distance added per label, or None; a row whose
        distance then exceeds ``64 * 3`` is never returned (a filtered-out label).
    a, b : int
        Row range.
    keep : int
        How many smallest to keep (``>= 1``).

    Returns
    -------
    rows : numpy.ndarray
        ``(m,)`` int64 row numbers: ``min(keep, b - a)`` or more (ties at the
        cut kept), fewer only where a penalty rules rows out.
    distances : numpy.ndarray
        ``(m,)`` int32 joint distances (penalty included).
    """
    if not AVAILABLE:
        raise RuntimeError("numba is not installed (pip install 'dicom-node[fast]')")
    if words.shape[0] != len(_ROLES) or qv.shape[1] != len(_ROLES):
        raise ValueError(f"the fused scan needs {len(_ROLES)} layers, got {words.shape[0]}")
    pen = _NO_PENALTY if penalty is None else np.ascontiguousarray(penalty, np.int32)
    w0, w1, w2 = (np.ascontiguousarray(w) for w in words)
    q = np.ascontiguousarray(qv, np.uint64)
    return _retry(
        lambda capacity: _scan_joint(
            w0, w1, w2, labels, q, _ROLES, pen, a, b, keep, 64 * len(_ROLES), capacity
        ),
        keep,
    )


def scan_coarse(
    words: npt.NDArray[np.uint64], q: np.uint64, a: int, b: int, keep: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Rows ``a:b`` of one layer within the ``keep``-th smallest Hamming distance to ``q``.

    Parameters
    ----------
    words : numpy.ndarray
        ``(n,)`` contiguous uint64 words of one layer.
    q : numpy.uint64
        Query word.
    a, b, keep : int
        Row range and how many smallest to keep (ties at the cut kept).

    Returns
    -------
    rows, distances : numpy.ndarray
        ``(m,)`` int64 rows and int32 distances.
    """
    if not AVAILABLE:
        raise RuntimeError("numba is not installed (pip install 'dicom-node[fast]')")
    return _retry(lambda capacity: _scan_one_layer(words, np.uint64(q), a, b, keep, capacity), keep)


def _retry(
    scan: Callable[[int], tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], bool]], keep: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Run ``scan(capacity)``, growing the candidate buffer while ties at the cut overflow it."""
    capacity = max(_CAPACITY, 4 * keep)
    while True:
        rows, dist, complete = scan(capacity)
        if complete:
            return rows, dist
        capacity *= 4
