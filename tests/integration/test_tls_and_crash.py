"""DICOM TLS with dcmtk, and a node killed with SIGKILL in the middle of a transfer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from storage.catalog import Catalog, SeriesState
from tests.factories import dataset_bytes, write_ct_series
from tests.peers import PEER_ENV, dcmtk, run_peer, wait_until
from tests.pki import make_pki, tls_security

pytestmark = pytest.mark.integration


def test_tls_association_with_client_certificate(tmp_path, make_settings, start_node) -> None:
    pki = make_pki(tmp_path)
    node = start_node(make_settings(security=tls_security(pki)))
    tls = ["+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca_crt"])]
    echo = run_peer(
        [dcmtk("echoscu"), "-v", *tls, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
    )
    assert echo.returncode == 0, echo.stderr
    paths = write_ct_series(tmp_path / "s", 3)
    store = run_peer(
        [
            dcmtk("storescu"),
            *tls,
            "-aec",
            "DICOM_NODE",
            "127.0.0.1",
            str(node.port),
            *map(str, paths),
        ]
    )
    assert store.returncode == 0, store.stderr
    assert node.catalog.intake.instance_count() == 3
    # Plain DICOM on the TLS port fails, and so does TLS without a client certificate.
    plain = run_peer(
        [dcmtk("echoscu"), "-to", "5", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
    )
    assert plain.returncode != 0
    anonymous = run_peer(
        [
            dcmtk("echoscu"),
            "-to",
            "5",
            "+tla",
            "+cf",
            str(pki["ca_crt"]),
            "-aec",
            "DICOM_NODE",
            "127.0.0.1",
            str(node.port),
        ]
    )
    assert anonymous.returncode != 0
    # The node is still up after the failed handshakes.
    assert (
        run_peer(
            [dcmtk("echoscu"), *tls, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
        ).returncode
        == 0
    )


def _acknowledged(storescu_output: str) -> list[str]:
    """Files that storescu -v saw acknowledged with Success, in order."""
    acknowledged, current = [], None
    for line in storescu_output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged


def test_sigkill_during_transfer_loses_no_acknowledged_instance(tmp_path, node_process) -> None:
    paths = write_ct_series(tmp_path / "s", 150, rows=256, columns=256)
    # No processing: what is checked here is the store, and a pipeline run on
    # these noise slices would depend on the machine's load (it once stored an SR).
    node = node_process(
        env={
            "DICOM_NODE_SERIES_IDLE_SECONDS": "1",
            "DICOM_NODE_STORAGE_MIN_FREE_MB": "0",
            "DICOM_NODE_WORKER_THREADS": "0",
        }
    )
    node.start()
    catalog = Catalog(f"sqlite:///{node.data_dir / 'catalog.sqlite3'}")
    sender = subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aec",
            "DICOM_NODE",
            "127.0.0.1",
            str(node.port),
            *map(str, paths),
        ],
        env=PEER_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: catalog.intake.instance_count() >= 40, what="40 instances catalogued")
        node.kill()
    finally:
        output, _ = sender.communicate(timeout=60)
    acknowledged = _acknowledged(output)
    # storescu waits for each response before it sends the next instance, so
    # with 40 catalogued the sender has had at least 39 answers; the 40th may
    # have been on its way when the node was killed.
    assert 39 <= len(acknowledged) < 150, output[-2000:]

    node.start()  # restart on the same data directory
    stored = catalog.intake.instance_paths()
    instances_dir = node.data_dir / "instances"
    for path in acknowledged:
        sop_instance_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop_instance_uid in stored, f"acknowledged instance {path} lost"
        kept = instances_dir / stored[sop_instance_uid]
        assert dataset_bytes(kept) == dataset_bytes(Path(path))
        assert pydicom.dcmread(kept).pixel_array.shape == (256, 256)  # readable
    # After the start, every file is catalogued: one renamed into place but not
    # yet catalogued when the node was killed was adopted (or removed) at start.
    visible = {p.relative_to(instances_dir).as_posix() for p in instances_dir.rglob("*.dcm")}
    assert visible == set(stored.values()), "orphan files or catalog rows without files"
    assert not list((instances_dir / ".tmp").rglob("*.part")), "partial files left at start"
    assert node.runtime()["recovery"]["series_scanned"] == 1  # it looked (the node was killed)
    # One instance at most was in flight: not written, written but not catalogued
    # (adopted at start), or catalogued but its response never sent.
    assert len(acknowledged) <= len(stored) <= len(acknowledged) + 1
    (summary,) = catalog.workflow.summaries()
    wait_until(
        lambda: (
            catalog.workflow.series_state(summary.series_instance_uid)[0] is SeriesState.COMPLETE
        ),
        what="series complete after restart",
    )
    # The PACS resends what was not acknowledged: everything ends up stored once.
    again = run_peer(
        [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, paths)]
    )
    assert again.returncode == 0, again.stderr
    assert catalog.intake.instance_count() == 150
    catalog.close()
