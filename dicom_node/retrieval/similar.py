"""Similar cases and same-patient priors: one function for the SR, the CLI and C-FIND.

:class:`SimilarityIndex` holds the in-memory hash index of the current model
version, kept current from the catalog (a snapshot, then the rows after it).
:func:`similar_cases` gives, for each nodule of a study or series, its most
similar nodules of *other* patients and the same lesion in the patient's
earlier studies; :func:`rank_studies` groups those matches into
similar prior studies (the similarity AE's folders).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.hashing.codes import LAYERS
from dicom_node.errors import IndexNotReady
from dicom_node.retrieval.search import Match, OwnPrior, Retriever, SimilarStudy
from storage.catalog import Catalog, CodeBatch, IndexCursor, NoduleRecord
from storage.errors import DuplicateIdError
from storage.index import HashIndex
from storage.index.snapshot import load_snapshot, save_snapshot, snapshot_folder

__all__ = ["NoduleCases", "SimilarityIndex", "rank_studies", "similar_cases"]

logger = logging.getLogger(__name__)


class SimilarityIndex:
    """The in-memory hash index of one model version, kept current from the catalog.

    It starts from the snapshot in ``snapshot_dir`` plus the catalog rows
    after it (:mod:`storage.index.snapshot`), or, with no snapshot, reads every
    nodule row of its version once and writes one. Then :meth:`sync` applies
    the rows added and removed since (the catalog's nodule cursor, see
    :mod:`storage.catalog.nodules`): the node's AI step calls it after storing
    a series, and :meth:`start` runs a thread that calls it every
    ``poll_seconds`` (rows written by other workers arrive within that time)
    and writes a new snapshot every ``snapshot_seconds`` while rows change,
    and at :meth:`stop`. The first load runs in that thread, before the node
    answers similarity queries: a query arriving during the load waits for it
    (at most ``wait_seconds``) and is never the one that builds the index.

    Parameters
    ----------
    catalog : Catalog
    model_version : str
    snapshot_dir : pathlib.Path, optional
        Where snapshots live (``data_dir/index``); None: none read or written.
    write_snapshots : bool
        False for readers of another process's snapshots (``dicom-node similar``).
    wait_seconds : float
        How long :attr:`index` waits for a load in progress.
    index_kwargs : mapping, optional
        Passed to :class:`storage.index.HashIndex` (``backend``, ``device`` ...);
        ``n_bits`` and ``embedding_dim`` come from the stored codes.
    """

    def __init__(
        self,
        catalog: Catalog,
        model_version: str,
        *,
        snapshot_dir: Path | None = None,
        write_snapshots: bool = True,
        wait_seconds: float = 60.0,
        index_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.catalog = catalog
        self.model_version = model_version
        self.snapshot_folder = (
            None if snapshot_dir is None else snapshot_folder(snapshot_dir, model_version)
        )
        self.write_snapshots = write_snapshots and snapshot_dir is not None
        self.wait_seconds = wait_seconds
        self._kwargs: dict[str, Any] = dict(index_kwargs or {})
        self._index: HashIndex | None = None
        self._cursor = IndexCursor()
        self._lock = threading.Lock()  # one load or sync at a time; held while snapshotting
        self._ready = threading.Event()
        self._loading = False
        self._unsaved = 0
        self._saved_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def index(self) -> HashIndex:
        """The index; waits for a load in progress, loads it here if none was started.

        Raises
        ------
        IndexNotReady
            A load in progress did not finish within ``wait_seconds``.
        """
        if not self._ready.is_set():
            if not self._loading:
                self.load()
            elif not self._ready.wait(self.wait_seconds):
                raise IndexNotReady(
                    f"the similarity index is still loading after {self.wait_seconds:.0f} s"
                )
        assert self._index is not None
        return self._index

    @property
    def cursor(self) -> IndexCursor:
        """The catalog position the index holds."""
        return self._cursor

    @property
    def ready(self) -> bool:
        """True once loaded."""
        return self._ready.is_set()

    def load(self) -> None:
        """Load from the snapshot plus the rows after it, or from every row (once)."""
        with self._lock:
            if self._ready.is_set():
                return
            self._loading = True
            started = time.perf_counter()
            snapshot = self._read_snapshot()
            if snapshot is not None:
                self._index, position = snapshot
                self._cursor = IndexCursor(**position)
                held = self._index.ntotal
                changed = self._sync_locked()
                how = f"snapshot of {held:,} nodules + {changed:,} changes since"
            else:
                head = self.catalog.nodules.cursor()
                self._apply(
                    self.catalog.nodules.iter_codes(
                        self.model_version, up_to_id=head.last_nodule_id
                    )
                )
                self._cursor = head
                self._unsaved = self._index.ntotal if self._index is not None else 0
                how = "every catalog row (no snapshot)"
            if self._index is None:
                self._index = HashIndex(**self._kwargs)
            self._ready.set()
            logger.info(
                "similarity index of model %s: %d nodules from %s in %.1f s",
                self.model_version,
                self._index.ntotal,
                how,
                time.perf_counter() - started,
            )
        if snapshot is None and self._unsaved:
            self.save_snapshot()

    def sync(self) -> int:
        """Apply the catalog rows added and removed since the cursor; return how many changed."""
        if not self._ready.is_set():
            self.load()
        with self._lock:
            return self._sync_locked()

    def _sync_locked(self) -> int:
        nodules = self.catalog.nodules
        head = nodules.cursor()
        added = self._apply(
            nodules.iter_codes(
                self.model_version,
                after_id=self._cursor.last_nodule_id,
                up_to_id=head.last_nodule_id,
            )
        )
        gone, last_removal = nodules.removed_after(self.model_version, self._cursor.last_removal)
        removed = self._index.remove(gone) if gone and self._index is not None else 0
        self._cursor = IndexCursor(
            max(head.last_nodule_id, self._cursor.last_nodule_id), last_removal
        )
        self._unsaved += added + removed
        if added or removed:
            logger.debug("similarity index: +%d -%d nodules", added, removed)
        return added + removed

    def _apply(self, batches: Iterable[CodeBatch]) -> int:
        """Add batches of catalog rows; ids already held are skipped (a replayed row)."""
        added = 0
        for batch in batches:
            index = self._index
            if index is None or (index.ntotal == 0 and not self._fits(index, batch)):
                index = self._index = HashIndex(**self._shape(batch), **self._kwargs)
            keep = np.ones(len(batch), bool)
            try:
                self._add(index, batch, keep)
            except DuplicateIdError as exc:
                keep = ~np.isin(batch.ids, np.asarray(exc.ids, np.int64))
                self._add(index, batch, keep)
            added += int(keep.sum())
        return added

    @staticmethod
    def _shape(batch: CodeBatch) -> dict[str, Any]:
        return {
            "n_bits": 8 * batch.codes.shape[1] // len(LAYERS),
            "embedding_dim": int(batch.embeddings.shape[1]),
        }

    def _fits(self, index: HashIndex, batch: CodeBatch) -> bool:
        shape = self._shape(batch)
        return bool(
            index.n_bits == shape["n_bits"] and index.embedding_dim == shape["embedding_dim"]
        )

    @staticmethod
    def _add(index: HashIndex, batch: CodeBatch, keep: npt.NDArray[np.bool_]) -> None:
        index.add(
            batch.ids[keep],
            batch.codes[keep],
            labels=batch.labels[keep],
            embeddings=batch.embeddings[keep] if index.embedding_dim else None,
        )

    def _read_snapshot(self) -> tuple[HashIndex, dict[str, int]] | None:
        if self.snapshot_folder is None:
            return None
        backend = self._kwargs.get("backend", "numpy")
        return load_snapshot(
            self.snapshot_folder, backend=backend, device=self._kwargs.get("device", "cpu")
        )

    def save_snapshot(self) -> bool:
        """Write a snapshot if there are changes since the last one; True if written."""
        if not self.write_snapshots or self.snapshot_folder is None or not self._ready.is_set():
            return False
        with self._lock:
            if not self._unsaved or self._index is None:
                return False
            started = time.perf_counter()
            save_snapshot(self._index, dataclasses.asdict(self._cursor), self.snapshot_folder)
            self._unsaved = 0
            self._saved_at = time.monotonic()
        logger.info(
            "similarity index snapshot: %d nodules in %.1f s",
            self._index.ntotal,
            time.perf_counter() - started,
        )
        return True

    def start(self, *, poll_seconds: float, snapshot_seconds: float) -> None:
        """Load in a thread, then follow the catalog every ``poll_seconds``."""
        self._loading = True
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._follow,
            args=(poll_seconds, snapshot_seconds),
            name="index-follower",
            daemon=True,
        )
        self._thread.start()

    def _follow(self, poll_seconds: float, snapshot_seconds: float) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                if time.monotonic() - self._saved_at >= snapshot_seconds:
                    self.save_snapshot()
            except Exception:  # noqa: BLE001 - the follower must outlive a failed poll
                logger.exception("following the catalog failed; retrying")
            self._stop.wait(poll_seconds)

    def stop(self) -> None:
        """Stop following and write a snapshot of what changed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.save_snapshot()
        except Exception:  # noqa: BLE001 - a failed snapshot costs a longer start, no data
            logger.exception("could not write the similarity index snapshot")

    def retriever(self, **kwargs: Any) -> Retriever:
        """A retriever over this index."""
        return Retriever(self.catalog, self.index, self.model_version, **kwargs)


