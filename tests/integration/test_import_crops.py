"""``dicom-node import-crops``: crops become reference studies, their nodules given and indexed.

On a folder laid out like ``lidc-nodules`` made from phantom patches (six
patients, one nodule each): catalog rows, files dcmtk reads, the nodules in
the index, a similar-case query cut beside each crop's nodule finding that
crop first, a second import changing nothing, and the worker encoding the
given nodules (not detecting) when the series is queued again for another
model. A last test imports the real crops (skipped without ``../shared/data``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

import numpy as np
import pytest
import sqlalchemy as sa

from ai.pipeline import encode_at
from ai.readers.lidc_crops import read_nodule_table
from ai.volume import read_image
from dicom_node.cli import main
from dicom_node.model import load_model
from dicom_node.retrieval.similar import SimilarityIndex, similar_cases
from storage.catalog import Catalog, JobState, NoduleRecord, SeriesState
from storage.catalog.schema import instances, jobs, nodule_removals, nodules, results, series
from tests.factories import lidc_like_folder
from tests.peers import dcmtk

pytestmark = pytest.mark.integration

CROPS = 6


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory: pytest.TempPathFactory):
    return lidc_like_folder(tmp_path_factory.mktemp("crops"), count=CROPS, seed=3)


def _counts(catalog: Catalog) -> dict[str, int]:
    with catalog.engine.begin() as connection:
        return {
            table.name: int(
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            )
            for table in (series, instances, nodules, nodule_removals, jobs, results)
        }


def _import(data_dir, folder, *extra: str) -> int:
    return main(
        [
            "import-crops",
            "--data-dir",
            str(data_dir),
            "--nodules",
            str(folder),
            "--no-progress",
            *extra,
        ]
    )


def _query(nodule: NoduleRecord, codes, thumbnails, i: int) -> NoduleRecord:
    """A query nodule of another patient with the codes of ROI ``i``."""
    return dataclasses.replace(
        nodule,
        id=-1,
        patient_id="QUERY-PATIENT",
        patient_name="Query^Patient",
        study_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.4.5",
        predicted_size_class=int(codes.size_class[i]),
        shallow=codes.shallow[i].tobytes(),
        middle=codes.middle[i].tobytes(),
        deep=codes.deep[i].tobytes(),
        embedding=codes.embedding[i].astype("float32").tobytes(),
        thumbnail=thumbnails[i].tobytes(),
    )


def test_crops_become_reference_studies_found_first_and_imported_once(
    tmp_path, crops_dir, capsys
) -> None:
    data_dir = tmp_path / "data"
    assert _import(data_dir, crops_dir, "--exclude-patient", "PHANTOM-CROP-05") == 0
    assert "5 crops imported" in capsys.readouterr().out
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite3'}", create=False)
    try:
        model = load_model("")
        assert model is not None
        version = model.version
        summaries = catalog.workflow.summaries()
        assert len(summaries) == 5
        assert {s.state for s in summaries} == {SeriesState.REFERENCE}
        assert {s.patient_id for s in summaries} == {f"PHANTOM-CROP-{i:02d}" for i in range(5)}
        assert all(s.instance_count == 24 for s in summaries), summaries
        assert all("LIDC-IDRI reference crop" in (s.series_description or "") for s in summaries)
        first = _counts(catalog)
        assert first == {
            "series": 5, "instances": 120, "nodules": 5, "nodule_removals": 0, "jobs": 5,
            "results": 0,
        }  # fmt: skip
        for s in summaries:
            job = catalog.workflow.job(s.series_instance_uid, "analysis", version)
            assert job is not None and job.state is JobState.DONE
        # dcmtk reads the stored files
        path = (
            data_dir
            / "instances"
            / catalog.workflow.series_instance_paths(summaries[0].series_instance_uid)[0]
        )
        dump = subprocess.run(
            [dcmtk("dcmdump"), str(path)],
            capture_output=True, text=True, check=True, env={**os.environ, "TCP_NODELAY": "1"},
        ).stdout  # fmt: skip
        assert "CTImageStorage" in dump and "(0028,0103) US 1" in dump
        assert "CC BY 3.0" in dump

        # every crop's nodule in the index; a query cut 1 mm beside it finds it first
        index = SimilarityIndex(catalog, version)
        index.load()
        assert len(index.index) == 5
        table = {n.patient_id: n for n in read_nodule_table(crops_dir)}
        stored = catalog.nodules.of(model_version=version)
        assert len(stored) == 5
        retriever = index.retriever()
        for record in stored:
            crop = table[record.patient_id]
            np.testing.assert_allclose(record.center_xyz, crop.center_xyz, atol=1e-6)
            volume = read_image(crop.image)
            beside = np.asarray(crop.center_xyz) + np.array([1.0, 0.0, 0.0])
            _, codes, thumbnails = encode_at(volume, None, beside[None], model.net)
            (case,) = similar_cases(
                retriever, [_query(record, codes, thumbnails, 0)], matches_per_nodule=3,
                with_priors=False,
            )  # fmt: skip
            assert case.similar[0].nodule.id == record.id, (
                record.patient_id,
                [m.nodule.patient_id for m in case.similar],
            )

        # importing twice changes nothing; the excluded patient comes in alone
        assert _import(data_dir, crops_dir, "--exclude-patient", "PHANTOM-CROP-05") == 0
        assert "0 crops imported (0 new instances), 5 already indexed" in capsys.readouterr().out
        assert _counts(catalog) == first
        assert _import(data_dir, crops_dir) == 0
        assert "1 crops imported (24 new instances), 5 already indexed" in capsys.readouterr().out
        assert _counts(catalog)["nodules"] == 6
    finally:
        catalog.close()


def test_a_new_model_encodes_the_given_nodules_and_detects_nothing(
    tmp_path, crops_dir, make_settings, tiny_model_dir, capsys
) -> None:
    from dicom_node.app import Node

    data_dir = tmp_path / "data"
    assert _import(data_dir, crops_dir) == 0
    capsys.readouterr()
    settings = make_settings(data_dir=data_dir, worker={"model_dir": str(tiny_model_dir)})
    assert main(["reindex", "--data-dir", str(data_dir)]) == 0
    assert f"{CROPS} series queued" in capsys.readouterr().out
    node = Node(settings)
    try:
        new_version = node.steps[0].version
        for uid in list(node.runner.pending()):
            node.runner.run(uid)
        summaries = node.catalog.workflow.summaries()
        assert {s.state for s in summaries} == {SeriesState.REFERENCE}, summaries
        assert all("given nodule(s) encoded with " + new_version in s.reason for s in summaries)
        renewed = node.catalog.nodules.of(model_version=new_version)
        table = {n.patient_id: n for n in read_nodule_table(crops_dir)}
        assert len(renewed) == CROPS
        for record in renewed:
            np.testing.assert_allclose(
                record.center_xyz, table[record.patient_id].center_xyz, atol=1e-6
            )
        counts = _counts(node.catalog)
        assert counts["nodules"] == 2 * CROPS  # each version's own rows
        assert counts["results"] == 0  # no results step ran on them
        assert node.runner.pending() == []
    finally:
        node.stop()


# 595 crops read, written and encoded: minutes on 2 shared cores, past the default 300 s.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_real_crops_import_with_the_readers_nodule_of_lidc_0001(
    tmp_path, lidc_nodules_dir, capsys
) -> None:
    data_dir = tmp_path / "data"
    assert _import(data_dir, lidc_nodules_dir) == 0
    out = capsys.readouterr().out
    total = len(read_nodule_table(lidc_nodules_dir))
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite3'}", create=False)
    try:
        version = load_model("").version  # type: ignore[union-attr]
        stored = catalog.nodules.of(model_version=version)
        imported = catalog.reference.series_count()
        assert f"{imported} reference series in the catalog" in out
        assert len(stored) == imported >= total - 5, out  # crop_rois leaves out the same few
        (query,) = [n for n in stored if n.patient_id == "LIDC-IDRI-0001"]
        (crop,) = [
            n for n in read_nodule_table(lidc_nodules_dir) if n.patient_id == query.patient_id
        ]
        np.testing.assert_allclose(query.center_xyz, crop.center_xyz, atol=1e-6)
        # the equivalent diameter of the readers' mask, counted here: 24.9 mm (nodules.csv
        # gives 23.4 mm, its own definition); class >23 mm either way
        mask = read_image(crop.mask)
        voxels = int(np.count_nonzero(np.asarray(mask.array) > 0))
        diameter = (6.0 * voxels * float(np.prod(mask.spacing)) / np.pi) ** (1.0 / 3.0)
        assert query.diameter_mm == pytest.approx(diameter, rel=1e-9)
        assert query.size_class == 7 and query.texture == "solid"
    finally:
        catalog.close()
