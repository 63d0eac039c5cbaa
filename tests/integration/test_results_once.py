"""Each result once: one SR and one montage per study and model version, replaced when changed.

A phantom study of patient A is processed and its results are received by
dcmtk storescp; reprocessing with unchanged content sends nothing;
``reindex`` without ``--send-results`` keeps a changed revision in the node;
``reindex --send-results`` sends it, and the PACS can tell which SR and which
montage are current.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from ai.phantom import TEST_GEOMETRY, write_cohort
from dicom_node.cli import main
from storage.catalog import DeliveryState, SeriesState
from tests.peers import dcmtk, free_port, run_peer, start_storescp, wait_until

pytestmark = pytest.mark.integration

SR = "1.2.840.10008.5.1.4.1.1.88.34"
MONTAGE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[Path]:
    """Two patients with one study each: the study folders, A's first."""
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(
        out, patients=2, seed=11, studies_per_patient=1, geometry=TEST_GEOMETRY, anatomy_scale=0.6
    )
    return sorted(p for p in (out / "dicom").glob("*/*") if p.is_dir())


def _received(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]


@pytest.mark.timeout(900)  # five processing rounds of two phantom studies, on a loaded machine
def test_reprocessed_study_leaves_one_current_sr_and_montage_at_the_pacs(
    tmp_path, cohort, tiny_model_dir, make_settings, start_node, capsys
) -> None:
    port = free_port()
    pacs_dir = tmp_path / "pacs"
    pacs = start_storescp(port, pacs_dir, unique_files=True)  # a resend: a second file
    try:
        settings = make_settings(
            worker={"model_dir": str(tiny_model_dir)},
            qualification={"min_lung_volume_ml": 100.0},
            outbox={"destinations": [f"PACS@127.0.0.1:{port}"]},
        )
        node = start_node(settings, steps=None)
        workflow, deliveries = node.catalog.workflow, node.catalog.deliveries

        def send(folder: Path) -> str:
            sent = run_peer(
                [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
                + ["+sd", "+r", str(folder)],
                timeout=300,
            )
            assert sent.returncode == 0, sent.stderr[-2000:]
            series = pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True)
            return str(series.SeriesInstanceUID)

        def settle(uids: list[str], since: float) -> None:
            """Wait until each series ran its results step after ``since`` and all is sent."""

            def done() -> bool:
                for uid in uids:
                    job = workflow.job(uid, "results", node.steps[-1].version)
                    if job is None or job.finished_at is None or job.finished_at < since:
                        return False
                return all(d.state is not DeliveryState.PENDING for d in deliveries.in_states())

            wait_until(done, timeout=240, what="results step run and deliveries settled")

        def reindex(*flags: str) -> float:
            since = time.time()
            assert main(["reindex", "--data-dir", str(settings.data_dir), *flags]) == 0
            node.workers.wake()  # running workers would within worker.poll_seconds
            return since

        a = send(cohort[0])
        settle([a], 0.0)
        assert workflow.series_state(a)[0] is SeriesState.REPORTED
        first = _received(pacs_dir)
        assert sorted(str(ds.SOPClassUID) for ds in first) == [MONTAGE, SR]

        # Reprocessed, nothing changed: nothing is made, nothing is sent.
        settle([a], reindex("--send-results"))
        assert "results unchanged (revision 1)" in workflow.series_state(a)[1]
        assert len(list(pacs_dir.iterdir())) == 2

        # B arrives: A's similar cases change, but reindex without --send-results
        # keeps A's new revision in the node.
        b = send(cohort[1])
        settle([b], 0.0)
        assert len(list(pacs_dir.iterdir())) == 4
        settle([a, b], reindex())
        assert "revision 2 kept, not sent" in workflow.series_state(a)[1]
        assert "results unchanged (revision 1)" in workflow.series_state(b)[1]
        assert len(list(pacs_dir.iterdir())) == 4

        # Asked to send: the changed revision goes, what the PACS has does not.
        settle([a, b], reindex("--send-results"))
        settle([a, b], reindex("--send-results"))  # and again: nothing more
    finally:
        pacs.terminate()
        pacs.wait()

    received = _received(pacs_dir)
    assert len(received) == 6
    assert len({ds.SOPInstanceUID for ds in received}) == 6, "an object was sent twice"
    study_a = pydicom.dcmread(next(cohort[0].rglob("*.dcm")), stop_before_pixels=True)
    of_a = [ds for ds in received if ds.StudyInstanceUID == study_a.StudyInstanceUID]
    srs = [ds for ds in of_a if ds.SOPClassUID == SR]
    montages = sorted(
        (ds for ds in of_a if ds.SOPClassUID == MONTAGE), key=lambda ds: ds.InstanceNumber
    )
    # The SR: two revisions in one series; the current one names the one it replaces.
    assert len(srs) == 2 and len({ds.SeriesInstanceUID for ds in srs}) == 1
    replaced = {
        item.ReferencedSOPInstanceUID
        for ds in srs
        for study in ds.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    current = [ds for ds in srs if ds.SOPInstanceUID not in replaced]
    assert len(current) == 1 and current[0].InstanceNumber == 2
    assert replaced == {ds.SOPInstanceUID for ds in srs if ds.InstanceNumber == 1}
    # The montage: two revisions in one series, the later one saying what it replaces.
    assert [int(ds.InstanceNumber) for ds in montages] == [1, 2]
    assert len({ds.SeriesInstanceUID for ds in montages}) == 1
    assert montages[0].SOPInstanceUID in montages[1].ImageComments
    # The node lists only the current revisions under the study.
    assert main(["status", "--data-dir", str(settings.data_dir)]) == 0
    table = capsys.readouterr().out
    assert table.count("similar-case SR revision 2") == 1
    assert table.count("result  similar-case SR") == 2  # A's revision 2 and B's revision 1


def test_the_test_pacs_keeps_a_second_receipt_of_an_object_as_a_second_file(tmp_path) -> None:
    """The tests above count deliveries by the files of ``start_storescp(unique_files=True)``:
    an object sent twice must leave two files (dcmtk's ``-uf`` would overwrite the first)."""
    from pydicom.uid import generate_uid

    from tests.factories import ct_slice

    path = tmp_path / "one.dcm"
    ct_slice(0, study_instance_uid=generate_uid(), series_instance_uid=generate_uid()).save_as(
        path, enforce_file_format=True
    )
    port = free_port()
    pacs = start_storescp(port, tmp_path / "pacs", unique_files=True)
    try:
        for _ in range(2):
            run_peer([dcmtk("storescu"), "-aec", "PACS", "127.0.0.1", str(port), str(path)],
                     check=True)  # fmt: skip
    finally:
        pacs.terminate()
        pacs.wait()
    assert len(list((tmp_path / "pacs").iterdir())) == 2
