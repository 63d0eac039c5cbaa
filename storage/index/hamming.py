"""Hamming-distance building blocks of ``storage.index`` (numpy, no state).

Code rows are packed into one ``uint64`` word per layer; a scan yields chunks
of distances and :func:`smallest` keeps the rows within the ``keep``-th
smallest distance with a shrinking threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNK_ROWS",
    "ChunkFactory",
    "LabelPartitions",
    "bounded_pool",
    "bytes_per_layer",
    "pack_layers",
    "smallest",
    "top_k",
    "unpack_layers",
]

CHUNK_ROWS = 1 << 18
"""Rows per scan chunk (2 MiB of uint64): few Python calls, still in cache."""


def bytes_per_layer(n_bits: int) -> int:
    """Bytes of one packed ``n_bits`` code."""
    return (n_bits + 7) // 8


def pack_layers(codes: npt.NDArray[np.uint8], n_bits: int, n_layers: int) -> npt.NDArray[np.uint64]:
    """Turn code rows into one ``uint64`` word per layer.

    Parameters
    ----------
    codes : numpy.ndarray
        ``(n, n_layers * ceil(n_bits / 8))`` uint8 code rows, layer after layer.
    n_bits : int
        Bits per layer, 1..64.
    n_layers : int
        Layers per row.

    Returns
    -------
    numpy.ndarray
        ``(n_layers, n)`` uint64; bytes of each layer little-endian, zero-padded.
    """
    nb = bytes_per_layer(n_bits)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != n_layers * nb:
        raise ValueError(f"codes must be (n, {n_layers * nb}) uint8, got {codes.shape}")
    n = codes.shape[0]
    padded = np.zeros((n_layers, n, 8), dtype=np.uint8)
    padded[:, :, :nb] = codes.reshape(n, n_layers, nb).transpose(1, 0, 2)
    return padded.view("<u8").reshape(n_layers, n).astype(np.uint64, copy=False)


def unpack_layers(words: npt.NDArray[np.uint64], n_bits: int) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`pack_layers`: ``(n_layers, n)`` uint64 → ``(n, code_size)`` uint8."""
    nb = bytes_per_layer(n_bits)
    n_layers, n = words.shape
    raw = np.ascontiguousarray(words, dtype="<u8").view(np.uint8).reshape(n_layers, n, 8)
    return np.ascontiguousarray(raw[:, :, :nb].transpose(1, 0, 2).reshape(n, n_layers * nb))


ChunkFactory = Callable[[int, int], Iterator[tuple[int, npt.NDArray[np.integer]]]]
"""``make_chunks(a, b)`` yields ``(first_row, distances)`` covering rows ``a:b``."""


