"""Bad input gets a precise status; the association and the node stay up.

dcmtk refuses to send most malformed objects, so these use pynetdicom as the
sending library (it sends what it is given) and dcmtk to show the node is up.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicom_node.net.status import Status
from tests.factories import ct_slice
from tests.peers import dcmtk, run_peer

pytestmark = pytest.mark.integration


def _send_all(port: int, datasets: list) -> list[int]:
    ae = AE(ae_title="BADSENDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        statuses = []
        for ds in datasets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                status = assoc.send_c_store(ds)
            assert status, "empty status: transport failure"
            statuses.append(int(status.Status))
        assert assoc.is_established, "the association must survive bad input"
    finally:
        assoc.release()
    return statuses


def _slice(**changes):
    ds = ct_slice(0, study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs we set on purpose
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return ds


def test_each_bad_dataset_gets_its_status_and_the_node_stays_up(
    tmp_path, make_settings, start_node
) -> None:
    node = start_node(make_settings())
    good = _slice()
    statuses = _send_all(
        node.port,
        [
            _slice(StudyInstanceUID="1.2.840.abc"),  # unsafe UID
            _slice(SeriesInstanceUID="1.2." + "3" * 70),  # over 64 characters
            _slice(StudyInstanceUID="../../../etc"),  # path traversal attempt
            _slice(SeriesInstanceUID=None),  # missing
            _slice(StudyInstanceUID=""),  # empty
            good,
        ],
    )
    assert statuses == [
        Status.UNSAFE_UID,
        Status.UNSAFE_UID,
        Status.UNSAFE_UID,
        Status.MISSING_UID,
        Status.MISSING_UID,
        Status.SUCCESS,
    ]
    assert node.catalog.intake.instance_count() == 1
    assert not list(Path(tmp_path).rglob("etc"))
    echo = run_peer([dcmtk("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)])
    assert echo.returncode == 0


def test_same_uid_other_content_keeps_first_with_warning(make_settings, start_node) -> None:
    node = start_node(make_settings())
    first = _slice()
    second = copy.deepcopy(first)
    second.PixelData = bytes(len(first.PixelData))
    statuses = _send_all(node.port, [first, second])
    assert statuses == [Status.SUCCESS, Status.ELEMENTS_DISCARDED]
    (relative,) = node.catalog.intake.instance_paths().values()
    import pydicom

    assert pydicom.dcmread(node.store.path_of(relative)).PixelData == first.PixelData


def test_undecodable_dataset_gets_cannot_understand(tmp_path, make_settings, start_node) -> None:
    """A Part 10 file whose dataset is truncated mid-element, sent as raw bytes."""
    node = start_node(make_settings())
    good = _slice()
    path = tmp_path / "truncated.dcm"
    good.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    # Cut the file inside the Pixel Data value: the element's length field
    # promises more bytes than the dataset holds.
    cut = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010)
    broken = bytearray(data[: cut + 12 + 100])
    path.write_bytes(bytes(broken))
    ae = AE(ae_title="BADSENDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status and int(status.Status) == Status.CANNOT_UNDERSTAND
    assert node.catalog.intake.instance_count() == 0
    assert _send_all(node.port, [good]) == [Status.SUCCESS]


def test_only_our_transfer_syntaxes_are_negotiated_for_any_storage_class(
    make_settings, start_node
) -> None:
    """Deflated (pynetdicom would inflate it without a bound) and unknown syntaxes are
    rejected per presentation context; a context offering one of ours besides takes it;
    a private storage class is still accepted. Found by ``benchmarks.stress``'s
    deflate-bomb row: pynetdicom's unrestricted storage accepted any first syntax."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless

    node = start_node(make_settings())
    ae = AE(ae_title="SENDER")
    private = "1.3.12.2.1107.5.9.1"  # a vendor's private non-image storage class
    proposed = [
        (CTImageStorage, [DeflatedExplicitVRLittleEndian]),
        (CTImageStorage, ["1.2.3.4.5.6"]),  # not a transfer syntax anyone knows
        (CTImageStorage, [DeflatedExplicitVRLittleEndian, JPEGLSLossless]),
        (private, [ExplicitVRLittleEndian]),
    ]
    for abstract, syntaxes in proposed:
        ae.add_requested_context(abstract, syntaxes)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        accepted = sorted((str(c.abstract_syntax), str(c.transfer_syntax[0]))
                          for c in assoc.accepted_contexts)  # fmt: skip
        rejected = sorted((c.context_id, c.result) for c in assoc.rejected_contexts)
    finally:
        assoc.release()
    assert accepted == sorted([(CTImageStorage, JPEGLSLossless), (private, ExplicitVRLittleEndian)])
    assert rejected == [(1, 0x04), (3, 0x04)]  # transfer syntaxes not supported (PS3.8 9.3.3.2)
