from __future__ import annotations

import warnings

import pytest
from pydicom.dataset import Dataset

from dicom_node.errors import InvalidQuery
from dicom_node.net.query import Level, MatchKind, parse_identifier


def _identifier(**keys) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values on purpose
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def test_matching_kinds() -> None:
    query = parse_identifier(
        _identifier(
            QueryRetrieveLevel="STUDY",
            PatientName="Doe*",
            StudyDate="20240101-20241231",
            StudyTime="-1200",
            StudyInstanceUID=["1.2.3", "1.2.4"],
            AccessionNumber="A1",
            ModalitiesInStudy=["CT", "SR"],
            PatientID="",
        )
    )
    assert query.level is Level.STUDY
    kinds = {m.keyword: (m.kind, m.values) for m in query.matches}
    assert kinds == {
        "PatientName": (MatchKind.WILDCARD, ("Doe*",)),
        "StudyDate": (MatchKind.RANGE, ("20240101", "20241231")),
        "StudyTime": (MatchKind.RANGE, ("", "1200")),
        "StudyInstanceUID": (MatchKind.LIST, ("1.2.3", "1.2.4")),
        "AccessionNumber": (MatchKind.SINGLE, ("A1",)),
        "ModalitiesInStudy": (MatchKind.LIST, ("CT", "SR")),
    }
    assert "PatientID" in query.return_keys  # universal matching: returned, not matched


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "QueryRetrieveLevel (0008,0052) is missing"),
        ({"QueryRetrieveLevel": "PATIENT"}, "is not STUDY, SERIES or IMAGE"),
        (
            {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.2"},
            "needs a single SeriesInstanceUID",
        ),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "20240101T"}, "is not a valid date"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-01-01"}, "bounds are not YYYYMMDD"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2024010-"}, "bounds are not YYYYMMDD"),
        ({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "A\\B"}, "only supported for UIDs"),
    ],
)
def test_invalid_identifiers(keys, message) -> None:
    with pytest.raises(InvalidQuery, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_identifier(_identifier(**keys))


def test_keys_of_lower_levels_are_not_matched_at_study_level() -> None:
    query = parse_identifier(_identifier(QueryRetrieveLevel="STUDY", SOPInstanceUID="1.2.3"))
    assert query.matches == () and query.unsupported_keys == ("SOPInstanceUID",)


@pytest.mark.parametrize(
    "keys",
    [
        {"QueryRetrieveLevel": "STUDY", "PatientBirthDate": "Doe^Canary 1950"},
        {"QueryRetrieveLevel": "STUDY", "PatientBirthDate": "19500101-Doe^Canary"},
        {"QueryRetrieveLevel": "Doe^Canary"},
    ],
)
def test_refusals_never_quote_what_the_peer_sent(keys) -> None:
    """The message is logged and sent back; a malformed value may be PHI."""
    with pytest.raises(InvalidQuery) as raised:
        parse_identifier(_identifier(**keys))
    assert "Canary" not in str(raised.value) and "1950" not in str(raised.value)


def test_values_pynetdicom_quotes_from_a_request_are_withheld_in_the_logs(tmp_path) -> None:
    """A peer's non-conformant UID may hold a name: the log keeps the element, not the value."""
    import logging

    from dicom_node.cli._logging import add_log_file

    path = tmp_path / "node.log"
    add_log_file(path, max_bytes=2**20, backups=1)
    try:
        logging.getLogger("pynetdicom.utils").warning(
            "Non-conformant 'Affected SOP Instance UID' value '1.2.DOE^JANE'"
        )
        logging.getLogger("dicom_node.test").warning("value '1.2.3' of our own stays")
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "baseFilename", "") == str(path)]:
            root.removeHandler(handler)
            handler.close()
    text = path.read_text()
    assert "DOE" not in text
    assert "Non-conformant 'Affected SOP Instance UID' value (withheld)" in text
    assert "value '1.2.3' of our own stays" in text