def smallest(
    make_chunks: ChunkFactory, a: int, b: int, keep: int, max_distance: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Rows ``a:b`` with the ``keep`` smallest distances, and every row tied with the last.

    The starting threshold is a generous quantile of a sample of the first
    chunk (about ``8 * keep`` expected hits); it shrinks as candidates
    accumulate, so late chunks contribute few rows. If the guess proves too
    tight, the rows are scanned again with no threshold: the result is exact.
    """
    guess: int | None = None
    while True:
        rows: list[npt.NDArray[np.int64]] = []
        dists: list[npt.NDArray[np.integer]] = []
        total, tighten_at = 0, 2 * keep
        mask: npt.NDArray[np.bool_] | None = None
        threshold = max_distance
        for start, d in make_chunks(a, b):
            if mask is None:
                mask = np.empty(d.size, np.bool_)
                if guess is None:
                    sample = np.sort(d[:8192])
                    at = max(int(np.ceil(sample.size * 8 * keep / max(b - a, 1))), 16)
                    guess = min(int(sample[at]), max_distance) if at < sample.size else max_distance
                threshold = guess
            hit = np.flatnonzero(np.less_equal(d, threshold, out=mask[: d.size]))
            if hit.size:
                rows.append(hit + start)
                dists.append(d[hit])
                total += hit.size
            if total >= tighten_at:
                r, dd = np.concatenate(rows), np.concatenate(dists)
                threshold = int(np.partition(dd, keep - 1)[keep - 1])
                sel = dd <= threshold
                rows, dists, total = [r[sel]], [dd[sel]], int(sel.sum())
                tighten_at = max(2 * keep, 2 * total)
        if total >= keep or guess is None or guess >= max_distance:
            break
        guess = max_distance  # the sample misled us: scan again, exactly
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    r, dd = np.concatenate(rows), np.concatenate(dists).astype(np.int32)
    if r.size > keep:
        threshold = int(np.partition(dd, keep - 1)[keep - 1])
        sel = dd <= threshold
        r, dd = r[sel], dd[sel]
    return r.astype(np.int64, copy=False), dd


def bounded_pool(
    rows: npt.NDArray[np.int64], dists: npt.NDArray[np.int32], max_pool: int
) -> npt.NDArray[np.int64]:
    """Sorted pool rows, cut to ``max_pool`` by (distance, row)."""
    order = np.argsort(rows, kind="stable")
    rows, dists = rows[order], dists[order]
    if rows.size > max_pool:
        rows = rows[np.argsort(dists, kind="stable")[:max_pool]]
        rows.sort()
    return rows


def top_k(
    dist: npt.NDArray[np.int32], ids: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """``k`` smallest by ``(distance, id)``, padded with ``-1``."""
    D = np.full(k, -1, np.int32)
    Ids = np.full(k, -1, np.int64)
    if dist.size > k:
        cut = int(np.partition(dist, k - 1)[k - 1])
        sel = np.flatnonzero(dist <= cut)
        dist, ids = dist[sel], ids[sel]
    order = np.lexsort((ids, dist))[:k]
    D[: order.size] = dist[order]
    Ids[: order.size] = ids[order]
    return D, Ids


class LabelPartitions:
    """Per-label contiguous copies of one layer's words, with their ids.

    A search restricted to some labels then scans only their rows. Arrays grow
    by doubling; removal compacts the label's arrays (order kept).
    """

    def __init__(self) -> None:
        self._words: dict[int, npt.NDArray[np.uint64]] = {}
        self._ids: dict[int, npt.NDArray[np.int64]] = {}
        self._n: dict[int, int] = {}

    def add(
        self,
        labels: npt.NDArray[np.uint8],
        words: npt.NDArray[np.uint64],
        ids: npt.NDArray[np.int64],
    ) -> None:
        """Append ``(n,)`` words and ids under their ``(n,)`` labels."""
        for label in np.unique(labels).tolist():
            sel = labels == label
            w, i = words[sel], ids[sel]
            n = self._n.get(label, 0)
            cap = self._ids[label].size if label in self._ids else 0
            if n + w.size > cap:
                cap = max(n + w.size, 2 * cap, 256)
                grown_w, grown_i = np.zeros(cap, np.uint64), np.zeros(cap, np.int64)
                if n:
                    grown_w[:n], grown_i[:n] = self._words[label][:n], self._ids[label][:n]
                self._words[label], self._ids[label] = grown_w, grown_i
            self._words[label][n : n + w.size] = w
            self._ids[label][n : n + w.size] = i
            self._n[label] = n + w.size

    def remove(self, labels: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64]) -> None:
        """Drop ``ids`` (stored under ``labels``, same length)."""
        for label in np.unique(labels).tolist():
            n = self._n.get(label, 0)
            keep = ~np.isin(self._ids[label][:n], ids[labels == label])
            k = int(keep.sum())
            self._words[label][:k] = self._words[label][:n][keep]
            self._ids[label][:k] = self._ids[label][:n][keep]
            self._n[label] = k

    def part(self, label: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        """``(words, ids)`` views of one label's rows (empty if none)."""
        n = self._n.get(label, 0)
        if n == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return self._words[label][:n], self._ids[label][:n]
