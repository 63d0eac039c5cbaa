"""Retrieval over catalog rows and the hash index, with codes we control."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.retrieval.search import Retriever
from dicom_node.retrieval.similar import SimilarityIndex, rank_studies, similar_cases
from storage.catalog import InstanceRecord
from tests.factories import near_code, new_nodule

VERSION = "test-model-1"


@pytest.fixture
def archive(catalog):
    """Four studies of three patients; P1 has a prior (1.1) of the index study (1.2)."""
    rng = np.random.default_rng(0)
    centres = {
        "big": rng.integers(0, 2, 192, dtype=np.uint8),
        "small": rng.integers(0, 2, 192, dtype=np.uint8),
    }
    studies = [
        ("P1", "20200101", "1.1"),
        ("P1", "20220101", "1.2"),
        ("P2", "20210101", "2.1"),
        ("P3", "20210505", "3.1"),
    ]
    for patient, date, study in studies:
        catalog.intake.record_instance(
            InstanceRecord(
                study,
                study + ".9",
                study + ".9.1",
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.840.10008.1.2.1",
                "x",
                1,
                "0" * 64,
                patient_id=patient,
                study_date=date,
                modality="CT",
            )
        )
        rows = []
        for index, (kind, diameter, size_class) in enumerate(
            (("big", 20.0 if study != "1.2" else 24.0, 6), ("small", 4.0, 1))
        ):
            embedding = np.eye(16, dtype=np.float32)[0 if kind == "big" else 1] + rng.normal(
                0, 0.01, 16
            )
            rows.append(
                new_nodule(
                    index,
                    near_code(rng, centres[kind], 6),
                    embedding,
                    diameter_mm=diameter,
                    size_class=size_class,
                    center_xyz=(50.0, 0.0, -100.0) if kind == "big" else (-60.0, 0.0, -100.0),
                    laterality="left" if kind == "big" else "right",
                )
            )
        catalog.nodules.replace(study + ".9", VERSION, rows)
    return catalog


def _big_query(catalog):
    (query,) = [
        n
        for n in catalog.nodules.of(model_version=VERSION, study_instance_uid="1.2")
        if n.size_class == 6
    ]
    return query


def test_similar_cases_exclude_the_query_patient_and_share_the_class(archive) -> None:
    catalog = archive
    index = SimilarityIndex(catalog, VERSION).index
    assert index.ntotal == 8 and index.n_bits == 64 and index.embedding_dim == 16
    retriever = Retriever(catalog, index, VERSION)
    query = _big_query(catalog)
    (case,) = similar_cases(retriever, [query], matches_per_nodule=2)
    assert case.nodule == query
    assert sorted(m.nodule.patient_id for m in case.similar) == ["P2", "P3"]
    assert all(m.nodule.size_class == 6 for m in case.similar)
    assert all(m.driving_layer in ("shallow", "middle", "deep") for m in case.similar)
    assert all(m.distance == sum(m.layer_distances) for m in case.similar)  # one view
    # The same lesion in the patient's earlier study, with its growth.
    (prior,) = case.priors
    assert prior.study_instance_uid == "1.1"
    assert prior.growth_mm == pytest.approx(4.0) and prior.growth_percent == pytest.approx(20.0)
    studies = rank_studies(similar_cases(retriever, [query], matches_per_nodule=10), 5)
    assert {s.study_instance_uid for s in studies} == {"2.1", "3.1"}
    assert [s.rank for s in studies] == [1, 2]


def test_replace_nodules_is_idempotent_and_returns_what_it_stored(archive) -> None:
    catalog = archive
    import dataclasses

    from storage.catalog import NewNodule

    stored = catalog.nodules.of(model_version=VERSION, series_instance_uid="2.1.9")
    again = catalog.nodules.replace(
        "2.1.9",
        VERSION,
        [
            NewNodule(**{f.name: getattr(n, f.name) for f in dataclasses.fields(NewNodule)})
            for n in stored
        ],
    )
    assert catalog.nodules.of(model_version=VERSION, series_instance_uid="2.1.9") == again
    assert [n.id for n in again] != [n.id for n in stored]
    assert all(n.patient_id == "P2" and n.study_date == "20210101" for n in again)
