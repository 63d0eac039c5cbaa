"""Closed by default: who may associate, store and query, tried with dcmtk and pynetdicom peers."""

from __future__ import annotations

import logging

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.factories import write_ct_series
from tests.peers import dcmtk, run_peer
from tests.pki import make_pki, tls_security

pytestmark = pytest.mark.integration


def _findscu(port: int, called: str, calling: str, *extra: str):
    return run_peer(
        [
            dcmtk("findscu"),
            "-S",
            *("-aet", calling, "-aec", called),
            *extra,
            *("-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=SIM-ACC1"),
            *("-k", "PatientName", "-k", "StudyInstanceUID"),
            *("127.0.0.1", str(port)),
        ]
    )


def test_unknown_ae_may_store_but_is_refused_on_both_find_aes(
    tmp_path, make_settings, start_node, caplog
) -> None:
    node = start_node(make_settings())  # the defaults: unlisted AEs may store, nothing else
    paths = write_ct_series(tmp_path / "s", 2)
    stored = run_peer(
        [
            dcmtk("storescu"),
            *("-aet", "STRANGER", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)),
            *map(str, paths),
        ]
    )
    assert stored.returncode == 0, stored.stderr
    assert node.catalog.intake.instance_count() == 2
    caplog.set_level(logging.WARNING, logger="dicom_node")
    for port, called in ((node.port, "DICOM_NODE"), (node.similarity_port, "DICOM_NODE_SIM")):
        refused = _findscu(port, called, "STRANGER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
    # The node's log says who was refused and why, in words an administrator can act on.
    reasons = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("'STRANGER' has no permission for find" in m for m in reasons), reasons
    assert any("'STRANGER' has no permission for similarity" in m for m in reasons), reasons


def test_store_only_ae_gets_not_authorized_for_c_find(make_settings, start_node) -> None:
    node = start_node(make_settings(access={"ae_titles": {"MODALITY": ["store"]}}))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established  # it may store, so it gets an association ...
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "*"
        ((status, identifier),) = list(
            assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        )
    finally:
        assoc.release()
    # ... but its C-FIND is refused with the general status Refused: Not Authorized.
    assert status.Status == 0x0124 and identifier is None
    assert "lacks the 'find' permission" in status.ErrorComment


def test_tls_client_certificate_is_bound_to_its_ae_title(
    tmp_path, make_settings, start_node
) -> None:
    pki = make_pki(tmp_path, clients=("pacs", "viewer"))
    node = start_node(
        make_settings(
            security=tls_security(pki),
            access={
                "ae_titles": {
                    "PACS": {"permissions": ["store"], "tls_subjects": ["CN=pacs"]},
                }
            },
        )
    )

    def echo(client: str, calling: str):
        return run_peer(
            [
                dcmtk("echoscu"),
                *("+tls", str(pki[f"{client}_key"]), str(pki[f"{client}_crt"])),
                *("+cf", str(pki["ca_crt"])),
                *("-aet", calling, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)),
            ]
        )

    assert echo("pacs", "PACS").returncode == 0
    stolen = echo("viewer", "PACS")  # a valid certificate, but not the one bound to PACS
    assert stolen.returncode != 0 and "Calling AE Title Not Recognized" in stolen.stderr
    # Titles not in the table are bound to nothing: they get the unlisted permissions.
    assert echo("viewer", "OTHER").returncode == 0
