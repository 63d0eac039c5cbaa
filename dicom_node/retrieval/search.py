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
from typing import Any

import numpy as np

from storage.catalog import Catalog
from storage.index import LAYERS, HashIndex

__all__ = ["Match", "OwnPrior", "Retriever", "SimilarStudy", "build_index"]

logger = logging.getLogger(__name__)


def build_index(catalog: Catalog, model_version: str, **index_kwargs: Any) -> HashIndex:
    """An index of every stored nodule of ``model_version`` (rebuilt at start).

    Parameters
    ----------
    catalog : Catalog
    model_version : str
    index_kwargs
        Passed to :class:`HashIndex` (``n_bits``, ``embedding_dim``, ``backend`` ...).
        ``n_bits`` and ``embedding_dim`` are read from the stored codes when absent.
    """
    index: HashIndex | None = None
    for batch in catalog.iter_codes(model_version):
        if index is None:
            first = batch[0]
            kwargs = {
                "n_bits": 8 * len(first["middle"]),
                "embedding_dim": len(first["embedding"]) // 4,
                **index_kwargs,
            }
            index = HashIndex(**kwargs)
        add_rows(index, batch)
    if index is None:
        index = HashIndex(**index_kwargs)
    logger.info("hash index for model %s: %d nodules", model_version, index.ntotal)
    return index


def add_rows(index: HashIndex, rows: list[dict[str, Any]]) -> None:
    """Add catalog nodule rows (``id``, codes, embedding, predicted class) to an index."""
    if not rows:
        return
    codes = np.stack(
        [np.frombuffer(b"".join(bytes(r[layer]) for layer in LAYERS), np.uint8) for r in rows]
    )
    embeddings = np.stack([np.frombuffer(bytes(r["embedding"]), np.float32) for r in rows])
    index.add(
        np.array([r["id"] for r in rows], np.int64),
        codes,
        labels=np.array([r["predicted_size_class"] for r in rows], np.uint8),
        embeddings=embeddings if index.embedding_dim else None,
    )


@dataclass(frozen=True)
class Match:
    """One similar nodule of another patient (or of the same patient, for priors)."""

    rank: int
    nodule_id: int
    distance: float
    """Joint Hamming distance (FCDN) of the three codes."""
    layer_distances: tuple[int, int, int]
    """Hamming distance per layer (shallow, middle, deep)."""
    driving_layer: str
    """The layer whose codes agree most (smallest distance relative to its length)."""
    embedding_distance: float
    """Squared L2 distance of the float embeddings (the rerank key)."""
    nodule: dict[str, Any]
    """The matched nodule's catalog row with its study (patient, date)."""


@dataclass(frozen=True)
class SimilarStudy:
    """A prior study of another patient, with its best-matching nodules."""

    rank: int
    study_instance_uid: str
    study_date: str | None
    patient_id: str | None
    distance: float
    """Best (smallest) match distance in the study."""
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class OwnPrior:
    """The same lesion in an earlier study of the same patient."""

    study_instance_uid: str
    study_date: str | None
    nodule: dict[str, Any]
    center_distance_mm: float
    growth_mm: float
    """Query diameter minus prior diameter."""
    growth_percent: float


