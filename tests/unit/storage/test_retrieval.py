"""Retrieval over catalog rows and the hash index, with codes we control."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.retrieval.search import Retriever, build_index
from storage.catalog import Catalog, InstanceRecord
from tests.factories import near_code, nodule_row

VERSION = "test-model-1"


@pytest.fixture
def catalog(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
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
        catalog.record_instance(
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
                nodule_row(
                    index,
                    near_code(rng, centres[kind], 6),
                    embedding,
                    diameter_mm=diameter,
                    size_class=size_class,
                    center_xyz=(50.0, 0.0, -100.0) if kind == "big" else (-60.0, 0.0, -100.0),
                    laterality="left" if kind == "big" else "right",
                )
            )
        catalog.replace_nodules(study + ".9", VERSION, rows)
    yield catalog
    catalog.close()


def test_similar_nodules_exclude_the_query_patient_and_share_the_class(catalog) -> None:
    index = build_index(catalog, VERSION)
    assert index.ntotal == 8 and index.n_bits == 64 and index.embedding_dim == 16
    retriever = Retriever(catalog, index, VERSION)
    (query,) = [
        r
        for r in catalog.nodules_of(model_version=VERSION, study_instance_uid="1.2")
        if r["size_class"] == 6
    ]
    matches = retriever.similar_nodules(query, 2, exclude_patient_id="P1")
    assert [m.nodule["patient_id"] for m in matches] == ["P2", "P3"] or [
        m.nodule["patient_id"] for m in matches
    ] == ["P3", "P2"]
    assert all(m.nodule["size_class"] == 6 for m in matches)
    assert all(m.driving_layer in ("shallow", "middle", "deep") for m in matches)
    studies = retriever.similar_studies([query], 5, exclude_patient_id="P1")
    assert {s.study_instance_uid for s in studies} == {"2.1", "3.1"}


def test_own_priors_match_the_same_lesion_with_growth(catalog) -> None:
    retriever = Retriever(catalog, build_index(catalog, VERSION), VERSION)
    (query,) = [
        r
        for r in catalog.nodules_of(model_version=VERSION, study_instance_uid="1.2")
        if r["size_class"] == 6
    ]
    (prior,) = retriever.own_priors(query, "P1", "20220101")
    assert prior.study_instance_uid == "1.1"
    assert prior.growth_mm == pytest.approx(4.0) and prior.growth_percent == pytest.approx(20.0)


def test_replace_nodules_is_idempotent(catalog) -> None:
    rows = catalog.nodules_of(model_version=VERSION, series_instance_uid="2.1.9")
    fields = [
        {
            k: r[k]
            for k in r
            if k
            not in {
                "id",
                "series_instance_uid",
                "study_instance_uid",
                "model_version",
                "created_at",
                "patient_id",
                "study_date",
            }
        }
        for r in rows
    ]
    catalog.replace_nodules("2.1.9", VERSION, fields)
    assert len(catalog.nodules_of(model_version=VERSION, series_instance_uid="2.1.9")) == 2
