"""The rows of a hash index in memory: packed code words, ids, labels, embeddings.

One ``uint64`` word per layer and nodule, one contiguous array per layer, so
a coarse pass reads 8 bytes per nodule; ids map to rows through a sorted id
array; the coarse layer is also kept per label (:class:`LabelPartitions`) so
that a search filtered by label scans only those rows. Removing a row moves
the last rows into the hole. Not thread-safe: :class:`storage.index.HashIndex`
holds the lock.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from storage.errors import DuplicateIdError
from storage.index.hamming import LabelPartitions, pack_layers

__all__ = ["CodeRows"]


class CodeRows:
    """Growable rows of ``n_layers`` code words, ids, labels and optional embeddings.

    Parameters
    ----------
    n_bits : int
        Bits per layer.
    n_layers : int
    coarse_layer : int
        Layer copied per label for filtered coarse passes.
    embedding_dim : int, optional
        Width of the float32 embeddings kept with the rows.
    """

    def __init__(
        self, n_bits: int, n_layers: int, coarse_layer: int, embedding_dim: int | None
    ) -> None:
        self.n_bits = n_bits
        self.n_layers = n_layers
        self.coarse_layer = coarse_layer
        self.n = 0
        self.words = np.zeros((n_layers, 0), np.uint64)
        self.ids = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.uint8)
        self.partitions = LabelPartitions()
        self.embeddings: npt.NDArray[np.float32] | None = (
            np.zeros((0, embedding_dim), np.float32) if embedding_dim else None
        )
        self._sorted_ids = np.zeros(0, np.int64)  # ids ascending ...
        self._sorted_rows = np.zeros(0, np.int64)  # ... and their rows

    def live_words(self) -> npt.NDArray[np.uint64]:
        """``(n_layers, n)`` words of the live rows."""
        return self.words[:, : self.n]

    def live_ids(self) -> npt.NDArray[np.int64]:
        """``(n,)`` ids of the live rows."""
        return self.ids[: self.n]

    def live_labels(self) -> npt.NDArray[np.uint8]:
        """``(n,)`` labels of the live rows."""
        return self.labels[: self.n]

    def add(
        self,
        ids: npt.NDArray[np.int64],
        codes: npt.NDArray[np.uint8],
        embeddings: npt.NDArray[np.floating] | None,
        labels: npt.NDArray[np.uint8],
    ) -> None:
        """Append rows (arguments checked by the caller; ids must be new).

        Raises
        ------
        DuplicateIdError
            If an id repeats or is already present (nothing is added).
        """
        words = pack_layers(codes, self.n_bits, self.n_layers)
        n = ids.size
        new_sorted = np.sort(ids)
        dup = new_sorted[1:][new_sorted[1:] == new_sorted[:-1]]
        present = self.rows_of(ids, missing="skip")
        if dup.size or present.size:
            raise DuplicateIdError(sorted(set(dup.tolist()) | set(self.ids[present].tolist())))
        self._reserve(self.n + n)
        sl = slice(self.n, self.n + n)
        self.words[:, sl] = words
        self.ids[sl] = ids
        self.labels[sl] = labels
        if self.embeddings is not None and embeddings is not None:
            self.embeddings[sl] = embeddings
        rows = np.arange(self.n, self.n + n, dtype=np.int64)
        self.n += n
        self._merge_id_map(ids, rows)
        self.partitions.add(labels, words[self.coarse_layer], ids)

    def remove(self, ids: npt.NDArray[np.int64]) -> int:
        """Remove rows by id; unknown ids are ignored. Returns how many were removed.

        The last rows move into the holes, so removing is ``O(removed · log n)``
        plus one pass over the id map.
        """
        rows = np.unique(self.rows_of(ids, missing="skip"))
        if rows.size == 0:
            return 0
        new_n = self.n - rows.size
        holes = rows[rows < new_n]
        tail = np.setdiff1d(np.arange(new_n, self.n), rows, assume_unique=True)
        # keep the id map consistent: drop removed ids, re-point moved ones
        removed_ids = np.sort(self.ids[rows])
        self.partitions.remove(self.labels[rows], self.ids[rows])
        keep = ~np.isin(self._sorted_ids, removed_ids, assume_unique=True)
        self._sorted_ids, self._sorted_rows = self._sorted_ids[keep], self._sorted_rows[keep]
        if holes.size:
            self.words[:, holes] = self.words[:, tail]
            self.ids[holes] = self.ids[tail]
            self.labels[holes] = self.labels[tail]
            if self.embeddings is not None:
                self.embeddings[holes] = self.embeddings[tail]
            pos = np.searchsorted(self._sorted_ids, self.ids[holes])
            self._sorted_rows[pos] = holes
        self.n = new_n
        return int(rows.size)

    def rows_of(
        self, ids: npt.NDArray[np.int64], *, missing: Literal["raise", "skip"]
    ) -> npt.NDArray[np.int64]:
        """Rows of ``ids``; unknown ids raise ``KeyError`` or are skipped."""
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

    def _reserve(self, size: int) -> None:
        cap = self.ids.size
        if size <= cap:
            return
        cap = max(size, 2 * cap, 1024)
        words = np.zeros((self.n_layers, cap), np.uint64)
        words[:, : self.n] = self.words[:, : self.n]
        ids = np.zeros(cap, np.int64)
        ids[: self.n] = self.ids[: self.n]
        labels = np.zeros(cap, np.uint8)
        labels[: self.n] = self.labels[: self.n]
        self.words, self.ids, self.labels = words, ids, labels
        if self.embeddings is not None:
            emb = np.zeros((cap, self.embeddings.shape[1]), np.float32)
            emb[: self.n] = self.embeddings[: self.n]
            self.embeddings = emb

    def _merge_id_map(self, ids: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> None:
        order = np.argsort(ids, kind="stable")
        ids, rows = ids[order], rows[order]
        if self._sorted_ids.size == 0:
            self._sorted_ids, self._sorted_rows = ids, rows
            return
        pos = np.searchsorted(self._sorted_ids, ids)
        self._sorted_ids = np.insert(self._sorted_ids, pos, ids)
        self._sorted_rows = np.insert(self._sorted_rows, pos, rows)
