"""Intake: received instances and the rows they create; the node's generated results.

A received instance belongs to a series and may (re)open it; a generated
result (SR, key images) belongs to its study only and never touches series
state, so the node's own objects are never completed or processed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.records import STUDY_FIELDS, GeneratedResult, InstanceRecord, StudyRecord
from storage.catalog.schema import ResultKind, SeriesState, instances, results, series, studies

__all__ = ["IntakeCatalog", "study_record"]

logger = logging.getLogger(__name__)


def study_record(row: Any) -> StudyRecord:
    """A :class:`StudyRecord` from a row holding the study columns."""
    return StudyRecord(
        study_instance_uid=row.study_instance_uid,
        **{name: getattr(row, name) for name in STUDY_FIELDS},
    )


def _result(row: Any) -> GeneratedResult:
    return GeneratedResult(
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        source_series_instance_uid=row.source_series_instance_uid,
        kind=ResultKind(row.kind),
        model_version=row.model_version,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        relative_path=row.relative_path,
        size=int(row.size),
        sha256=row.sha256,
        created_at=float(row.created_at),
        revision=int(row.revision),
        content_digest=row.content_digest,
        superseded_by=row.superseded_by,
    )


class IntakeCatalog:
    """Record received instances; read studies back.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        # Series known to have their study and series rows: later instances
        # skip those two statements (rows are never deleted while running).
        self._known_series: set[str] = set()
        # The two statements run for every received instance, built once:
        # constructing statements per call costs more than executing them.
        self._insert_instance = (
            database.insert(instances)
            .on_conflict_do_nothing()
            .returning(instances.c.sop_instance_uid)
        )
        self._touch_series = (
            series.update()
            .where(series.c.series_instance_uid == sa.bindparam("uid"))
            .values(
                instance_count=series.c.instance_count + 1,
                last_received_at=sa.bindparam("now"),
                state=SeriesState.RECEIVING.value,
                reason=None,
                send_results=True,
                state_changed_at=sa.case(
                    (series.c.state == SeriesState.RECEIVING.value, series.c.state_changed_at),
                    else_=sa.bindparam("now"),
                ),
            )
            .returning(series.c.instance_count, series.c.state_changed_at)
        )

    def knows_series(self, series_instance_uid: str) -> bool:
        """True if this catalog object has recorded an instance of the series.

        Callers may then leave the study and series attributes of an
        :class:`InstanceRecord` empty: they are only used to create the rows.
        """
        return series_instance_uid in self._known_series

    def record_instance(self, record: InstanceRecord, *, now: float | None = None) -> bool:
        """Catalog one stored instance in one transaction.

        A new instance (re)opens its series: the state becomes ``receiving``
        and the idle timer restarts, so late instances reopen a finished
        series.

        Returns
        -------
        bool
            True if the instance is new, False if it was already catalogued
            (then nothing changes).

        Raises
        ------
        CatalogError
            The transaction failed; nothing was recorded.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            if record.series_instance_uid not in self._known_series:
                self._db.insert_ignore(
                    connection,
                    studies,
                    {
                        "study_instance_uid": record.study_instance_uid,
                        "created_at": now,
                        **{k: getattr(record, k) for k in STUDY_FIELDS},
                    },
                )
                self._db.insert_ignore(
                    connection,
                    series,
                    {
                        "series_instance_uid": record.series_instance_uid,
                        "study_instance_uid": record.study_instance_uid,
                        "modality": record.modality,
                        "series_number": record.series_number,
                        "series_description": record.series_description,
                        "calling_ae_title": record.calling_ae_title,
                        "state": SeriesState.RECEIVING.value,
                        "send_results": True,
                        "instance_count": 0,
                        "first_received_at": now,
                        "last_received_at": now,
                        "state_changed_at": now,
                    },
                )
            inserted = connection.execute(
                self._insert_instance,
                {
                    "sop_instance_uid": record.sop_instance_uid,
                    "series_instance_uid": record.series_instance_uid,
                    "sop_class_uid": record.sop_class_uid,
                    "instance_number": record.instance_number,
                    "transfer_syntax_uid": record.transfer_syntax_uid,
                    "relative_path": record.relative_path,
                    "size": record.size,
                    "sha256": record.sha256,
                    "received_at": now,
                },
            ).first()
            if inserted is None:
                return False  # already catalogued (a resend, or a concurrent association)
            count, changed_at = connection.execute(
                self._touch_series, {"uid": record.series_instance_uid, "now": now}
            ).one()
        self._known_series.add(record.series_instance_uid)
        if count > 1 and changed_at == now:
            logger.info("series %s reopened by a late instance", record.series_instance_uid)
        return True

    def record_result(self, result: GeneratedResult) -> bool:
        """Catalog a generated object of a study; False if it already was."""
        with self._db.begin() as connection:
            return self._db.insert_ignore(
                connection,
                results,
                {
                    "sop_instance_uid": result.sop_instance_uid,
                    "study_instance_uid": result.study_instance_uid,
                    "series_instance_uid": result.series_instance_uid,
                    "source_series_instance_uid": result.source_series_instance_uid,
                    "kind": result.kind.value,
                    "model_version": result.model_version,
                    "sop_class_uid": result.sop_class_uid,
                    "transfer_syntax_uid": result.transfer_syntax_uid,
                    "relative_path": result.relative_path,
                    "size": result.size,
                    "sha256": result.sha256,
                    "created_at": result.created_at,
                    "revision": result.revision,
                    "content_digest": result.content_digest,
                    "superseded_by": result.superseded_by,
                },
            )

    def current_result(
        self, study_instance_uid: str, model_version: str, kind: ResultKind
    ) -> GeneratedResult | None:
        """The latest revision of one kind of result of a study and model version, or None."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(results)
                .where(results.c.study_instance_uid == study_instance_uid)
                .where(results.c.model_version == model_version)
                .where(results.c.kind == kind.value)
                .order_by(results.c.revision.desc())
                .limit(1)
            ).first()
        return None if row is None else _result(row)

    def supersede(self, replaced: GeneratedResult, by_sop_instance_uid: str) -> None:
        """Record that a newer revision replaced ``replaced`` (and every older one)."""
        with self._db.begin() as connection:
            connection.execute(
                results.update()
                .where(results.c.study_instance_uid == replaced.study_instance_uid)
                .where(results.c.model_version == replaced.model_version)
                .where(results.c.kind == replaced.kind.value)
                .where(results.c.revision <= replaced.revision)
                .where(results.c.superseded_by.is_(None))
                .values(superseded_by=by_sop_instance_uid)
            )

    def generated_result(self, sop_instance_uid: str) -> GeneratedResult | None:
        """The generated object with this SOP Instance UID, or None."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(results).where(results.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return None if row is None else _result(row)

    def generated_results(
        self, study_instance_uid: str | None = None, *, current_only: bool = False
    ) -> list[GeneratedResult]:
        """Generated objects (of one study, or all), oldest first; optionally only
        the current revisions (those not superseded)."""
        query = sa.select(results).order_by(results.c.created_at, results.c.sop_instance_uid)
        if study_instance_uid is not None:
            query = query.where(results.c.study_instance_uid == study_instance_uid)
        if current_only:
            query = query.where(results.c.superseded_by.is_(None))
        with self._db.begin() as connection:
            return [_result(r) for r in connection.execute(query).all()]

    def study(self, study_instance_uid: str) -> StudyRecord | None:
        """One study, or None."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(studies).where(studies.c.study_instance_uid == study_instance_uid)
            ).first()
        return None if row is None else study_record(row)

    def instance_count(self) -> int:
        """Number of catalogued instances."""
        with self._db.begin() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(instances)).scalar_one()
            )

    def is_result_series(self, series_instance_uid: str) -> bool:
        """True if the series holds generated results (the node's own SR or key images)."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(results.c.sop_instance_uid)
                .where(results.c.series_instance_uid == series_instance_uid)
                .limit(1)
            ).first()
        return row is not None

    def paths_in_series(self, series_instance_uid: str) -> set[str]:
        """Relative paths of the catalogued files (instances and results) of a series."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(instances.c.relative_path)
                .where(instances.c.series_instance_uid == series_instance_uid)
                .union_all(
                    sa.select(results.c.relative_path).where(
                        results.c.series_instance_uid == series_instance_uid
                    )
                )
            ).all()
        return {str(row[0]) for row in rows}

    def instance_paths(self) -> dict[str, str]:
        """``{sop_instance_uid: relative_path}`` for every instance."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(instances.c.sop_instance_uid, instances.c.relative_path)
            ).all()
        return {str(r[0]): str(r[1]) for r in rows}
