"""C-FIND identifiers ⇄ catalog queries (pure; no network, no database).

Study Root Query/Retrieve Information Model, hierarchical baseline matching
(PS3.4 C.2.2.2): single value, wildcard (``*`` and ``?``), range (dates and
times), list of UIDs, universal matching (empty key = return it).
:func:`parse_identifier` raises :class:`InvalidQuery` for what the node cannot
answer; the handler turns that into 0xA900. The keys and levels themselves
are the catalog's (:data:`storage.catalog.find.KEYS`), defined once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from pydicom.dataset import Dataset

from dicom_node.errors import InvalidQuery
from storage.catalog.find import KEYS, RETURN_ONLY_KEYS, Level
from storage.uids import is_valid_uid

__all__ = ["Level", "Match", "MatchKind", "StudyQuery", "parse_identifier", "response_identifier"]


class MatchKind(str, Enum):
    """How a key's value is matched (PS3.4 C.2.2.2)."""

    SINGLE = "single"
    """Exact value."""
    WILDCARD = "wildcard"
    """``*`` any sequence, ``?`` one character."""
    RANGE = "range"
    """``low-high``, ``low-`` or ``-high`` for DA, TM, DT."""
    LIST = "list"
    """Backslash-separated values: UIDs, or ModalitiesInStudy."""


@dataclass(frozen=True)
class Match:
    """One matching key of an identifier."""

    keyword: str
    kind: MatchKind
    values: tuple[str, ...]
    """SINGLE/WILDCARD: one value; RANGE: (low, high), "" = open; LIST: the values."""


UNIQUE_KEY = {
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
_RANGE_KEYS = {"StudyDate", "StudyTime", "PatientBirthDate"}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


@dataclass(frozen=True)
class StudyQuery:
    """A parsed Study Root C-FIND identifier."""

    level: Level
    matches: tuple[Match, ...]
    return_keys: tuple[str, ...]
    """Every key of the identifier (matching and return keys), in order."""
    character_set: str | None = None
    unsupported_keys: tuple[str, ...] = field(default=())


def _levels_up_to(level: Level) -> list[Level]:
    order = [Level.STUDY, Level.SERIES, Level.IMAGE]
    return order[: order.index(level) + 1]


def _text(identifier: Dataset, keyword: str) -> str:
    try:
        value = identifier[keyword].value
    except Exception as exc:  # noqa: BLE001 - malformed value in a peer's identifier
        raise InvalidQuery(f"{keyword} cannot be decoded") from exc
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _match_for(keyword: str, value: str) -> Match | None:
    value = value.strip()
    if value == "" or value == "*":
        return None  # universal matching
    if keyword in RETURN_ONLY_KEYS:
        return None
    if keyword in _UID_KEYS:
        uids = tuple(v.strip() for v in value.split("\\"))
        if not all(is_valid_uid(u) for u in uids):
            raise InvalidQuery(f"{keyword} holds a value that is not a UID")
        return Match(keyword, MatchKind.LIST if len(uids) > 1 else MatchKind.SINGLE, uids)
    if keyword == "ModalitiesInStudy":
        modalities = tuple(v.strip() for v in value.split("\\") if v.strip())
        if len(modalities) > 1:
            return Match(keyword, MatchKind.LIST, modalities)
    if keyword in _RANGE_KEYS and "-" in value:
        low, _, high = value.partition("-")
        pattern = _TIME if keyword == "StudyTime" else _DATE
        for part in (low, high):
            if part and not pattern.match(part):
                # Never quote the value: a malformed PatientBirthDate is still PHI.
                raise InvalidQuery(
                    f"{keyword} range bounds are not {'HHMMSS' if pattern is _TIME else 'YYYYMMDD'}"
                )
        if not low and not high:
            raise InvalidQuery(f"{keyword} range has neither bound")
        return Match(keyword, MatchKind.RANGE, (low, high))
    if keyword in _RANGE_KEYS:
        pattern = _TIME if keyword == "StudyTime" else _DATE
        if not pattern.match(value):
            raise InvalidQuery(
                f"{keyword} is not a valid {'time' if keyword == 'StudyTime' else 'date'} "
                f"({len(value)} characters; {'HHMMSS' if pattern is _TIME else 'YYYYMMDD'})"
            )
    if "\\" in value:
        raise InvalidQuery(f"{keyword}: value lists are only supported for UIDs")
    if "*" in value or "?" in value:
        return Match(keyword, MatchKind.WILDCARD, (value,))
    return Match(keyword, MatchKind.SINGLE, (value,))


def parse_identifier(identifier: Dataset) -> StudyQuery:
    """Parse a Study Root C-FIND identifier.

    Parameters
    ----------
    identifier : pydicom.dataset.Dataset
        The request's Identifier.

    Returns
    -------
    StudyQuery

    Raises
    ------
    InvalidQuery
        No or unknown QueryRetrieveLevel; a unique key above the query level
        missing or not a single UID (hierarchical model, PS3.4 C.4.1.2.1);
        malformed dates, times or UIDs; sequence matching.
    """
    if "QueryRetrieveLevel" not in identifier:
        raise InvalidQuery("QueryRetrieveLevel (0008,0052) is missing")
    raw_level = _text(identifier, "QueryRetrieveLevel").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError as exc:
        shown = raw_level if raw_level in {"PATIENT", "FRAME"} else f"{len(raw_level)} characters"
        raise InvalidQuery(f"QueryRetrieveLevel ({shown}) is not STUDY, SERIES or IMAGE") from exc
    allowed = {k for lvl in _levels_up_to(level) for k in KEYS[lvl]}
    matches: list[Match] = []
    return_keys: list[str] = []
    unsupported: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet") or element.tag.group == 0x0002:
            continue
        if element.VR == "SQ":
            raise InvalidQuery(f"sequence matching ({keyword or element.tag}) is not supported")
        if keyword not in allowed:
            unsupported.append(keyword or str(element.tag))
            continue
        return_keys.append(keyword)
        match = _match_for(keyword, _text(identifier, keyword))
        if match is not None:
            matches.append(match)
    by_keyword = {m.keyword: m for m in matches}
    for upper in _levels_up_to(level)[:-1]:
        key = UNIQUE_KEY[upper]
        match = by_keyword.get(key)
        if match is None or match.kind is not MatchKind.SINGLE:
            raise InvalidQuery(f"a {level.value} query needs a single {key} (hierarchical model)")
    unique = UNIQUE_KEY[level]
    if unique not in return_keys:
        return_keys.append(unique)
    charset = (
        _text(identifier, "SpecificCharacterSet") if "SpecificCharacterSet" in identifier else None
    )
    return StudyQuery(
        level, tuple(matches), tuple(return_keys), charset or None, tuple(unsupported)
    )


def response_identifier(query: StudyQuery, row: dict[str, object]) -> Dataset:
    """A C-FIND response identifier holding exactly the requested keys."""
    result = Dataset()
    result.QueryRetrieveLevel = query.level.value
    result.SpecificCharacterSet = "ISO_IR 192"
    for keyword in query.return_keys:
        value = row.get(keyword)
        if keyword == "ModalitiesInStudy" and isinstance(value, str):
            value = [m for m in value.split("\\") if m]
        setattr(result, keyword, "" if value is None else value)
    return result
