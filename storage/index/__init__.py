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
paper (``shared/papers.md``, :mod:`ai.hashing.distance`)::

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

One contract, two symmetric backends behind it, each a module with the same
``search(rows, queries, k, pool, max_pool, penalties)``:
:mod:`storage.index.numpy_backend` (threaded chunked popcount scans) and
:mod:`storage.index.torch_backend` (SWAR popcount on a device copy, fused by
``torch.compile`` on CUDA). The rows live in :mod:`storage.index.rows`;
:meth:`HashIndex.save` and :meth:`HashIndex.load` persist them (``.npz``, no
pickle). The joint distance itself is :func:`ai.hashing.distance.joint_distance`,
the one the training metrics and retrieval use.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from ai.hashing.codes import LAYERS
from storage.errors import HashIndexError, IndexFileError
from storage.index.hamming import CHUNK_ROWS, bytes_per_layer, pack_layers, unpack_layers
from storage.index.numpy_backend import NumpyBackend
from storage.index.rows import CodeRows

__all__ = ["LAYERS", "Backend", "HashIndex", "SearchBackend", "pack_layers", "unpack_layers"]

logger = logging.getLogger(__name__)

Backend = Literal["numpy", "torch"]
_FORMAT_VERSION = 1
_BANNED = 1 << 16  # added to the distance of a nodule whose label is filtered out


class SearchBackend(Protocol):
    """What a backend does: search the rows (and forget any copy when they change)."""

    def search(
        self,
        rows: CodeRows,
        qw: npt.NDArray[np.uint64],
        k: int,
        pool: int,
        max_pool: int,
        penalties: list[npt.NDArray[np.int32] | None],
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """``(D, I)`` for ``(nq, n_views, n_layers)`` query words."""
        ...

    def invalidate(self) -> None:
        """The rows changed."""
        ...


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

    Notes
    -----
    A code row holds the layers of :data:`ai.hashing.codes.LAYERS` in order.
    """

    def __init__(
        self,
        n_bits: int = 64,
        *,
        coarse_layer: int = 1,
        embedding_dim: int | None = None,
        backend: Backend = "numpy",
        device: str = "cpu",
        n_threads: int | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        n_layers = len(LAYERS)
        if not 1 <= n_bits <= 64:
            raise ValueError(f"n_bits must be in 1..64, got {n_bits}")
        if not 0 <= coarse_layer < n_layers:
            raise ValueError(f"coarse_layer must be in 0..{n_layers - 1}, got {coarse_layer}")
        self.n_bits = n_bits
        self.n_layers = n_layers
        self.coarse_layer = coarse_layer
        self.embedding_dim = embedding_dim
        self.code_size = n_layers * bytes_per_layer(n_bits)
        self.backend: Backend = backend
        self.device = device
        self._rows = CodeRows(n_bits, n_layers, coarse_layer, embedding_dim)
        self._backend: SearchBackend
        if backend == "numpy":
            self._backend = NumpyBackend(
                max(1, n_threads or min(os.cpu_count() or 1, 8)), int(chunk_rows)
            )
        elif backend == "torch":
            from storage.index.torch_backend import TorchBackend

            self._backend = TorchBackend(device)
        else:
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        self._lock = threading.RLock()  # add/remove/search/save from several threads

    # ------------------------------------------------------------------ content
    @property
    def ntotal(self) -> int:
        """Number of nodules in the index."""
        return self._rows.n

    def __len__(self) -> int:
        return self._rows.n

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        """``(ntotal,)`` int64 ids in row order (a read-only view)."""
        view = self._rows.live_ids()
        view.flags.writeable = False
        return view

    def memory_bytes(self) -> int:
        """Bytes held for the live rows (codes, ids, id map, labels, partitions, embeddings)."""
        per = self.n_layers * 8 + 8 + 16 + 1 + 16
        if self.embedding_dim:
            per += 4 * self.embedding_dim
        return per * self._rows.n

    @_locked
    def reconstruct(self, ids: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Code rows ``(len(ids), code_size)`` uint8 of stored ids (``KeyError`` if absent)."""
        rows = self._rows.rows_of(np.asarray(ids, np.int64), missing="raise")
        return unpack_layers(self._rows.words[:, rows], self.n_bits)

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
        n = ids.size
        codes = np.asarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[0] != n:
            raise ValueError(f"{n} ids for code rows of shape {codes.shape}")
        if (embeddings is None) != (self.embedding_dim is None):
            raise ValueError("embeddings must be given exactly when embedding_dim is set")
        if embeddings is not None and np.shape(embeddings) != (n, self.embedding_dim):
            raise ValueError(
                f"embeddings must be ({n}, {self.embedding_dim}), got {np.shape(embeddings)}"
            )
        lab = np.zeros(n, np.uint8) if labels is None else np.asarray(labels).reshape(-1)
        if lab.size != n or (lab.size and (lab.min() < 0 or lab.max() > 255)):
            raise ValueError(f"labels must be {n} integers in 0..255")
        self._rows.add(ids, codes, embeddings, lab.astype(np.uint8))
        self._backend.invalidate()
        logger.debug("hash index: added %d, total %d", n, self._rows.n)

    @_locked
    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove nodules by id; unknown ids are ignored. Returns how many were removed."""
        removed = self._rows.remove(np.asarray(ids, np.int64).reshape(-1))
        if removed:
            self._backend.invalidate()
        return removed

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
        return self._backend.search(self._rows, qw, k, pool, max_pool, penalties)

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
        stored = self._rows.embeddings
        if stored is None:
            raise HashIndexError("this index keeps no embeddings (embedding_dim is None)")
        qe = np.asarray(query_embeddings, np.float32)
        _, short = self.search(queries, max(shortlist, k), pool=pool, allowed_labels=allowed_labels)
        D = np.full((short.shape[0], k), -1, np.float32)
        nbr = np.full((short.shape[0], k), -1, np.int64)
        for i, cand in enumerate(short):
            cand = cand[cand >= 0]
            if cand.size == 0:
                continue
            emb = stored[self._rows.rows_of(cand, missing="raise")]
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
            "ids": self._rows.live_ids(),
            "words": self._rows.live_words(),
            "labels": self._rows.live_labels(),
        }
        if self._rows.embeddings is not None:
            arrays["embeddings"] = self._rows.embeddings[: self._rows.n]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        logger.info("hash index: saved %d nodules to %s", self._rows.n, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, backend: Backend = "numpy", device: str = "cpu"
    ) -> HashIndex:
        """Read an index written by :meth:`save` (with either backend).

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
        if meta.get("format") != _FORMAT_VERSION or meta.get("n_layers") != len(LAYERS):
            raise IndexFileError(
                f"hash index {path} has format {meta.get('format')} with "
                f"{meta.get('n_layers')} layers, expected {_FORMAT_VERSION} with {len(LAYERS)}"
            )
        index = cls(
            meta["n_bits"],
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