def _hamming(a: bytes, b: bytes) -> int:
    x = np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)
    return int(np.unpackbits(x).sum())


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
        self, query: dict[str, Any], k: int = 10, *, exclude_patient_id: str | None = None
    ) -> list[Match]:
        """Nodules like ``query`` (a catalog nodule row), other patients only.

        Parameters
        ----------
        query : dict
            A nodule row (codes, embedding, predicted class).
        k : int
            Matches wanted.
        exclude_patient_id : str, optional
            Patient whose nodules never match (the query's own; pass it).
        """
        code = np.frombuffer(b"".join(bytes(query[layer]) for layer in LAYERS), np.uint8)[None]
        embedding = np.frombuffer(bytes(query["embedding"]), np.float32)[None]
        allowed = [self._allowed(int(query["predicted_size_class"]))]
        want = k
        while True:
            fetch = min(self.index.ntotal, want * 4 + 8)
            if fetch <= 0:
                return []
            if self.index.embedding_dim:
                _, neighbours = self.index.search_reranked(
                    code,
                    embedding,
                    fetch,
                    shortlist=max(self.shortlist, fetch),
                    pool=self.pool,
                    allowed_labels=allowed,
                )
            else:
                _, neighbours = self.index.search(
                    code, fetch, pool=self.pool, allowed_labels=allowed
                )
            ids = [int(i) for i in neighbours[0] if i >= 0 and int(i) != int(query.get("id", -1))]
            rows = self.catalog.nodules_by_id(ids)
            kept = [
                i
                for i in ids
                if i in rows
                and (exclude_patient_id is None or rows[i]["patient_id"] != exclude_patient_id)
            ]
            if len(kept) >= k or fetch >= self.index.ntotal:
                break
            want *= 4
        matches = []
        for rank, nodule_id in enumerate(kept[:k], start=1):
            row = rows[nodule_id]
            layer_d = tuple(_hamming(bytes(query[layer]), bytes(row[layer])) for layer in LAYERS)
            bits = 8 * len(bytes(query["middle"]))
            emb = np.frombuffer(bytes(row["embedding"]), np.float32)
            matches.append(
                Match(
                    rank=rank,
                    nodule_id=nodule_id,
                    distance=float(sum(layer_d)),
                    layer_distances=(int(layer_d[0]), int(layer_d[1]), int(layer_d[2])),
                    driving_layer=LAYERS[int(np.argmin(np.asarray(layer_d) / bits))],
                    embedding_distance=float(((emb - embedding[0]) ** 2).sum()),
                    nodule=row,
                )
            )
        return matches

    def similar_studies(
        self,
        queries: list[dict[str, Any]],
        k: int = 5,
        *,
        per_nodule: int = 10,
        exclude_patient_id: str | None = None,
    ) -> list[SimilarStudy]:
        """Prior studies of other patients ranked by their best nodule match."""
        by_study: dict[str, list[Match]] = {}
        for query in queries:
            for match in self.similar_nodules(
                query, per_nodule, exclude_patient_id=exclude_patient_id
            ):
                by_study.setdefault(match.nodule["study_instance_uid"], []).append(match)
        ranked = sorted(
            by_study.items(), key=lambda item: (min(m.embedding_distance for m in item[1]), item[0])
        )
        studies = []
        for rank, (uid, matches) in enumerate(ranked[:k], start=1):
            best = min(matches, key=lambda m: m.embedding_distance)
            studies.append(
                SimilarStudy(
                    rank=rank,
                    study_instance_uid=uid,
                    study_date=best.nodule.get("study_date"),
                    patient_id=best.nodule.get("patient_id"),
                    distance=best.distance,
                    matches=tuple(sorted(matches, key=lambda m: m.embedding_distance)),
                )
            )
        return studies

    def own_priors(
        self,
        query: dict[str, Any],
        patient_id: str | None,
        study_date: str | None,
        *,
        max_center_distance_mm: float = 30.0,
    ) -> list[OwnPrior]:
        """The same lesion in the patient's earlier studies (nearest centre, then embedding)."""
        if not patient_id:
            return []
        candidates = [
            row
            for row in self.catalog.nodules_of(
                model_version=self.model_version, patient_id=patient_id
            )
            if row["study_instance_uid"] != query["study_instance_uid"]
            and (study_date is None or (row["study_date"] or "") < study_date)
            and row["laterality"] == query["laterality"]
        ]
        centre = np.array([query["center_x"], query["center_y"], query["center_z"]])
        embedding = np.frombuffer(bytes(query["embedding"]), np.float32)
        best: dict[str, tuple[float, float, dict[str, Any]]] = {}
        for row in candidates:
            distance = float(
                np.linalg.norm(
                    np.array([row["center_x"], row["center_y"], row["center_z"]]) - centre
                )
            )
            if distance > max_center_distance_mm:
                continue
            emb = float(
                ((np.frombuffer(bytes(row["embedding"]), np.float32) - embedding) ** 2).sum()
            )
            key = row["study_instance_uid"]
            if key not in best or (distance, emb) < best[key][:2]:
                best[key] = (distance, emb, row)
        priors = []
        for uid, (distance, _, row) in sorted(
            best.items(), key=lambda item: item[1][2]["study_date"] or ""
        ):
            growth = float(query["diameter_mm"]) - float(row["diameter_mm"])
            priors.append(
                OwnPrior(
                    study_instance_uid=uid,
                    study_date=row["study_date"],
                    nodule=row,
                    center_distance_mm=distance,
                    growth_mm=growth,
                    growth_percent=100.0 * growth / max(float(row["diameter_mm"]), 1e-6),
                )
            )
        return priors


def query_rows(catalog: Catalog, model_version: str, **where: str) -> list[dict[str, Any]]:
    """Nodule rows (with study and patient) to use as queries."""
    return catalog.nodules_of(model_version=model_version, **where)
