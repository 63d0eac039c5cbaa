"""A phantom cohort sent by dcmtk storescu to a running node, processed to indexed nodules.

The hashing network here is a small untrained one written to a model folder
the way ``dicom-node train`` writes it: these tests check the plumbing
(states, catalog rows, index, queries). Retrieval quality is tested with the
shipped model in tests/integration/test_retrieval_quality.py.
"""

from __future__ import annotations

import json

import pydicom
import pytest

from ai.phantom import TEST_GEOMETRY, write_cohort
from dicom_node.cli import main
from dicom_node.retrieval.priors import same_patient_priors
from storage.catalog import DeliveryState, SeriesState
from tests.factories import write_ct_series
from tests.peers import dcmtk, free_port, run_peer, start_storescp, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(
        out, patients=2, seed=11, studies_per_patient=2, geometry=TEST_GEOMETRY, anatomy_scale=0.6
    )
    return out


# Five series through the real AI step, then one again: minutes on a loaded 2-core machine.
@pytest.mark.timeout(2400)
def test_cohort_is_reported_to_the_pacs_and_a_short_series_skipped(
    tmp_path, cohort, tiny_model_dir, make_settings, start_node, capsys
) -> None:
    pacs_port = free_port()
    received = tmp_path / "pacs"
    pacs = start_storescp(pacs_port, received)
    try:
        settings = make_settings(
            worker={"model_dir": str(tiny_model_dir)},
            qualification={"min_lung_volume_ml": 100.0},
            outbox={"destinations": [f"PACS@127.0.0.1:{pacs_port}"]},
        )
        node = start_node(settings, steps=None)  # the AI and results steps, from worker.model_dir
        short = write_ct_series(tmp_path / "short", 5)
        sent = run_peer(
            [
                dcmtk("storescu"),
                "-aec",
                "DICOM_NODE",
                "127.0.0.1",
                str(node.port),
                "+sd",
                "+r",
                str(cohort / "dicom"),
                str(short[0].parent),
            ],
            timeout=300,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]

        def ct_series():
            return node.catalog.workflow.summaries()

        def settled() -> bool:
            states = [s.state for s in ct_series()]
            done = (
                SeriesState.REPORTED,
                SeriesState.INDEXED,
                SeriesState.SKIPPED,
                SeriesState.FAILED,
            )
            return len(states) == 5 and all(s in done for s in states)

        wait_until(settled, timeout=1500, what="every CT series processed")
        wait_until(
            lambda: (
                all(d.state is DeliveryState.DONE for d in node.catalog.deliveries.in_states())
                and len(node.catalog.deliveries.in_states()) >= 4
            ),
            timeout=60,
            what="results delivered to the PACS",
        )
    finally:
        pacs.terminate()
        pacs.wait()
    summaries = {s.series_instance_uid: s for s in ct_series()}
    skipped = [s for s in summaries.values() if s.state is SeriesState.SKIPPED]
    indexed = [s for s in summaries.values() if s.state is SeriesState.REPORTED]
    assert len(indexed) == 4, [(s.state, s.reason) for s in summaries.values()]
    assert [s.reason for s in skipped] == ["5 images, fewer than 40"]
    version = node.steps[0].version
    for series in indexed:
        assert series.reason and "nodules" in series.reason
        assert node.catalog.nodules.ids_of_series(series.series_instance_uid, version)
        # Reported at the operating point with their FPR probability, and the
        # compact image kept for registering the patient's later scans.
        stored = node.catalog.nodules.of(
            model_version=version, series_instance_uid=series.series_instance_uid
        )
        assert all(
            n.confidence >= settings.worker.min_nodule_probability
            and n.diameter_mm >= settings.worker.min_nodule_diameter_mm
            for n in stored
        )
        assert node.catalog.nodules.registration_image(series.series_instance_uid)
    # Each patient's follow-up lies moved on the table: its nodules are paired
    # with the prior's after registration.
    followed = []
    for series in indexed:
        nodules = node.catalog.nodules.of(
            model_version=version, series_instance_uid=series.series_instance_uid
        )
        followed += [
            p for ps in same_patient_priors(node.catalog, version, nodules).values() for p in ps
        ]
    assert followed and all(p.registered for p in followed)
    assert node.similarity_index is not None
    assert node.similarity_index.index.ntotal == sum(
        len(node.catalog.nodules.ids_of_series(s.series_instance_uid, version)) for s in indexed
    )
    # The PACS got an SR and a key-image montage per reported series, once each,
    # in the index study.
    objects = sorted(received.iterdir())
    datasets = [pydicom.dcmread(p) for p in objects]
    classes = sorted(str(ds.SOPClassUID) for ds in datasets)
    assert classes == ["1.2.840.10008.5.1.4.1.1.7"] * 4 + ["1.2.840.10008.5.1.4.1.1.88.34"] * 4
    assert len({ds.SOPInstanceUID for ds in datasets}) == 8
    assert {ds.StudyInstanceUID for ds in datasets} == {s.study_instance_uid for s in indexed}
    # Each SR names the false-positive reduction model and thresholds that chose its findings.
    fpr_version = node.runner.steps[0].fpr.version
    for ds in datasets:
        if ds.Modality == "SR":
            parameters = {
                element.value for element in ds.iterall() if element.keyword == "TextValue"
            }
            assert f"false-positive reduction model {fpr_version}" in parameters, parameters
    # A PACS forwarding the whole study sends them back: acknowledged, kept as
    # results of their study, never a series of their own.
    echo = run_peer(
        [
            dcmtk("storescu"),
            "-R",  # propose the contexts of the files (Comprehensive 3D SR is not a default)
            "-aec",
            "DICOM_NODE",
            "127.0.0.1",
            str(node.port),
            *map(str, objects),
        ]
    )
    assert echo.returncode == 0, echo.stderr
    assert sorted(s.series_instance_uid for s in node.catalog.workflow.summaries()) == sorted(
        summaries
    )
    assert node.catalog.workflow.series_in_states([SeriesState.RECEIVING]) == []

    # Status shows the skip reason, and our SR and key images as results of their
    # studies (delivered), not as series; similar answers by study, never with
    # the query patient.
    assert main(["status", "--data-dir", str(settings.data_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    reasons = {r["series_instance_uid"]: r["reason"] for r in status["series"]}
    assert set(reasons) == set(summaries)
    assert reasons[skipped[0].series_instance_uid] == "5 images, fewer than 40"
    results = status["results"]
    assert sorted(r["kind"] for r in results) == ["key-images"] * 4 + ["similarity-sr"] * 4
    assert {r["source_series_instance_uid"] for r in results} == {
        s.series_instance_uid for s in indexed
    }
    assert all(
        r["deliveries"] == [{"destination": f"PACS@127.0.0.1:{pacs_port}", "state": "done"}]
        for r in results
    )
    assert main(["status", "--data-dir", str(settings.data_dir)]) == 0
    table = capsys.readouterr().out
    assert table.count("result  similar-case SR (series #") == 4
    assert "skipped" in table and "modality SR" not in table
    study = indexed[0].study_instance_uid
    png = tmp_path / "gallery.png"
    assert (
        main(
            [
                "similar",
                "--data-dir",
                str(settings.data_dir),
                "--study",
                study,
                "--json",
                "--png",
                str(png),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["model_version"] == version and report["nodules"]
    query_patient = node.catalog.intake.study(study).patient_id
    matched_studies = {m["study_instance_uid"] for n in report["nodules"] for m in n["matches"]}
    assert matched_studies and all(
        node.catalog.intake.study(uid).patient_id != query_patient for uid in matched_studies
    )
    assert png.stat().st_size > 10_000

    # Reprocessing the same series (same model version) replaces, never duplicates, its nodules.
    before = node.similarity_index.index.ntotal
    uid = indexed[0].series_instance_uid
    moved = node.catalog.workflow.requeue(  # what dicom-node reindex does
        [uid], [SeriesState.REPORTED], send_results=False, reason="queued again by the test"
    )
    assert moved == 1
    node.workers.wake()
    wait_until(
        lambda: node.catalog.workflow.series_state(uid)[0] is SeriesState.REPORTED,
        timeout=300,
        what="re-indexed",
    )
    assert node.similarity_index.index.ntotal == before
