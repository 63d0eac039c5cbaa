"""Similar nodules and similar prior studies: the retrieval of DESIGN.md.

Hierarchical, coarse to fine (``shared/papers.md``): the query nodule's
predicted size class (and its neighbours) filters the index → a Hamming pool
on the middle code → the FCDN joint distance ranks the pool → the float
embedding reranks a shortlist → top ``k`` nodules → aggregated to studies.
The query patient's own studies are never among "other patients"; they are
returned apart (:meth:`Retriever.own_priors`), with the same lesion matched
across them and its growth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ai.hashing.codes import LAYERS
from ai.hashing.distance import joint_distance
from storage.catalog import Catalog, NoduleRecord
from storage.index import HashIndex

__all__ = ["Match", "OwnPrior", "Retriever", "SimilarStudy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """One similar nodule of another patient."""

    rank: int
    distance: float
    """Joint Hamming distance (FCDN) of the three codes."""
    layer_distances: tuple[int, ...]
    """Hamming distance per layer, in ``ai.hashing.codes.LAYERS`` order."""
    driving_layer: str
    """The layer whose codes agree most (smallest distance relative to its length)."""
    embedding_distance: float
    """Squared L2 distance of the float embeddings (the rerank key)."""
    nodule: NoduleRecord
    """The matched nodule with its study (patient, date)."""


@dataclass(frozen=True)
class SimilarStudy:
    """A prior study of another patient, with its best-matching nodules."""

    rank: int
    study_instance_uid: str
    study_date: str | None
    patient_id: str | None
    distance: float
    """Joint distance of the best (first) match."""
    matches: tuple[Match, ...]
    """Its matching nodules, best (smallest embedding distance) first."""


@dataclass(frozen=True)
class OwnPrior:
    """The same lesion in an earlier study of the same patient."""

    study_instance_uid: str
    study_date: str | None
    nodule: NoduleRecord
    center_distance_mm: float
    growth_mm: float
    """Query diameter minus prior diameter."""
    growth_percent: float


def _layer_distances(a: NoduleRecord, b: NoduleRecord) -> tuple[int, ...]:
    return tuple(
        int(
            np.bitwise_count(
                np.frombuffer(getattr(a, layer), np.uint8)
                ^ np.frombuffer(getattr(b, layer), np.uint8)
            ).sum()
        )
        for layer in LAYERS
    )


class Retriever:
    """Coarse-to-fine search over one model version's index.

    Parameters
    ----------
    catalog : Catalog
    index : HashIndex
    model_version : str
    pool : int
        Coarse-pass pool size (middle code).
    shortlist : int
        Joint-distance shortlist reranked by the embedding.
    class_neighbours : int
        Predicted size classes within this distance of the query's are
        allowed (0 = the predicted class only; -1 = no class filter).
    """

    def __init__(
        self,
        catalog: Catalog,
        index: HashIndex,
        model_version: str,
        *,
        pool: int = 1000,
        shortlist: int = 100,
        class_neighbours: int = 1,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.model_version = model_version
        self.pool = pool
        self.shortlist = shortlist
        self.class_neighbours = class_neighbours

    def _allowed(self, predicted: int) -> set[int] | None:
        if self.class_neighbours < 0:
            return None
        return {c for c in range(8) if abs(c - predicted) <= self.class_neighbours}

    def similar_nodules(
        self, query: NoduleRecord, k: int = 10, *, exclude_patient_id: str | None = None
    ) -> list[Match]:
        """Nodules like ``query``, other patients only.

        Parameters
        ----------
        query : NoduleRecord
        k : int
            Matches wanted.
        exclude_patient_id : str, optional
            Patient whose nodules never match (the query's own; pass it).
        """
        code = query.code_row()[None]
        embedding = query.embedding_vector()
        allowed = [self._allowed(query.predicted_size_class)]
        want = k
        while True:
            fetch = min(self.index.ntotal, want * 4 + 8)
            if fetch <= 0:
                return []
            if self.index.embedding_dim:
                _, neighbours = self.index.search_reranked(
                    code,
                    embedding[None],
                    fetch,
                    shortlist=max(self.shortlist, fetch),
                    pool=self.pool,
                    allowed_labels=allowed,
                )
            else:
                _, neighbours = self.index.search(
                    code, fetch, pool=self.pool, allowed_labels=allowed
                )
            ids = [int(i) for i in neighbours[0] if i >= 0 and int(i) != query.id]
            patients = self.catalog.nodules.patients_of(ids)
            kept = [
                i
                for i in ids
                if i in patients
                and (exclude_patient_id is None or patients[i] != exclude_patient_id)
            ]
            if len(kept) >= k or fetch >= self.index.ntotal:
                break
            want *= 4
        found = self.catalog.nodules.by_id(kept[:k])  # whole records only for the matches
        bits = 8 * len(query.middle)
        matches = []
        for rank, nodule_id in enumerate(kept[:k], start=1):
            nodule = found[nodule_id]
            per_layer = _layer_distances(query, nodule)
            matches.append(
                Match(
                    rank=rank,
                    distance=float(joint_distance(np.array(per_layer)[None])),
                    layer_distances=per_layer,
                    driving_layer=LAYERS[int(np.argmin(np.asarray(per_layer) / bits))],
                    embedding_distance=float(((nodule.embedding_vector() - embedding) ** 2).sum()),
                    nodule=nodule,
                )
            )
        return matches

    def own_priors(
        self,
        query: NoduleRecord,
        patient_id: str | None,
        study_date: str | None,
        *,
        max_center_distance_mm: float = 30.0,
    ) -> list[OwnPrior]:
        """The same lesion in the patient's earlier studies (nearest centre, then embedding)."""
        if not patient_id:
            return []
        candidates = [
            nodule
            for nodule in self.catalog.nodules.of(
                model_version=self.model_version, patient_id=patient_id
            )
            if nodule.study_instance_uid != query.study_instance_uid
            and (study_date is None or (nodule.study_date or "") < study_date)
            and nodule.laterality == query.laterality
        ]
        centre = np.array(query.center_xyz)
        embedding = query.embedding_vector()
        best: dict[str, tuple[float, float, NoduleRecord]] = {}
        for nodule in candidates:
            distance = float(np.linalg.norm(np.array(nodule.center_xyz) - centre))
            if distance > max_center_distance_mm:
                continue
            emb = float(((nodule.embedding_vector() - embedding) ** 2).sum())
            key = nodule.study_instance_uid
            if key not in best or (distance, emb) < best[key][:2]:
                best[key] = (distance, emb, nodule)
        priors = []
        for uid, (distance, _, nodule) in sorted(
            best.items(), key=lambda item: item[1][2].study_date or ""
        ):
            growth = query.diameter_mm - nodule.diameter_mm
            priors.append(
                OwnPrior(
                    study_instance_uid=uid,
                    study_date=nodule.study_date,
                    nodule=nodule,
                    center_distance_mm=distance,
                    growth_mm=growth,
                    growth_percent=100.0 * growth / max(nodule.diameter_mm, 1e-6),
                )
            )
        return priors
