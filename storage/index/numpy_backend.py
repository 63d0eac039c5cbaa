"""numpy backend of :class:`storage.index.HashIndex`: popcount scans on the CPU.

Scans in cache-sized chunks with a shrinking distance threshold
(:func:`storage.index.hamming.smallest`) and splits the rows over threads
(numpy ufuncs release the GIL). The joint distance is
:func:`ai.hashing.distance.joint_distance`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from ai.hashing.distance import joint_distance
from storage.index.hamming import ChunkFactory, bounded_pool, smallest, top_k
from storage.index.rows import CodeRows

__all__ = ["NumpyBackend"]


def joint(qv: npt.NDArray[np.uint64], words: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
    """Joint distances ``(m,)`` int32 of one query to a block of rows.

    ``qv`` is ``(n_views, n_layers)`` uint64, ``words`` ``(n_layers, m)`` uint64.
    """
    per = np.bitwise_count(words[None, :, :] ^ qv[:, :, None]).astype(np.int32)  # (V, L, m)
    out: npt.NDArray[np.int32] = joint_distance(per)
    return out


class NumpyBackend:
    """Search :class:`CodeRows` with numpy on ``n_threads`` threads.

    Parameters
    ----------
    n_threads : int
    chunk_rows : int
        Rows per chunk of a scan (each thread takes whole chunks).
    """

    def __init__(self, n_threads: int, chunk_rows: int) -> None:
        self.n_threads = n_threads
        self.chunk_rows = chunk_rows
        self._executor: ThreadPoolExecutor | None = None

    def invalidate(self) -> None:
        """Nothing is cached beside the rows."""

    def _pool_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.n_threads, thread_name_prefix="hash-index")
        return self._executor

    def _parallel_smallest(
        self, make_chunks: ChunkFactory, n: int, keep: int, max_d: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        parts = min(self.n_threads, max(1, n // self.chunk_rows))
        bounds = np.linspace(0, n, parts + 1).astype(int)
        if parts == 1:
            return smallest(make_chunks, 0, n, keep, max_d)
        futures = [
            self._pool_executor().submit(smallest, make_chunks, int(a), int(b), keep, max_d)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        results = [f.result() for f in futures]
        rows = np.concatenate([r for r, _ in results])
        dists = np.concatenate([d for _, d in results])
        if rows.size > keep:
            cut = int(np.partition(dists, keep - 1)[keep - 1])
            sel = dists <= cut
            rows, dists = rows[sel], dists[sel]
        return rows, dists

    def _coarse_chunks(self, layer: npt.NDArray[np.uint64], q: np.uint64) -> ChunkFactory:
        def chunks(a: int, b: int) -> Iterator[tuple[int, npt.NDArray[np.integer]]]:
            size = self.chunk_rows
            xbuf = np.empty(size, np.uint64)
            dbuf = np.empty(size, np.uint8)
            for s in range(a, b, size):
                m = min(size, b - s)
                np.bitwise_xor(layer[s : s + m], q, out=xbuf[:m])
                yield s, np.bitwise_count(xbuf[:m], out=dbuf[:m])

        return chunks

    def _coarse_pool(
        self, rows: CodeRows, q: np.uint64, pool: int, penalty: npt.NDArray[np.int32] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """Rows and coarse distances within the ``pool``-th smallest (allowed labels only)."""
        if penalty is None:
            layer = rows.words[rows.coarse_layer]
            return self._parallel_smallest(self._coarse_chunks(layer, q), rows.n, pool, 64)
        found_ids, found_d = [], []
        for label in np.flatnonzero(penalty == 0).tolist():
            words, ids = rows.partitions.part(label)
            if words.size:
                r, d = self._parallel_smallest(self._coarse_chunks(words, q), words.size, pool, 64)
                found_ids.append(ids[r])
                found_d.append(d)
        if not found_ids:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        ids_all, d_all = np.concatenate(found_ids), np.concatenate(found_d)
        if d_all.size > pool:
            sel = d_all <= int(np.partition(d_all, pool - 1)[pool - 1])
            ids_all, d_all = ids_all[sel], d_all[sel]
        return rows.rows_of(ids_all, missing="raise"), d_all

    def _joint_chunks(
        self, rows: CodeRows, qv: npt.NDArray[np.uint64], penalty: npt.NDArray[np.int32] | None
    ) -> ChunkFactory:
        def chunks(a: int, b: int) -> Iterator[tuple[int, npt.NDArray[np.integer]]]:
            size = max(1, self.chunk_rows // 4)
            for s in range(a, b, size):
                e = min(s + size, b)
                d = joint(qv, rows.words[:, s:e])
                if penalty is not None:
                    d += penalty[rows.labels[s:e]]
                yield s, d

        return chunks

    def search(
        self,
        rows: CodeRows,
        qw: npt.NDArray[np.uint64],
        k: int,
        pool: int,
        max_pool: int,
        penalties: list[npt.NDArray[np.int32] | None],
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Joint-distance search; see :meth:`storage.index.HashIndex.search`.

        ``qw`` is ``(nq, n_views, n_layers)`` uint64 query words; ``penalties``
        per query ``None`` or a ``(256,)`` int32 distance penalty per label.
        """
        nq = qw.shape[0]
        D = np.full((nq, k), -1, np.int32)
        nbr = np.full((nq, k), -1, np.int64)
        if rows.n == 0:
            return D, nbr
        ids = rows.live_ids()
        for i in range(nq):
            if pool:
                found, dists = self._coarse_pool(
                    rows, qw[i, 0, rows.coarse_layer], pool, penalties[i]
                )
                found = bounded_pool(found, dists, max_pool)
                distances = joint(qw[i], rows.words[:, found])
            else:
                found, distances = self._parallel_smallest(
                    self._joint_chunks(rows, qw[i], penalties[i]), rows.n, k, 64 * rows.n_layers
                )
            D[i], nbr[i] = top_k(distances, ids[found], k)
        return D, nbr
