"""DICOM find: Study Root matching over the catalog (PS3.4 C.2.2.2, C.6.2).

The keys the catalog can match and return are defined here once, by level,
with their columns; ``dicom_node.net.query`` parses identifiers against
:data:`KEYS` and this module turns the parsed conditions into SQL.
Rows come back keyed by DICOM keyword, the shape of a C-FIND identifier.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.schema import instances, series, studies
from storage.errors import CatalogError

__all__ = ["COMPUTED_KEYS", "Condition", "FindCatalog", "KEYS", "Level", "RETURN_ONLY_KEYS"]


class Level(str, Enum):
    """Query/Retrieve Level (0008,0052) of the Study Root information model."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


#: DICOM keyword -> column, per level.
_COLUMNS: dict[Level, dict[str, Any]] = {
    Level.STUDY: {
        "StudyInstanceUID": studies.c.study_instance_uid,
        "PatientName": studies.c.patient_name,
        "PatientID": studies.c.patient_id,
        "PatientBirthDate": studies.c.patient_birth_date,
        "PatientSex": studies.c.patient_sex,
        "StudyDate": studies.c.study_date,
        "StudyTime": studies.c.study_time,
        "AccessionNumber": studies.c.accession_number,
        "StudyID": studies.c.study_id,
        "StudyDescription": studies.c.study_description,
        "ReferringPhysicianName": studies.c.referring_physician_name,
    },
    Level.SERIES: {
        "SeriesInstanceUID": series.c.series_instance_uid,
        "Modality": series.c.modality,
        "SeriesNumber": series.c.series_number,
        "SeriesDescription": series.c.series_description,
        "NumberOfSeriesRelatedInstances": series.c.instance_count,
    },
    Level.IMAGE: {
        "SOPInstanceUID": instances.c.sop_instance_uid,
        "SOPClassUID": instances.c.sop_class_uid,
        "InstanceNumber": instances.c.instance_number,
    },
}
#: Keys computed over the level below (not columns).
COMPUTED_KEYS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (),
    Level.IMAGE: (),
}
#: Every key the catalog can match or return, by level (the C-FIND keys of CONFORMANCE.md).
KEYS: Mapping[Level, tuple[str, ...]] = {
    level: (*_COLUMNS[level], *COMPUTED_KEYS[level]) for level in Level
}
#: Keys returned but never matched (counts).
RETURN_ONLY_KEYS = frozenset(
    {
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }
)
_CASE_INSENSITIVE = {"PatientName", "ReferringPhysicianName"}


class Condition(Protocol):
    """One matching condition of a query (``dicom_node.net.query.Match`` fits).

    ``kind`` is ``single``, ``wildcard`` (``*``, ``?``), ``range`` (values
    ``(low, high)``, empty = open) or ``list`` (any of the values).
    """

    @property
    def keyword(self) -> str:
        """DICOM keyword of the matched attribute."""

    @property
    def kind(self) -> Any:
        """Matching kind (a str, or a str Enum)."""

    @property
    def values(self) -> tuple[str, ...]:
        """The values to match."""


def _kind(kind: Any) -> str:
    """The matching kind as a plain string (str Enums included)."""
    return str(getattr(kind, "value", kind))


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition_clause(column: Any, condition: Condition) -> Any:
    kind, values = _kind(condition.kind), condition.values
    insensitive = condition.keyword in _CASE_INSENSITIVE
    if kind == "single":
        if isinstance(column.type, sa.Integer):
            try:
                return column == int(values[0])
            except ValueError:
                return sa.false()
        if insensitive:
            return sa.func.lower(column) == values[0].lower()
        return column == values[0]
    if kind == "wildcard":
        pattern = _like_pattern(values[0])
        return (
            column.ilike(pattern, escape="\\") if insensitive else column.like(pattern, escape="\\")
        )
    if kind == "range":
        low, high = values
        clauses = []
        if low:
            clauses.append(column >= low)
        if high:
            # A time range's high bound "1200" includes 120059.
            clauses.append(
                column <= high + ("\uffff" if condition.keyword.endswith("Time") else "")
            )
        return sa.and_(*clauses)
    if kind == "list":
        return column.in_(values)
    raise CatalogError(f"unknown matching kind {kind!r}")


