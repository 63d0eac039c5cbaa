"""Packed multi-layer hash codes and Hamming search (STYLE G12).

Every nodule carries three ``K``-bit codes (``shallow``, ``middle``, ``deep``,
``K`` in 24/32/48/64) from ``ai.hashing``. A row of codes is ``code_size =
n_layers * ceil(K / 8)`` bytes: layer after layer, each layer's bits packed
MSB-first (``numpy.packbits``). In memory each layer is one ``uint64`` word per
nodule (zero-padded when ``K < 64``), one contiguous array per layer, so a
coarse pass reads 8 bytes per nodule.

Search follows the faiss contract: a batch of ``(nq, code_size)`` uint8 codes
in, ``(D, I)`` out, ``(nq, k)`` int32 distances and int64 ids, ``-1`` where
fewer than ``k`` nodules exist. The distance is the joint distance of the FCDN
paper (``shared/papers.md``)::

    D = min_v D_shallow(q_v, x) + D_middle(q_0, x) + min_v D_deep(q_v, x)

where ``v`` runs over the query's views (slices/ROIs) when a query is given as
``(nq, n_views, code_size)``; the middle (semantic) layer uses the reference
view 0, as the paper's ``DM`` has no minimum.

Coarse-to-fine (``pool > 0``): a pass over the coarse layer (default the
64-bit middle code) keeps the ``pool`` nearest nodules, plus every nodule tied
with the last of them (at most ``max_pool``, ties broken by insertion order);
the joint distance ranks that pool. ``pool=0`` ranks every nodule by the joint
distance (flat, exact). Each nodule may carry a small integer label (the
predicted size class): ``allowed_labels`` restricts a query to some labels,
the class filter of hierarchical retrieval; the coarse layer is also kept per
label, so a filtered coarse pass scans only the allowed labels' rows.
Results are sorted by ``(D, id)``, so the two backends (``"numpy"`` and
``"torch"``) and a save/load round trip give identical ``(D, I)``.

The numpy backend scans in cache-sized chunks with a shrinking distance
threshold and splits the rows over threads (numpy ufuncs release the GIL).
The torch backend computes popcounts by SWAR bit arithmetic; on CUDA the
distance kernel is fused with ``torch.compile``; on CPU it runs eagerly (for
tests). ``HashIndexRegistry`` keeps one index per model version.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from storage._hamming import (
    CHUNK_ROWS,
    ChunkFactory,
    LabelPartitions,
    bounded_pool,
    bytes_per_layer,
    pack_layers,
    smallest,
    top_k,
    unpack_layers,
)
from storage.errors import DuplicateIdError, HashIndexError, IndexFileError

__all__ = ["HashIndex", "HashIndexRegistry", "LAYERS", "pack_layers", "unpack_layers"]

logger = logging.getLogger(__name__)

LAYERS: tuple[str, ...] = ("shallow", "middle", "deep")
"""Layer order of a code row."""

Backend = Literal["numpy", "torch"]
_FORMAT_VERSION = 1
_BANNED = 1 << 16  # added to the distance of a nodule whose label is filtered out
_MODEL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _penalty(allowed: Iterable[int] | None) -> npt.NDArray[np.int32] | None:
    """Per-label distance penalty: 0 where allowed, ``_BANNED`` (beyond any distance) elsewhere."""
    if allowed is None:
        return None
    lut = np.full(256, _BANNED, np.int32)
    lut[np.asarray(list(allowed), dtype=np.int64)] = 0
    return lut


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(
    method: Callable[Concatenate[HashIndex, _P], _R],
) -> Callable[Concatenate[HashIndex, _P], _R]:
    """Run a method under the index's lock (searches wait for adds and removes)."""

    def wrapper(self: HashIndex, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(wrapper, method)
    return wrapper


class HashIndex:
    """Multi-layer binary codes with joint-distance Hamming search.

    Parameters
    ----------
    n_bits : int
        Bits per layer ``K`` (24, 32, 48 or 64 in practice; 1..64 accepted).
    n_layers : int
        Layers per code row; 3 (shallow, middle, deep) for the joint distance.
    coarse_layer : int
        Layer scanned by the coarse pass (default 1, the middle code).
    embedding_dim : int, optional
        Width of float32 embeddings kept for :meth:`search_reranked`.
    backend : {"numpy", "torch"}
        Where distances are computed.
    device : str
        torch device for the torch backend (``"cpu"``, ``"cuda"``).
    n_threads : int, optional
        numpy backend threads; default ``min(os.cpu_count(), 8)``.
    chunk_rows : int
        Rows per chunk of the numpy scan (each thread takes whole chunks).
    """

    def __init__(
        self,
        n_bits: int = 64,
        *,
        n_layers: int = 3,
        coarse_layer: int = 1,
        embedding_dim: int | None = None,
        backend: Backend = "numpy",
        device: str = "cpu",
        n_threads: int | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        if not 1 <= n_bits <= 64:
            raise ValueError(f"n_bits must be in 1..64, got {n_bits}")
        if n_layers < 1 or not 0 <= coarse_layer < n_layers:
            raise ValueError(f"bad n_layers={n_layers} / coarse_layer={coarse_layer}")
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        self.n_bits = n_bits
        self.n_layers = n_layers
        self.coarse_layer = coarse_layer
        self.embedding_dim = embedding_dim
        self.backend: Backend = backend
        self.device = device
        self.n_threads = max(1, n_threads or min(os.cpu_count() or 1, 8))
        self.chunk_rows = int(chunk_rows)
        self.code_size = n_layers * bytes_per_layer(n_bits)
        self._n = 0
        self._words = np.zeros((n_layers, 0), np.uint64)
        self._ids = np.zeros(0, np.int64)
        self._labels = np.zeros(0, np.uint8)
        self._parts = LabelPartitions()  # coarse words by label, for filtered searches
        self._emb: npt.NDArray[np.float32] | None = (
            np.zeros((0, embedding_dim), np.float32) if embedding_dim else None
        )
        self._sorted_ids = np.zeros(0, np.int64)  # ids ascending ...
        self._sorted_rows = np.zeros(0, np.int64)  # ... and their rows
        self._executor: ThreadPoolExecutor | None = None
        self._torch_state: Any = None  # torch backend mirror, built lazily
        self._lock = threading.RLock()  # add/remove/search/save from several threads

    # ------------------------------------------------------------------ content
    @property
    def ntotal(self) -> int:
        """Number of nodules in the index."""
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        """``(ntotal,)`` int64 ids in row order (a read-only view)."""
        view = self._ids[: self._n]
        view.flags.writeable = False
        return view

    def memory_bytes(self) -> int:
        """Bytes held for the live rows (codes, ids, id map, labels, partitions, embeddings)."""
        per = self.n_layers * 8 + 8 + 16 + 1 + 16
        if self._emb is not None:
            per += 4 * self._emb.shape[1]
        return per * self._n

    @_locked
    def reconstruct(self, ids: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Code rows ``(len(ids), code_size)`` uint8 of stored ids (``KeyError`` if absent)."""
        rows = self._rows_of(np.asarray(ids, np.int64), missing="raise")
        return unpack_layers(self._words[:, rows], self.n_bits)

    @_locked
    def add(
        self,
        ids: npt.ArrayLike,
        codes: npt.NDArray[np.uint8],
        embeddings: npt.NDArray[np.floating] | None = None,
        *,
        labels: npt.ArrayLike | None = None,
    ) -> None:
        """Add nodules.

        Parameters
        ----------
        ids : array_like
            ``(n,)`` int64 unique ids, not yet in the index.
        codes : numpy.ndarray
            ``(n, code_size)`` uint8 code rows.
        embeddings : numpy.ndarray, optional
            ``(n, embedding_dim)`` float32; required iff the index keeps embeddings.
        labels : array_like, optional
            ``(n,)`` integers 0..255 (e.g. the predicted size class) that
            ``search(..., allowed_labels=...)`` filters on; default 0.

        Raises
        ------
        DuplicateIdError
            If an id repeats or is already present (nothing is added).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        words = pack_layers(codes, self.n_bits, self.n_layers)
        n = ids.size
        if words.shape[1] != n:
            raise ValueError(f"{n} ids for {words.shape[1]} code rows")
        if (embeddings is None) != (self._emb is None):
            raise ValueError("embeddings must be given exactly when embedding_dim is set")
        if embeddings is not None and np.shape(embeddings) != (n, self.embedding_dim):
            raise ValueError(
                f"embeddings must be ({n}, {self.embedding_dim}), got {np.shape(embeddings)}"
            )
        lab = np.zeros(n, np.uint8) if labels is None else np.asarray(labels).reshape(-1)
        if lab.size != n or (lab.size and (lab.min() < 0 or lab.max() > 255)):
            raise ValueError(f"labels must be {n} integers in 0..255")
        new_sorted = np.sort(ids)
        dup = new_sorted[1:][new_sorted[1:] == new_sorted[:-1]]
        present = self._rows_of(ids, missing="skip")
        if dup.size or present.size:
            raise DuplicateIdError(sorted(set(dup.tolist()) | set(self._ids[present].tolist())))
        self._reserve(self._n + n)
        sl = slice(self._n, self._n + n)
        self._words[:, sl] = words
        self._ids[sl] = ids
        self._labels[sl] = lab
        if self._emb is not None and embeddings is not None:
            self._emb[sl] = embeddings
        rows = np.arange(self._n, self._n + n, dtype=np.int64)
        self._n += n
        self._merge_id_map(ids, rows)
        self._parts.add(lab.astype(np.uint8), words[self.coarse_layer], ids)
        self._torch_state = None
        logger.debug("hash index: added %d, total %d", n, self._n)

    @_locked
    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove nodules by id; unknown ids are ignored. Returns how many were removed.

        The last rows move into the holes, so removing is ``O(removed · log n)`` plus
        one pass over the id map.
        """
        rows = np.unique(self._rows_of(np.asarray(ids, np.int64).reshape(-1), missing="skip"))
        if rows.size == 0:
            return 0
        new_n = self._n - rows.size
        holes = rows[rows < new_n]
        tail = np.setdiff1d(np.arange(new_n, self._n), rows, assume_unique=True)
        # keep the id map consistent: drop removed ids, re-point moved ones
        removed_ids = np.sort(self._ids[rows])
        self._parts.remove(self._labels[rows], self._ids[rows])
        keep = ~np.isin(self._sorted_ids, removed_ids, assume_unique=True)
        self._sorted_ids, self._sorted_rows = self._sorted_ids[keep], self._sorted_rows[keep]
        if holes.size:
            self._words[:, holes] = self._words[:, tail]
            self._ids[holes] = self._ids[tail]
            self._labels[holes] = self._labels[tail]
            if self._emb is not None:
                self._emb[holes] = self._emb[tail]
            pos = np.searchsorted(self._sorted_ids, self._ids[holes])
            self._sorted_rows[pos] = holes
        self._n = new_n
        self._torch_state = None
        return int(rows.size)

    def _reserve(self, size: int) -> None:
        cap = self._ids.size
        if size <= cap:
            return
        cap = max(size, 2 * cap, 1024)
        words = np.zeros((self.n_layers, cap), np.uint64)
        words[:, : self._n] = self._words[:, : self._n]
        ids = np.zeros(cap, np.int64)
        ids[: self._n] = self._ids[: self._n]
        labels = np.zeros(cap, np.uint8)
        labels[: self._n] = self._labels[: self._n]
        self._words, self._ids, self._labels = words, ids, labels
        if self._emb is not None:
            emb = np.zeros((cap, self._emb.shape[1]), np.float32)
            emb[: self._n] = self._emb[: self._n]
            self._emb = emb

    def _merge_id_map(self, ids: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> None:
        order = np.argsort(ids, kind="stable")
        ids, rows = ids[order], rows[order]
        if self._sorted_ids.size == 0:
            self._sorted_ids, self._sorted_rows = ids, rows
            return
        pos = np.searchsorted(self._sorted_ids, ids)
        self._sorted_ids = np.insert(self._sorted_ids, pos, ids)
        self._sorted_rows = np.insert(self._sorted_rows, pos, rows)

    def _rows_of(
        self, ids: npt.NDArray[np.int64], *, missing: Literal["raise", "skip"]
    ) -> npt.NDArray[np.int64]:
        if self._sorted_ids.size == 0:
            if missing == "raise" and ids.size:
                raise KeyError(f"id {int(ids[0])} not in the hash index")
            return np.empty(0, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), self._sorted_ids.size - 1)
        found = self._sorted_ids[pos] == ids
        if missing == "raise" and not found.all():
            raise KeyError(f"id {int(ids[~found][0])} not in the hash index")
        rows: npt.NDArray[np.int64] = self._sorted_rows[pos[found]]
        return rows

    # ------------------------------------------------------------------ search
    def _query_words(self, queries: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
        q = np.asarray(queries, dtype=np.uint8)
        if q.ndim == 2:
            q = q[:, None, :]
        if q.ndim != 3 or q.shape[2] != self.code_size:
            raise ValueError(
                f"queries must be (nq, {self.code_size}) or (nq, n_views, {self.code_size}) "
                f"uint8, got {q.shape}"
            )
        nq, nv, _ = q.shape
        words = pack_layers(q.reshape(nq * nv, self.code_size), self.n_bits, self.n_layers)
        return words.reshape(self.n_layers, nq, nv).transpose(1, 2, 0).copy()  # (nq, nv, L)

    @_locked
    def search(
        self,
        queries: npt.NDArray[np.uint8],
        k: int,
        *,
        pool: int = 1000,
        max_pool: int | None = None,
        allowed_labels: Sequence[Iterable[int] | None] | None = None,
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Nearest nodules by joint Hamming distance.

        Parameters
        ----------
        queries : numpy.ndarray
            ``(nq, code_size)`` uint8, or ``(nq, n_views, code_size)`` for
            queries with several views (min over views, see the module docstring).
        k : int
            Neighbours per query.
        pool : int
            Coarse-pass pool size; ``0`` ranks every nodule (exact, flat).
        max_pool : int, optional
            Cap on the pool when many nodules tie (default ``8 * pool``).
        allowed_labels : sequence, optional
            Per query, the labels (given to :meth:`add`) a result may carry, or
            ``None`` for any: the class filter of hierarchical retrieval.

        Returns
        -------
        D : numpy.ndarray
            ``(nq, k)`` int32 joint distances, ascending; ``-1`` padding.
        I : numpy.ndarray
            ``(nq, k)`` int64 ids; ``-1`` padding.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qw = self._query_words(queries)
        max_pool = max_pool or 8 * max(pool, k)
        if pool and pool < k:
            pool = k
        if allowed_labels is not None and len(allowed_labels) != qw.shape[0]:
            raise ValueError(f"allowed_labels needs one entry per query ({qw.shape[0]})")
        penalties = [
            None if allowed_labels is None else _penalty(allowed_labels[i])
            for i in range(qw.shape[0])
        ]
        if self.backend == "torch":
            from storage import _index_torch

            if self._torch_state is None:
                self._torch_state = _index_torch.TorchCodes(
                    self._words[:, : self._n], self._labels[: self._n], self.device
                )
            return _index_torch.search(
                self._torch_state, self._ids[: self._n], qw, k, pool, max_pool, self.coarse_layer,
                penalties,
            )  # fmt: skip
        return self._search_numpy(qw, k, pool, max_pool, penalties)

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
        self, q: np.uint64, pool: int, penalty: npt.NDArray[np.int32] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """Rows and coarse distances within the ``pool``-th smallest (allowed labels only)."""
        if penalty is None:
            layer = self._words[self.coarse_layer]
            return self._parallel_smallest(self._coarse_chunks(layer, q), self._n, pool, 64)
        found_ids, found_d = [], []
        for label in np.flatnonzero(penalty == 0).tolist():
            words, ids = self._parts.part(label)
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
        return self._rows_of(ids_all, missing="raise"), d_all

    def _joint_chunks(
        self, qv: npt.NDArray[np.uint64], penalty: npt.NDArray[np.int32] | None
    ) -> ChunkFactory:
        def chunks(a: int, b: int) -> Iterator[tuple[int, npt.NDArray[np.integer]]]:
            size = max(1, self.chunk_rows // 4)
            for s in range(a, b, size):
                e = min(s + size, b)
                d = self._joint(qv, self._words[:, s:e])
                if penalty is not None:
                    d += penalty[self._labels[s:e]]
                yield s, d

        return chunks

    def _joint(
        self, qv: npt.NDArray[np.uint64], words: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.int32]:
        """Joint distances ``(m,)`` int32 of one query to a block of rows.

        ``qv`` is ``(n_views, n_layers)`` uint64, ``words`` ``(n_layers, m)`` uint64.
        """
        per = np.bitwise_count(words[None, :, :] ^ qv[:, :, None]).astype(np.int32)  # (V, L, m)
        if self.n_layers == 3:
            out: npt.NDArray[np.int32] = per[:, 0].min(axis=0) + per[0, 1] + per[:, 2].min(axis=0)
        else:
            out = per.min(axis=0).sum(axis=0)
        return out

    def _search_numpy(
        self,
        qw: npt.NDArray[np.uint64],
        k: int,
        pool: int,
        max_pool: int,
        penalties: list[npt.NDArray[np.int32] | None],
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        nq = qw.shape[0]
        D = np.full((nq, k), -1, np.int32)
        nbr = np.full((nq, k), -1, np.int64)
        if self._n == 0:
            return D, nbr
        ids = self._ids[: self._n]
        for i in range(nq):
            if pool:
                rows, dists = self._coarse_pool(qw[i, 0, self.coarse_layer], pool, penalties[i])
                rows = bounded_pool(rows, dists, max_pool)
                joint = self._joint(qw[i], self._words[:, rows])
            else:
                rows, joint = self._parallel_smallest(
                    self._joint_chunks(qw[i], penalties[i]), self._n, k, 64 * self.n_layers
                )
            D[i], nbr[i] = top_k(joint, ids[rows], k)
        return D, nbr

    @_locked
    def search_reranked(
        self,
        queries: npt.NDArray[np.uint8],
        query_embeddings: npt.NDArray[np.floating],
        k: int,
        *,
        shortlist: int = 100,
        pool: int = 1000,
        allowed_labels: Sequence[Iterable[int] | None] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Joint-distance shortlist, then rerank by squared L2 of the float embeddings.

        Parameters
        ----------
        queries : numpy.ndarray
            As in :meth:`search`.
        query_embeddings : numpy.ndarray
            ``(nq, embedding_dim)`` float32.
        k, shortlist, pool : int
            Results, joint-distance shortlist size, coarse pool size.
        allowed_labels : sequence, optional
            As in :meth:`search`.

        Returns
        -------
        D : numpy.ndarray
            ``(nq, k)`` float32 squared L2 distances, ascending; ``-1`` padding.
        I : numpy.ndarray
            ``(nq, k)`` int64 ids; ``-1`` padding.
        """
        if self._emb is None:
            raise HashIndexError("this index keeps no embeddings (embedding_dim is None)")
        qe = np.asarray(query_embeddings, np.float32)
        _, short = self.search(queries, max(shortlist, k), pool=pool, allowed_labels=allowed_labels)
        D = np.full((short.shape[0], k), -1, np.float32)
        nbr = np.full((short.shape[0], k), -1, np.int64)
        for i, cand in enumerate(short):
            cand = cand[cand >= 0]
            if cand.size == 0:
                continue
            emb = self._emb[self._rows_of(cand, missing="raise")]
            d2 = ((emb - qe[i]) ** 2).sum(axis=1)
            order = np.lexsort((cand, d2))[:k]
            D[i, : order.size], nbr[i, : order.size] = d2[order], cand[order]
        return D, nbr

    # ------------------------------------------------------------------ persistence
    @_locked
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` (``.npz``, no pickle) atomically."""
        path = Path(path)
        meta = {
            "format": _FORMAT_VERSION,
            "n_bits": self.n_bits,
            "n_layers": self.n_layers,
            "coarse_layer": self.coarse_layer,
            "embedding_dim": self.embedding_dim,
        }
        arrays: dict[str, npt.NDArray[Any]] = {
            "meta": np.array(json.dumps(meta)),
            "ids": self._ids[: self._n],
            "words": self._words[:, : self._n],
            "labels": self._labels[: self._n],
        }
        if self._emb is not None:
            arrays["embeddings"] = self._emb[: self._n]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        logger.info("hash index: saved %d nodules to %s", self._n, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, backend: Backend = "numpy", device: str = "cpu"
    ) -> HashIndex:
        """Read an index written by :meth:`save`.

        Raises
        ------
        IndexFileError
            If the file is missing, unreadable or of another format.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                ids, words, labels = z["ids"], z["words"], z["labels"]
                emb = z["embeddings"] if "embeddings" in z.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"cannot read hash index {path}: {exc}") from exc
        if meta.get("format") != _FORMAT_VERSION:
            raise IndexFileError(
                f"hash index {path} has format {meta.get('format')}, expected {_FORMAT_VERSION}"
            )
        index = cls(
            meta["n_bits"],
            n_layers=meta["n_layers"],
            coarse_layer=meta["coarse_layer"],
            embedding_dim=meta["embedding_dim"],
            backend=backend,
            device=device,
        )
        if words.shape != (index.n_layers, ids.size):
            raise IndexFileError(
                f"hash index {path}: words {words.shape} do not match {ids.size} ids"
            )
        index.add(ids, unpack_layers(words, index.n_bits), emb, labels=labels)
        return index


class HashIndexRegistry:
    """One :class:`HashIndex` per model version, saved as ``<root>/<version>.npz``.

    Parameters
    ----------
    root : path-like, optional
        Folder for :meth:`save_all` / :meth:`load_all`.
    index_kwargs
        Passed to every new :class:`HashIndex` (``n_bits``, ``backend``, ...).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, **index_kwargs: Any) -> None:
        self.root = Path(root) if root is not None else None
        self._kwargs = index_kwargs
        self._indexes: dict[str, HashIndex] = {}

    @staticmethod
    def _check(model_version: str) -> str:
        if not _MODEL_VERSION.match(model_version):
            raise ValueError(f"model version {model_version!r} must match {_MODEL_VERSION.pattern}")
        return model_version

    def __contains__(self, model_version: object) -> bool:
        return model_version in self._indexes

    def versions(self) -> Sequence[str]:
        """Model versions held, sorted."""
        return sorted(self._indexes)

    def get(self, model_version: str, *, create: bool = True) -> HashIndex:
        """The index of ``model_version``, created empty if needed.

        Raises ``KeyError`` if it is absent and ``create`` is false.
        """
        self._check(model_version)
        if model_version not in self._indexes:
            if not create:
                raise KeyError(f"no hash index for model version {model_version}")
            self._indexes[model_version] = HashIndex(**self._kwargs)
        return self._indexes[model_version]

    def drop(self, model_version: str) -> None:
        """Forget a model version (and delete its file when a root is set)."""
        self._indexes.pop(self._check(model_version), None)
        if self.root is not None:
            (self.root / f"{model_version}.npz").unlink(missing_ok=True)

    def save_all(self) -> None:
        """Save every index under ``root``."""
        if self.root is None:
            raise HashIndexError("registry has no root folder")
        self.root.mkdir(parents=True, exist_ok=True)
        for version, index in self._indexes.items():
            index.save(self.root / f"{version}.npz")

    def load_all(self) -> None:
        """Load every ``<version>.npz`` under ``root`` (replacing held indexes)."""
        if self.root is None:
            raise HashIndexError("registry has no root folder")
        backend = self._kwargs.get("backend", "numpy")
        device = self._kwargs.get("device", "cpu")
        for path in sorted(self.root.glob("*.npz")):
            version = self._check(path.stem)
            self._indexes[version] = HashIndex.load(path, backend=backend, device=device)
