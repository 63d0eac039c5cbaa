"""What a killed node leaves behind, picked up at the next start: orphans, late instances."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from dicom_node.cli import main
from dicom_node.processing.jobs import Outcome, SeriesJob
from dicom_node.results.identity import result_series_uid
from storage.catalog import ResultKind, SeriesState
from tests.factories import write_ct_series
from tests.peers import dcmtk, run_peer, wait_until

pytestmark = pytest.mark.integration


def _store(port: int, paths) -> None:
    sent = run_peer(
        [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(port), *map(str, paths)]
    )
    assert sent.returncode == 0, sent.stderr


def _killed(data_dir) -> None:
    """Make the lock record say what a SIGKILL leaves: no clean stop."""
    record = json.loads((data_dir / "node.lock").read_text())
    (data_dir / "node.lock").write_text(json.dumps({**record, "stopped_at": None}))


def _plant(instances, source, *, truncate: bool = False, series: str | None = None) -> str:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    relative = f"{ds.StudyInstanceUID}/{series or ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    target = instances / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    if truncate:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    return relative


def test_orphans_are_catalogued_or_removed_at_start_and_counted(
    tmp_path, make_settings, start_node, capsys
) -> None:
    settings = make_settings()
    first = start_node(settings)
    paths = write_ct_series(tmp_path / "s", 4)
    _store(first.port, paths[:2])
    first.stop()
    instances = settings.instances_dir
    # Renamed into place, never catalogued (the node died in between):
    valid = _plant(instances, paths[2])  # complete: catalogued
    other = write_ct_series(tmp_path / "t", 1, PatientID="OTHER")
    valid_new_series = _plant(instances, other[0])
    truncated = _plant(instances, paths[3], truncate=True)  # not valid: removed
    study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    ours = _plant(  # our own SR, never recorded: removed (made again with the same UID)
        instances,
        paths[0],
        series=result_series_uid(study, "record-only-1", ResultKind.SIMILARITY_SR),
    )
    _killed(settings.data_dir)

    second = start_node(settings)
    assert second.recovery["orphans_catalogued"] == 2 and second.recovery["orphans_removed"] == 2
    catalogued = set(second.catalog.intake.instance_paths().values())
    assert {valid, valid_new_series} <= catalogued and len(catalogued) == 4
    assert not (instances / truncated).exists() and not (instances / ours).exists()
    assert main(["status", "--data-dir", str(settings.data_dir), "--json"]) == 0
    node = json.loads(capsys.readouterr().out)["node"]
    assert node["last_start"]["orphans_catalogued"] == 2
    assert node["last_start"]["orphans_removed"] == 2
    assert node["log_file"].endswith("logs/dicom-node.log")
    assert main(["status", "--data-dir", str(settings.data_dir)]) == 0
    table = capsys.readouterr().out
    assert "2 orphan file(s) catalogued, 2 removed" in table and "node running (pid" in table

    second.stop()  # a clean stop: the next start reads nothing
    third = start_node(settings)
    assert third.recovery["series_scanned"] == 0


class Versioned:
    """A step that indexes a complete series, counting its runs."""

    name = "analysis"
    version = "model-a"
    requires = SeriesState.COMPLETE
    produces = SeriesState.INDEXED
    on_error = SeriesState.FAILED

    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, job: SeriesJob) -> Outcome:
        self.runs.append(len(job.series_instance_uid))
        return Outcome(SeriesState.INDEXED, f"run {len(self.runs)}")


def test_late_instance_then_restart_ends_processed(tmp_path, make_settings, start_node) -> None:
    paths = write_ct_series(tmp_path / "s", 3)
    step = Versioned()
    node = start_node(make_settings(), steps=[step])
    _store(node.port, paths[:2])
    uid = node.catalog.workflow.summaries()[0].series_instance_uid
    wait_until(lambda: node.catalog.workflow.series_state(uid)[0] is SeriesState.INDEXED)
    node.stop()
    # A late instance reopens the processed series, and the node stops before the
    # idle timer completes it (a long timer stands for "restarted right away").
    waiting = start_node(make_settings(series={"idle_seconds": 3600.0}), steps=[step])
    _store(waiting.port, paths[2:])
    assert waiting.catalog.workflow.series_state(uid)[0] is SeriesState.RECEIVING
    waiting.stop()
    # The restarted node completes it at start (idle long enough) and must process it
    # again although this model version's job finished before.
    restarted = start_node(make_settings(series={"idle_seconds": 0.0}), steps=[step])
    wait_until(
        lambda: restarted.catalog.workflow.series_state(uid) == (SeriesState.INDEXED, "run 2"),
        what="the late instance processed after the restart",
    )
    assert len(step.runs) == 2