@dataclass(frozen=True)
class _AsKeyword:
    """A condition re-targeted at another keyword (ModalitiesInStudy -> Modality)."""

    keyword: str
    condition: Any

    @property
    def kind(self) -> str:
        return _kind(self.condition.kind)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.condition.values)


class FindCatalog:
    """Study Root matching.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def match(
        self, level: Level | str, conditions: Sequence[Condition]
    ) -> Iterator[dict[str, Any]]:
        """Rows matching a Study Root query, keyed by DICOM keyword.

        Parameters
        ----------
        level : Level or str
            ``STUDY``, ``SERIES`` or ``IMAGE``.
        conditions : sequence of Condition
            Matching keys of ``level`` and the levels above it.

        Yields
        ------
        dict
            One row per match, with every key of :data:`KEYS` up to ``level``.
        """
        level = Level(level)
        columns = dict(_COLUMNS[Level.STUDY])
        if level in (Level.SERIES, Level.IMAGE):
            columns |= _COLUMNS[Level.SERIES]
        if level is Level.IMAGE:
            columns |= _COLUMNS[Level.IMAGE]
        query = sa.select(*(column.label(keyword) for keyword, column in columns.items()))
        if level is Level.STUDY:
            query = query.select_from(studies)
        elif level is Level.SERIES:
            query = query.select_from(series.join(studies))
        else:
            query = query.select_from(instances.join(series).join(studies))
        for condition in conditions:
            if condition.keyword == "ModalitiesInStudy":
                modality = _condition_clause(series.c.modality, _AsKeyword("Modality", condition))
                query = query.where(
                    sa.exists()
                    .where(series.c.study_instance_uid == studies.c.study_instance_uid)
                    .where(modality)
                )
            elif condition.keyword in columns:
                query = query.where(_condition_clause(columns[condition.keyword], condition))
        order = {
            Level.STUDY: [studies.c.study_date, studies.c.study_instance_uid],
            Level.SERIES: [series.c.series_number, series.c.series_instance_uid],
            Level.IMAGE: [instances.c.instance_number, instances.c.sop_instance_uid],
        }[level]
        with self._db.begin() as connection:
            rows = [dict(row) for row in connection.execute(query.order_by(*order)).mappings()]
        if level is Level.STUDY and rows:
            self._add_study_aggregates(rows)
        yield from rows

    def _add_study_aggregates(self, rows: list[dict[str, Any]]) -> None:
        uids = [row["StudyInstanceUID"] for row in rows]
        found: dict[str, dict[str, Any]] = {}
        with self._db.begin() as connection:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                result = connection.execute(
                    sa.select(
                        series.c.study_instance_uid, series.c.modality, series.c.instance_count
                    ).where(series.c.study_instance_uid.in_(chunk))
                )
                for study_uid, modality, count in result:
                    entry = found.setdefault(
                        study_uid, {"modalities": [], "series": 0, "instances": 0}
                    )
                    if modality and modality not in entry["modalities"]:
                        entry["modalities"].append(modality)
                    entry["series"] += 1
                    entry["instances"] += int(count)
        for row in rows:
            entry = found.get(
                row["StudyInstanceUID"], {"modalities": [], "series": 0, "instances": 0}
            )
            row["ModalitiesInStudy"] = "\\".join(sorted(entry["modalities"]))
            row["NumberOfStudyRelatedSeries"] = entry["series"]
            row["NumberOfStudyRelatedInstances"] = entry["instances"]

    def study_uids_with_accession(self, accession_number: str | None) -> list[str]:
        """Study UIDs whose AccessionNumber is this one (None or "": studies without one)."""
        column = studies.c.accession_number
        where = (
            sa.or_(column.is_(None), column == "")
            if not accession_number
            else column == accession_number
        )
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(studies.c.study_instance_uid)
                .where(where)
                .order_by(studies.c.study_instance_uid)
            ).all()
        return [str(r[0]) for r in rows]
