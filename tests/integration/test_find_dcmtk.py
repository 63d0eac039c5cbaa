"""Study Root C-FIND on the node's AE, queried with dcmtk findscu."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.factories import write_ct_series
from tests.peers import dcmtk, run_peer

pytestmark = pytest.mark.integration


@pytest.fixture
def archive(tmp_path, make_settings, start_node):
    """A node holding three studies of two patients; findscu's AE title may query it."""
    node = start_node(make_settings(access={"ae_titles": {"FINDSCU": ["find", "identities"]}}))
    studies = {}
    for name, pid, date, slices in (
        ("Doe^Jane", "P1", "20240105", 3),
        ("Doe^Jane", "P1", "20250610", 2),
        ("Roe^Richard", "P2", "20250611", 4),
    ):
        directory = tmp_path / f"{pid}-{date}"
        paths = write_ct_series(
            directory,
            slices,
            PatientName=name,
            PatientID=pid,
            StudyDate=date,
            AccessionNumber=f"A{date}",
        )
        studies[date] = pydicom.dcmread(paths[0], stop_before_pixels=True)
        result = run_peer(
            [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, paths)]
        )
        assert result.returncode == 0, result.stderr
    return node, studies


def _find(
    port: int, out: Path, *keys: str, extra: tuple[str, ...] = ()
) -> tuple[list[pydicom.Dataset], str]:
    out.mkdir(exist_ok=True)
    for old in out.glob("*.dcm"):
        old.unlink()
    args = [dcmtk("findscu"), "-v", "-S", "-aec", "DICOM_NODE", "-X", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    result = run_peer([*args, "127.0.0.1", str(port)])
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result.stderr


def test_study_level_wildcard_date_range_and_counts(archive, tmp_path) -> None:
    node, studies = archive
    found, _ = _find(
        node.port,
        tmp_path / "q1",
        "QueryRetrieveLevel=STUDY",
        "PatientName=doe*",
        "StudyDate=20250101-",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "AccessionNumber",
    )
    assert [ds.StudyInstanceUID for ds in found] == [studies["20250610"].StudyInstanceUID]
    (ds,) = found
    assert ds.PatientName == "Doe^Jane" and ds.ModalitiesInStudy == "CT"
    assert ds.NumberOfStudyRelatedInstances == 2 and ds.AccessionNumber == "A20250610"
    assert "PatientID" not in ds  # only the keys asked for come back


def test_uid_list_series_and_image_levels(archive, tmp_path) -> None:
    node, studies = archive
    uids = [studies["20240105"].StudyInstanceUID, studies["20250611"].StudyInstanceUID]
    found, _ = _find(
        node.port,
        tmp_path / "q2",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID=" + "\\".join(uids),
        "PatientID",
    )
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted(uids)
    study = studies["20250611"]
    series, _ = _find(
        node.port,
        tmp_path / "q3",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study.StudyInstanceUID}",
        "SeriesInstanceUID",
        "Modality=CT",
        "NumberOfSeriesRelatedInstances",
    )
    assert [ds.SeriesInstanceUID for ds in series] == [study.SeriesInstanceUID]
    assert series[0].NumberOfSeriesRelatedInstances == 4
    images, _ = _find(
        node.port,
        tmp_path / "q4",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study.StudyInstanceUID}",
        f"SeriesInstanceUID={study.SeriesInstanceUID}",
        "SOPInstanceUID",
        "InstanceNumber",
    )
    assert [int(ds.InstanceNumber) for ds in images] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "keys",
    [
        ("QueryRetrieveLevel=SERIES", "SeriesInstanceUID"),  # no StudyInstanceUID above
        ("QueryRetrieveLevel=PATIENT", "PatientID"),  # not a Study Root level
        ("QueryRetrieveLevel=STUDY", "StudyDate=2025-01-01"),  # malformed date
        ("QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.abc"),  # not a UID
    ],
)
def test_bad_identifiers_get_a900_and_the_node_stays_up(archive, tmp_path, keys) -> None:
    node, _ = archive
    found, log = _find(node.port, tmp_path / "bad", *keys)
    assert not found
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in log, log  # 0xA900
    again, _ = _find(node.port, tmp_path / "ok", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert len(again) == 3


def test_c_cancel_stops_matching(archive) -> None:
    """C-CANCEL arriving after the first match stops the generator with 0xFE00.

    Over loopback the node sends a few hundred matches before dcmtk's cancel
    arrives, so the cancel flag is driven through the event seam here.
    """
    from types import SimpleNamespace

    from pydicom.dataset import Dataset

    from dicom_node.net.handlers import handle_find
    from dicom_node.net.status import Status

    node, _ = archive
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""

    class Event:
        def __init__(self) -> None:
            self.identifier = identifier
            self.sent = 0
            self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="FINDSCU"))

        @property
        def is_cancelled(self) -> bool:
            return self.sent >= 1

    event = Event()
    statuses = []
    for status, _identifier in handle_find(event, node.catalog, node.settings.access):
        statuses.append(status)
        event.sent += 1
    assert statuses == [Status.PENDING, Status.CANCEL]
