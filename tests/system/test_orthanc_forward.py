"""Beside a real Orthanc configured by deploy/orthanc/: auto-forward in, results back.

Phantom studies are uploaded to Orthanc over REST; the Lua script forwards
their CT series to the node when each study is stable; the node processes
them and its outbox stores the SR and key images into Orthanc, which makes
the studies stable again without forwarding their CT a second time.
"""

from __future__ import annotations

import time

import pytest

from ai.phantom import TEST_GEOMETRY, write_cohort
from storage.catalog import SeriesState
from tests.orthanc import start_orthanc
from tests.peers import free_port, wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_orthanc_forwards_ct_and_gets_the_sr_and_key_images_back(
    tmp_path, tiny_model_dir, make_settings, start_node
) -> None:
    cohort = tmp_path / "cohort"
    write_cohort(
        cohort, patients=2, seed=5, studies_per_patient=1, geometry=TEST_GEOMETRY, anatomy_scale=0.6
    )
    files = sorted((cohort / "dicom").rglob("*.dcm"))
    node_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", node_port=node_port)
    try:
        settings = make_settings(
            port=node_port,
            worker={"model_dir": str(tiny_model_dir)},
            qualification={"min_lung_volume_ml": 100.0},
            outbox={"destinations": [f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]},
        )
        node = start_node(settings, steps=None)
        started = time.monotonic()
        assert orthanc.upload(files) == len(files)
        studies = orthanc.get("studies")
        assert len(studies) == 2

        def modalities(study: str) -> list[str]:
            return sorted(
                s["MainDicomTags"]["Modality"] for s in orthanc.get(f"studies/{study}/series")
            )

        wait_until(
            lambda: all(modalities(s) == ["CT", "OT", "SR"] for s in studies),
            timeout=240,
            what="SR and key images of both studies in Orthanc",
        )
        elapsed = time.monotonic() - started
        print(
            f"\n{len(files)} CT instances of 2 studies uploaded to Orthanc -> forwarded -> "
            f"processed -> SR and key images in Orthanc: {elapsed:.1f} s"
        )
        # The results made each study stable again: the script saw it and sent nothing.
        wait_until(
            lambda: orthanc.log().count("no CT series left to forward") >= 2,
            timeout=30,
            what="both studies stable again after the results",
        )
    finally:
        orthanc.stop()
    log = orthanc.log()
    assert log.count("CT series forwarded (job") == 2, log[-3000:]
    # Every CT instance reached the node once; the node's own objects never came back.
    summaries = node.catalog.workflow.summaries()
    assert sorted(s.modality for s in summaries) == ["CT", "CT"]
    assert sum(s.instance_count for s in summaries) == len(files)
    assert all(s.state is SeriesState.REPORTED for s in summaries), summaries
