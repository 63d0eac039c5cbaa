"""A viewer opens a similar study the similarity AE lists: dcmtk getscu and movescu on the main AE.

Retrieval hands out whole studies, identities included: only AEs with the
``retrieve`` permission of ``[access]`` (which needs ``identities``) may do it,
and C-MOVE sends only to ``retrieve.move_destinations``, whatever the request
says. An AE that may only browse similar cases gets opaque UIDs there and
cannot retrieve at all.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from dicom_node.retrieval.similar import SimilarityIndex
from storage.catalog import Catalog
from tests.factories import near_code, new_nodule, receive_files, write_ct_series
from tests.peers import dcmtk, free_port, run_peer, start_storescp

pytestmark = pytest.mark.integration
VERSION = "test-model-1"
SLICES = 4


@pytest.fixture
def node_with_priors(tmp_path, make_settings, start_node):
    """An index study (P1) and two similar prior studies of P2 and P3; VIEWER may retrieve,
    BROWSER may only browse similar cases."""
    viewer_port = free_port()
    settings = make_settings(
        access={
            "ae_titles": {
                "VIEWER": ["similarity", "identities", "retrieve"],
                "BROWSER": ["similarity"],
            }
        },
        retrieve={"move_destinations": [f"VIEWER@127.0.0.1:{viewer_port}"]},
    )
    rng = np.random.default_rng(3)
    centre = rng.integers(0, 2, 192, dtype=np.uint8)
    catalog = Catalog(settings.catalog_url)
    node = start_node(settings, similarity_index=SimilarityIndex(catalog, VERSION))
    studies = {}
    for patient, accession, flips in (("P1", "IDX1", 1), ("P2", "PRI2", 3), ("P3", "PRI3", 9)):
        paths = write_ct_series(
            tmp_path / accession,
            SLICES,
            PatientID=patient,
            PatientName=f"Name^{patient}",
            AccessionNumber=accession,
        )
        first = receive_files(node.ingest, paths)[0]
        studies[accession] = first
        node.catalog.nodules.replace(
            first.SeriesInstanceUID,
            VERSION,
            [
                new_nodule(
                    0,
                    near_code(rng, centre, flips),
                    np.full(16, flips / 10, np.float32),
                    diameter_mm=12.0,
                    size_class=4,
                )
            ],
        )
    node.similarity_index.sync()  # rows written here, not by a step: no waiting on the poll
    yield node, studies, viewer_port
    catalog.close()


def _similar_studies(node, tmp_path, calling: str = "VIEWER") -> list[str]:
    """The folder SIM-IDX1 as ``calling`` lists it: similar studies, rank by rank."""
    out = tmp_path / f"find-{calling}"
    out.mkdir()
    result = run_peer(
        [
            dcmtk("findscu"), "-S", "-aet", calling, "-aec", "DICOM_NODE_SIM", "-X",
            "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=SIM-IDX1",
            "-k", "StudyInstanceUID", "-k", "StudyDescription",
            "127.0.0.1", str(node.similarity_port),
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    # The distance beside each rank is the one that ranks: it grows with the rank.
    shown = [float(ds.StudyDescription.split()[1].removeprefix("d=")) for ds in found]
    ranks = [ds.StudyDescription.split()[0] for ds in found]
    assert shown == sorted(shown) and ranks == ["#1", "#2"]
    return [ds.StudyInstanceUID for ds in found]


def _getscu(node, calling: str, study: str, out) -> subprocess.CompletedProcess[str]:
    out.mkdir()
    return run_peer(
        [
            dcmtk("getscu"), "-S", "-aet", calling, "-aec", "DICOM_NODE", "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(node.port),
        ]
    )  # fmt: skip


def _movescu(node, calling: str, destination: str, study: str) -> subprocess.CompletedProcess[str]:
    return run_peer(
        [
            dcmtk("movescu"), "-S", "-aet", calling, "-aem", destination, "-aec", "DICOM_NODE",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(node.port),
        ]
    )  # fmt: skip


def test_getscu_retrieves_a_listed_similar_study_for_an_allowed_ae_only(
    node_with_priors, tmp_path
) -> None:
    node, studies, _ = node_with_priors
    listed = _similar_studies(node, tmp_path)
    assert listed == [studies["PRI2"].StudyInstanceUID, studies["PRI3"].StudyInstanceUID]
    got = _getscu(node, "VIEWER", listed[0], tmp_path / "viewer")
    assert got.returncode == 0, got.stderr
    received = [pydicom.dcmread(p) for p in (tmp_path / "viewer").iterdir()]
    assert len(received) == SLICES
    assert {ds.StudyInstanceUID for ds in received} == {listed[0]}
    assert {str(ds.PatientName) for ds in received} == {"Name^P2"}

    # An unknown AE may store (access.unlisted), so its association is accepted for
    # the storage contexts getscu proposes; the C-GET itself is refused.
    refused = _getscu(node, "STRANGER", listed[0], tmp_path / "stranger")
    assert list((tmp_path / "stranger").iterdir()) == []
    assert "0x124" in refused.stderr, refused.stderr  # 0x0124 Refused: Not Authorized

    # A browser of similar cases sees opaque UIDs, and may not retrieve even a real one.
    browsed = _similar_studies(node, tmp_path, "BROWSER")
    assert len(browsed) == 2 and not set(browsed) & set(listed)
    for study, out in ((browsed[0], "opaque"), (listed[0], "real")):
        denied = _getscu(node, "BROWSER", study, tmp_path / out)
        assert denied.returncode != 0 and "Association Rejected" in denied.stderr
        assert list((tmp_path / out).iterdir()) == []


def test_movescu_sends_to_the_configured_destination_only(node_with_priors, tmp_path) -> None:
    node, studies, viewer_port = node_with_priors
    study = _similar_studies(node, tmp_path)[0]
    inbox = tmp_path / "inbox"
    viewer = start_storescp(viewer_port, inbox, ae_title="VIEWER")
    try:
        moved = _movescu(node, "VIEWER", "VIEWER", study)
        assert moved.returncode == 0, moved.stderr
        assert len(list(inbox.iterdir())) == SLICES
        # Not allowed to retrieve: no association; a destination not configured: refused.
        for calling in ("STRANGER", "BROWSER"):
            refused = _movescu(node, calling, "VIEWER", study)
            assert "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
        refused = _movescu(node, "VIEWER", "ELSEWHERE", study)
        assert "Refused: MoveDestinationUnknown" in refused.stderr, refused.stderr
        assert len(list(inbox.iterdir())) == SLICES
    finally:
        viewer.terminate()
        viewer.wait()


def test_series_and_image_level_retrieve(node_with_priors, tmp_path) -> None:
    node, studies, _ = node_with_priors
    first = studies["PRI3"]
    out = tmp_path / "image"
    out.mkdir()
    got = run_peer(
        [
            dcmtk("getscu"), "-S", "-aet", "VIEWER", "-aec", "DICOM_NODE", "-od", str(out),
            "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
            "-k", f"SOPInstanceUID={first.SOPInstanceUID}",
            "127.0.0.1", str(node.port),
        ]
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert [pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()] == [first.SOPInstanceUID]
    # A SERIES retrieve without its StudyInstanceUID is not a Study Root retrieve.
    bad = tmp_path / "bad"
    bad.mkdir()
    result = run_peer(
        [
            dcmtk("getscu"), "-S", "-aet", "VIEWER", "-aec", "DICOM_NODE", "-od", str(bad),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
            "127.0.0.1", str(node.port),
        ]
    )  # fmt: skip
    assert list(bad.iterdir()) == []
    assert "DataSetDoesNotMatchSOPClass" in result.stderr, result.stderr  # 0xA900


def test_jpeg_ls_goes_as_stored_or_decompressed_as_the_viewer_accepts(
    node_with_priors, tmp_path
) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

    node, _, _ = node_with_priors
    paths = write_ct_series(
        tmp_path / "jpls", 2, transfer_syntax_uid=JPEGLSLossless, AccessionNumber="JPLS"
    )
    study = receive_files(node.ingest, paths)[0].StudyInstanceUID
    originals = {ds.SOPInstanceUID: ds.pixel_array for ds in map(pydicom.dcmread, paths)}
    for options, syntax in (([], ExplicitVRLittleEndian), (["+xt"], JPEGLSLossless)):
        out = tmp_path / f"got{len(options)}"
        out.mkdir()
        got = run_peer(
            [
                dcmtk("getscu"), "-S", *options, "-aet", "VIEWER", "-aec", "DICOM_NODE",
                "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study}",
                "127.0.0.1", str(node.port),
            ]
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        received = [pydicom.dcmread(p) for p in out.iterdir()]
        assert {ds.file_meta.TransferSyntaxUID for ds in received} == {syntax}
        # The same instances (a transfer syntax is not a new instance), the same pixels.
        assert sorted(ds.SOPInstanceUID for ds in received) == sorted(originals)
        for ds in received:
            assert (ds.pixel_array == originals[ds.SOPInstanceUID]).all()
