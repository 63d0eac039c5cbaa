"""``dicom-node status`` and the pick-up of unfinished work at start."""

from __future__ import annotations

import json

import pytest

from dicom_node.cli import main
from storage.catalog import SeriesState
from tests.factories import PATIENT_ID, write_ct_series
from tests.peers import dcmtk, run_peer, wait_until

pytestmark = pytest.mark.integration


def _finished(node, series_uid: str, step) -> bool:
    job = node.catalog.workflow.job(series_uid, step.name, step.version)
    return job is not None and job.finished


def test_status_table_and_json_without_phi(tmp_path, make_settings, start_node, capsys) -> None:
    settings = make_settings()
    node = start_node(settings)
    paths = write_ct_series(tmp_path / "s", 3)
    assert (
        run_peer(
            [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, paths)]
        ).returncode
        == 0
    )
    series_uid = node.catalog.workflow.summaries()[0].series_instance_uid
    step = node.steps[0]
    wait_until(
        lambda: _finished(node, series_uid, step),
        what="the step ran on the completed series",
    )

    assert main(["status", "--data-dir", str(settings.data_dir), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    (row,) = document["series"]
    assert row["series_instance_uid"] == series_uid
    assert row["instance_count"] == 3 and row["modality"] == "CT" and row["state"] == "complete"
    assert set(row) >= {
        "study_instance_uid",
        "series_instance_uid",
        "modality",
        "instance_count",
        "state",
        "reason",
    }
    assert "patient_name" not in row

    assert main(["status", "--data-dir", str(settings.data_dir)]) == 0
    table = capsys.readouterr().out
    assert series_uid in table and "complete" in table
    assert PATIENT_ID not in table and "Doe" not in table

    assert main(["status", "--data-dir", str(settings.data_dir), "--show-phi"]) == 0
    assert PATIENT_ID in capsys.readouterr().out


def test_complete_but_unprocessed_work_is_picked_up_at_start(
    tmp_path, make_settings, start_node
) -> None:
    paths = write_ct_series(tmp_path / "s", 2)
    first = start_node(make_settings(worker={"threads": 0}))  # receives, never processes
    assert (
        run_peer(
            [
                dcmtk("storescu"),
                "-aec",
                "DICOM_NODE",
                "127.0.0.1",
                str(first.port),
                *map(str, paths),
            ]
        ).returncode
        == 0
    )
    series_uid = first.catalog.workflow.summaries()[0].series_instance_uid
    wait_until(
        lambda: first.catalog.workflow.series_state(series_uid)[0] is SeriesState.COMPLETE,
        what="complete",
    )
    # Pretend the node died while processing: the state says processing.
    first.catalog.workflow.transition(series_uid, SeriesState.PROCESSING)
    first.stop()

    second = start_node(make_settings())
    wait_until(
        lambda: _finished(second, series_uid, second.steps[0]),
        what="interrupted series processed after restart",
    )
    assert second.catalog.workflow.series_state(series_uid)[0] is SeriesState.COMPLETE


def test_reindex_queues_processed_series_for_the_new_model(
    tmp_path, make_settings, start_node, capsys
) -> None:
    from dicom_node.processing.jobs import Outcome, SeriesJob

    class Versioned:
        """A step that indexes; its version stands for the model's."""

        name = "analysis"
        requires = SeriesState.COMPLETE
        produces = SeriesState.INDEXED
        on_error = SeriesState.FAILED

        def __init__(self, version: str) -> None:
            self.version = version
            self.runs: list[str] = []

        def run(self, job: SeriesJob) -> Outcome:
            self.runs.append(job.series_instance_uid)
            return Outcome(SeriesState.INDEXED, f"by {self.version}")

    settings = make_settings()
    first = Versioned("model-a")
    node = start_node(settings, steps=[first])
    paths = write_ct_series(tmp_path / "s", 2)
    assert (
        run_peer(
            [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, paths)]
        ).returncode
        == 0
    )
    uid = node.catalog.workflow.summaries()[0].series_instance_uid
    wait_until(
        lambda: node.catalog.workflow.series_state(uid) == (SeriesState.INDEXED, "by model-a"),
        what="indexed",
    )
    node.stop()

    # A new model: reindex (another process), then a node with the new version picks it up.
    assert main(["reindex", "--data-dir", str(settings.data_dir)]) == 0
    assert "1 series queued" in capsys.readouterr().out
    second = Versioned("model-b")
    start_node(settings, steps=[second])
    wait_until(lambda: second.runs == [uid], what="re-processed with the new version")
    assert main(["reindex", "--data-dir", str(settings.data_dir), "--states", "bogus"]) == 2