@dataclass(frozen=True)
class NoduleCases:
    """One nodule with its similar cases and its own earlier measurements."""

    nodule: NoduleRecord
    similar: tuple[Match, ...]
    """Most similar nodules of other patients, best first."""
    priors: tuple[OwnPrior, ...]
    """The same lesion in the patient's earlier studies, oldest first."""


def similar_cases(
    retriever: Retriever,
    nodules: Sequence[NoduleRecord],
    *,
    matches_per_nodule: int,
    with_priors: bool = True,
) -> list[NoduleCases]:
    """Similar cases (other patients) and same-patient priors of each nodule.

    Parameters
    ----------
    retriever : Retriever
    nodules : sequence of NoduleRecord
        The query nodules (a series', a study's or one nodule); each carries
        its patient and study date, which exclude the patient's own studies
        from the similar cases and select the earlier ones as priors.
    matches_per_nodule : int
        Similar nodules per query nodule (``similarity.matches_per_nodule``).
    with_priors : bool
        Also look up the same lesion in the patient's earlier studies.
    """
    cases = []
    for nodule in nodules:
        similar = retriever.similar_nodules(
            nodule, matches_per_nodule, exclude_patient_id=nodule.patient_id
        )
        priors = (
            retriever.own_priors(nodule, nodule.patient_id, nodule.study_date)
            if with_priors
            else []
        )
        cases.append(NoduleCases(nodule, tuple(similar), tuple(priors)))
    return cases


def rank_studies(cases: Sequence[NoduleCases], k: int) -> list[SimilarStudy]:
    """The similar cases grouped by study, ranked by each study's best embedding distance."""
    by_study: dict[str, list[Match]] = {}
    for case in cases:
        for match in case.similar:
            by_study.setdefault(match.nodule.study_instance_uid, []).append(match)
    ranked = sorted(
        by_study.items(), key=lambda item: (min(m.embedding_distance for m in item[1]), item[0])
    )
    studies = []
    for rank, (uid, matches) in enumerate(ranked[:k], start=1):
        ordered = tuple(sorted(matches, key=lambda m: m.embedding_distance))
        best = ordered[0]
        studies.append(
            SimilarStudy(
                rank=rank,
                study_instance_uid=uid,
                study_date=best.nodule.study_date,
                patient_id=best.nodule.patient_id,
                distance=best.distance,
                matches=ordered,
            )
        )
    return studies
