"""The receive path against dcmtk, the real sending peer."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from storage.catalog import SeriesState
from tests.factories import PATIENT_ID, PATIENT_NAME, dataset_bytes, write_ct_series
from tests.peers import dcmtk, run_peer, wait_until

pytestmark = pytest.mark.integration


def _storescu(node_port: int, paths: list[Path] | Path, *extra: str, aet: str = "STORESCU"):
    targets = [str(paths)] if isinstance(paths, Path) else [str(p) for p in paths]
    return run_peer(
        [
            dcmtk("storescu"),
            "-v",
            "-aet",
            aet,
            "-aec",
            "DICOM_NODE",
            *extra,
            "127.0.0.1",
            str(node_port),
            "+sd",
            *targets,
        ]
    )


def test_echoscu_verification(make_settings, start_node) -> None:
    node = start_node(make_settings())
    result = run_peer([dcmtk("echoscu"), "-v", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)])
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


def test_storescu_series_arrives_identical_catalogued_then_complete(
    tmp_path, make_settings, start_node, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    source = tmp_path / "series"
    paths = write_ct_series(source, 100, rows=128, columns=128)
    node = start_node(make_settings())
    result = _storescu(node.port, source)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 100

    stored = node.catalog.intake.instance_paths()
    assert len(stored) == 100
    for path in paths:
        sop_instance_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        kept = node.store.path_of(stored[sop_instance_uid])
        assert dataset_bytes(kept) == dataset_bytes(path)
        assert pydicom.dcmread(kept).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    (summary,) = node.catalog.workflow.summaries()
    assert summary.instance_count == 100 and summary.modality == "CT"
    wait_until(
        lambda: (
            node.catalog.workflow.series_state(summary.series_instance_uid)[0]
            is SeriesState.COMPLETE
        ),
        what="series complete after the idle time",
    )
    # Patient names and IDs never reach the logs, pynetdicom's included.
    assert PATIENT_NAME.split("^")[0] not in caplog.text
    assert PATIENT_ID not in caplog.text
    assert "19500101" not in caplog.text  # PatientBirthDate


@pytest.mark.parametrize(
    ("transfer_syntax", "flag"), [(JPEGLSLossless, "-xt"), (JPEG2000Lossless, "-xv")]
)
def test_compressed_series_is_kept_as_sent(
    tmp_path, make_settings, start_node, transfer_syntax, flag
) -> None:
    source = tmp_path / "compressed"
    paths = write_ct_series(source, 4, transfer_syntax_uid=transfer_syntax)
    node = start_node(make_settings())
    result = _storescu(node.port, source, flag)
    assert result.returncode == 0, result.stderr
    stored = node.catalog.intake.instance_paths()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kept = node.store.path_of(stored[ds.SOPInstanceUID])
        assert (
            pydicom.dcmread(kept, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == transfer_syntax
        )
        assert dataset_bytes(kept) == dataset_bytes(path)


def test_resent_identical_instance_succeeds_without_rewrite(
    tmp_path, make_settings, start_node
) -> None:
    paths = write_ct_series(tmp_path / "s", 2)
    node = start_node(make_settings())
    assert _storescu(node.port, paths).returncode == 0
    kept = [node.store.path_of(p) for p in node.catalog.intake.instance_paths().values()]
    mtimes = [p.stat().st_mtime_ns for p in kept]
    again = _storescu(node.port, paths)
    assert again.returncode == 0 and again.stderr.count("(Success)") == 2
    assert [p.stat().st_mtime_ns for p in kept] == mtimes
    assert node.catalog.intake.instance_count() == 2


def test_only_listed_calling_aes_associate_when_unlisted_is_empty(
    make_settings, start_node
) -> None:
    node = start_node(make_settings(access={"unlisted": [], "ae_titles": {"PACS": ["store"]}}))
    refused = run_peer(
        [dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
    allowed = run_peer(
        [dcmtk("echoscu"), "-aet", "PACS", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
    )
    assert allowed.returncode == 0, allowed.stderr


def test_wrong_called_ae_title_is_rejected(make_settings, start_node) -> None:
    node = start_node(make_settings(access={"ae_titles": {"VIEWER": ["similarity"]}}))
    wrong = run_peer([dcmtk("echoscu"), "-aec", "SOMEONE_ELSE", "127.0.0.1", str(node.port)])
    assert wrong.returncode != 0 and "Association Rejected" in wrong.stderr
    # The similarity AE answers only to its own title, on its own port.
    sim = run_peer(
        [
            dcmtk("echoscu"),
            *("-aet", "VIEWER", "-aec", "DICOM_NODE_SIM"),
            *("127.0.0.1", str(node.similarity_port)),
        ]
    )
    assert sim.returncode == 0, sim.stderr
    crossed = run_peer(
        [
            dcmtk("echoscu"),
            *("-aet", "VIEWER", "-aec", "DICOM_NODE"),
            *("127.0.0.1", str(node.similarity_port)),
        ]
    )
    assert crossed.returncode != 0


def test_peer_address_not_allowed_is_dropped(make_settings, start_node) -> None:
    node = start_node(make_settings(security={"allowed_peer_addresses": ["10.99.0.0/16"]}))
    refused = run_peer(
        [dcmtk("echoscu"), "-to", "5", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
    )
    assert refused.returncode != 0


def test_free_space_floor_refuses_with_a700_and_writes_nothing(
    tmp_path, make_settings, start_node
) -> None:
    paths = write_ct_series(tmp_path / "s", 1)
    node = start_node(make_settings(storage={"min_free_mb": 2**40}))
    result = _storescu(node.port, paths)
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr, result.stderr
    assert node.catalog.intake.instance_count() == 0
    assert not [p for p in node.store.root.rglob("*") if p.is_file()]


def test_associations_over_the_limit_are_rejected(make_settings, start_node) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node = start_node(make_settings(network={"max_associations": 2}))
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = []
    try:
        wait_until(
            lambda: (
                held.append(holder.associate("127.0.0.1", node.port, ae_title="DICOM_NODE"))
                or len([a for a in held if a.is_established]) == 2
            ),
            what="two associations held",
        )
        busy = run_peer([dcmtk("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)])
        assert busy.returncode != 0 and "Association Rejected" in busy.stderr
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
    wait_until(
        lambda: (
            run_peer(
                [dcmtk("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)]
            ).returncode
            == 0
        ),
        what="accepted again after release",
    )
