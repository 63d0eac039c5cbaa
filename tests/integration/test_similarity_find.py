"""Similar-case folders answered to dcmtk findscu on the similarity AE, under the privacy policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.net.similarity import PRIVATE_CREATOR, folder_id
from dicom_node.retrieval.similar import SimilarityIndex
from tests.factories import near_code, new_nodule, write_ct_series
from tests.peers import dcmtk, run_peer, wait_until

pytestmark = pytest.mark.integration
VERSION = "test-model-1"


@pytest.fixture
def archive(tmp_path, make_settings, start_node):
    """Five studies of four patients with nodule codes we control, on a running node."""
    settings = make_settings(
        access={
            "ae_titles": {
                "TRUSTED": ["similarity", "identities"],
                "VIEWER": ["similarity"],
                "FINDSCU": ["find", "identities"],
            }
        }
    )
    rng = np.random.default_rng(1)
    big, small = (rng.integers(0, 2, 192, dtype=np.uint8) for _ in range(2))
    studies = {}
    # (patient, date, accession, kind, flips): patient P1 has the index study (ACC5) and a prior.
    plan = [
        ("P1", "20200101", "ACC1", "big", 2),
        ("P2", "20210101", "ACC2", "big", 3),
        ("P3", "20210505", "ACC3", "big", 8),
        ("P4", "20220101", "ACC4", "small", 3),
        ("P1", "20240101", "ACC5", "big", 1),
    ]
    paths = []
    for patient, date, accession, _, _ in plan:
        series = write_ct_series(
            tmp_path / accession,
            1,
            PatientID=patient,
            PatientName=f"Name^{patient}",
            StudyDate=date,
            AccessionNumber=accession,
        )
        studies[accession] = pydicom.dcmread(series[0], stop_before_pixels=True)
        paths += series
    from storage.catalog import Catalog

    catalog = Catalog(settings.catalog_url)
    node = start_node(settings, similarity_index=SimilarityIndex(catalog, VERSION))
    assert (
        run_peer(
            [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, paths)]
        ).returncode
        == 0
    )
    for patient, _, accession, kind, flips in plan:
        ds = studies[accession]
        embedding = np.zeros(16, np.float32)
        embedding[0 if kind == "big" else 1] = 1.0
        embedding[2] = flips / 100
        node.catalog.nodules.replace(
            ds.SeriesInstanceUID,
            VERSION,
            [
                new_nodule(
                    0,
                    near_code(rng, big if kind == "big" else small, flips),
                    embedding,
                    diameter_mm=20.0 if kind == "big" else 4.0,
                    size_class=6 if kind == "big" else 1,
                )
            ],
        )
    # Stored as a worker would: the node's index takes them in at its next poll.
    wait_until(lambda: node.similarity_index.index.ntotal == len(plan), what="index follows")
    yield node, studies
    catalog.close()


def _find(
    port: int, out: Path, calling: str, *keys: str, query_file: Path | None = None
) -> list[pydicom.Dataset]:
    out.mkdir(exist_ok=True)
    for old in out.glob("*.dcm"):
        old.unlink()
    args = [
        dcmtk("findscu"),
        "-S",
        "-aet",
        calling,
        "-aec",
        "DICOM_NODE_SIM",
        "-X",
        "-od",
        str(out),
    ]
    for key in keys:
        args += ["-k", key]
    result = run_peer([*args, "127.0.0.1", str(port), *([str(query_file)] if query_file else [])])
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_folder_lists_other_patients_similar_studies_in_rank_order(archive, tmp_path) -> None:
    node, studies = archive
    index = studies["ACC5"]
    folder = folder_id(index.StudyInstanceUID, "ACC5")
    assert folder == "SIM-ACC5"
    found = _find(
        node.similarity_port,
        tmp_path / "q",
        "VIEWER",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={folder}",
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "PatientName",
    )
    # VIEWER may not see identities: opaque study UIDs, case ids, never the real name or ID.
    policy = node.policy
    uids = [ds.StudyInstanceUID for ds in found]
    # Other patients only (P1's own prior ACC1 is not a "similar case"), big nodules first, closest first.
    assert uids == [
        policy.study_uid(studies[a].StudyInstanceUID, reveal=False) for a in ("ACC2", "ACC3")
    ]
    assert not {ds.StudyInstanceUID for ds in studies.values()} & set(uids)
    assert all(ds.PatientID == folder for ds in found)
    assert found[0].StudyDescription.startswith("#1 ")
    block = found[0].private_block(0x0011, PRIVATE_CREATOR)
    assert int(block[0x10].value) == 1
    assert block[0x12].value == policy.study_uid(index.StudyInstanceUID, reveal=False)
    assert all(str(ds.PatientName).startswith("CASE-") for ds in found)
    assert all(
        "P2" not in str(ds.PatientName) and "Name" not in str(ds.PatientName) for ds in found
    )


def test_trusted_ae_sees_identity_and_private_key_query_works(archive, tmp_path) -> None:
    node, studies = archive
    index = studies["ACC5"]
    # A scripted client's query: the private key with its VR (UI), written as a query file.
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = ""
    query.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(
        0x12, "UI", index.StudyInstanceUID
    )
    query_file = tmp_path / "query.dcm"
    query.save_as(query_file, implicit_vr=False, little_endian=True)
    found = _find(node.similarity_port, tmp_path / "q", "TRUSTED", query_file=query_file)
    assert [str(ds.PatientName) for ds in found] == ["Name^P2", "Name^P3"]
    assert [ds.StudyInstanceUID for ds in found] == [
        studies[a].StudyInstanceUID for a in ("ACC2", "ACC3")
    ]


def test_unknown_folder_is_empty_and_main_ae_is_not_affected(archive, tmp_path) -> None:
    node, studies = archive
    assert (
        _find(
            node.similarity_port,
            tmp_path / "q",
            "VIEWER",
            "QueryRetrieveLevel=STUDY",
            "PatientID=SIM-NOPE",
            "StudyInstanceUID",
        )
        == []
    )
    # On the main AE a StudyInstanceUID query returns that study and nothing else.
    uid = studies["ACC5"].StudyInstanceUID
    out = tmp_path / "main"
    out.mkdir()
    result = run_peer(
        [
            dcmtk("findscu"),
            "-S",
            "-aec",
            "DICOM_NODE",
            "-X",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={uid}",
            "127.0.0.1",
            str(node.port),
        ]
    )
    assert result.returncode == 0
    assert [pydicom.dcmread(p).StudyInstanceUID for p in out.glob("rsp*.dcm")] == [uid]


def _secrets(studies: dict[str, pydicom.Dataset]) -> set[str]:
    """Every identity of the archive: names, IDs, accession numbers, real UIDs."""
    found = set()
    for ds in studies.values():
        found |= {str(ds.PatientName), ds.PatientID, ds.AccessionNumber}
        found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    return found


def _values(ds: pydicom.Dataset) -> list[str]:
    """Every value of a response (private elements included), as text."""
    values = []
    for element in ds.iterall():
        value = element.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        values.append(str(value))
    return values


def test_no_sequence_of_queries_leads_an_ae_without_identities_to_them(archive, tmp_path) -> None:
    """VIEWER may use the similarity AE but not see identities: try every road to them."""
    node, studies = archive
    secrets = _secrets(studies)
    answers: list[pydicom.Dataset] = []
    out = tmp_path / "q"

    def similar(*keys: str, query_file: Path | None = None) -> list[pydicom.Dataset]:
        found = _find(node.similarity_port, out, "VIEWER", *keys, query_file=query_file)
        answers.extend(found)
        return found

    extra = (
        "StudyInstanceUID",
        "PatientName",
        "PatientBirthDate",
        "IssuerOfPatientID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyDescription",
    )
    # 1. every folder, found by enumerating accession numbers
    for accession in ("ACC1", "ACC2", "ACC3", "ACC4", "ACC5"):
        similar("QueryRetrieveLevel=STUDY", f"PatientID=SIM-{accession}", *extra)
    assert answers, "the folders must answer something for this test to mean anything"
    # 2. each answer's study UID, case id and index UID fed back as queries
    for answer in list(answers):
        for key in (0x12,):
            query = pydicom.Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientName = ""
            query.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(
                key, "UI", answer.StudyInstanceUID
            )
            query_file = tmp_path / "fed-back.dcm"
            query.save_as(query_file, implicit_vr=False, little_endian=True)
            assert similar(query_file=query_file) == [], "an opaque UID is no index study"
        assert similar("QueryRetrieveLevel=STUDY", f"PatientID={answer.PatientName}") == []
        # ... and the main AE, which would know real UIDs, refuses VIEWER outright.
        refused = run_peer(
            [
                dcmtk("findscu"),
                *("-S", "-aet", "VIEWER", "-aec", "DICOM_NODE"),
                *("-k", "QueryRetrieveLevel=STUDY"),
                *("-k", f"StudyInstanceUID={answer.StudyInstanceUID}"),
                *("-k", "PatientName", "127.0.0.1", str(node.port)),
            ]
        )
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    # 3. wildcards and universal matching on the folder key, and identity keys alone
    for keys in (
        ("PatientID=SIM-*",),
        ("PatientID=*",),
        ("PatientID=",),
        ("PatientName=Name*",),
        ("PatientID=P2",),
        (f"StudyInstanceUID={studies['ACC2'].StudyInstanceUID}",),
    ):
        assert similar("QueryRetrieveLevel=STUDY", *keys, *extra[1:]) == [], keys
    # 4. nothing VIEWER saw holds a name, ID, accession number or real UID of another
    #    patient (its own query's folder id "SIM-<accession>" is the only echo allowed)
    for answer in answers:
        folder = answer.PatientID
        leaked = {
            secret
            for value in _values(answer)
            if value != folder
            for secret in secrets
            if secret and secret in value
        }
        assert not leaked, (leaked, answer)
