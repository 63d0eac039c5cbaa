"""Similar cases and same-patient priors: one function for the SR, the CLI and C-FIND.

:class:`SimilarityIndex` holds the in-memory hash index of the current model
version. :func:`similar_cases` gives, for each nodule of a study or series,
its most similar nodules of *other* patients and the same lesion in the
patient's earlier studies; :func:`rank_studies` groups those matches into
similar prior studies (the similarity AE's folders).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dicom_node.retrieval.search import (
    Match,
    OwnPrior,
    Retriever,
    SimilarStudy,
    add_records,
    build_index,
)
from storage.catalog import Catalog, NoduleRecord
from storage.index import HashIndex

__all__ = ["NoduleCases", "SimilarityIndex", "rank_studies", "similar_cases"]

logger = logging.getLogger(__name__)


class SimilarityIndex:
    """The in-memory hash index of the current model version, built from the catalog.

    Parameters
    ----------
    catalog : Catalog
    model_version : str
    index_factory : callable, optional
        Makes the index (default: rebuilt from the catalog with :func:`build_index`).
    """

    def __init__(
        self,
        catalog: Catalog,
        model_version: str,
        *,
        index_factory: Callable[[Catalog, str], HashIndex] = build_index,
    ) -> None:
        self.catalog = catalog
        self.model_version = model_version
        self._factory = index_factory
        self._index: HashIndex | None = None
        self._lock = threading.Lock()

    @property
    def index(self) -> HashIndex:
        """The index, built on first use."""
        with self._lock:
            if self._index is None:
                self._index = self._factory(self.catalog, self.model_version)
            return self._index

    def replace_series(self, old_ids: Sequence[int], new: Sequence[NoduleRecord]) -> None:
        """Swap a re-processed series' nodules in the index."""
        index = self.index  # built from the catalog on first use: may hold the new ones already
        present = set(index.ids.tolist())
        gone = [i for i in old_ids if i in present]
        if gone:
            index.remove(gone)
        # SQLite reuses the ids of deleted rows: a new nodule may carry an old id
        # just removed, and must be added back.
        present.difference_update(gone)
        add_records(index, [n for n in new if n.id not in present])

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
