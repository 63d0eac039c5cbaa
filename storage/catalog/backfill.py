"""Backfill checkpoints: which windows and studies of an archive are done, and backfilled series.

``dicom-node backfill`` asks the catalog what it already holds before it
downloads anything (:meth:`BackfillCatalog.known_instances`: the SOP Instance
UIDs of ``instances``), so an instance is never fetched twice, and records
what it finished (a study, a day of the archive) so that a run that was
stopped or killed resumes where it stood. Series it brings in are recorded
with what the run asked for them: whether their results may go to the
outbox destinations, and whether their pixel data is dropped once indexed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.schema import (
    BackfillStudyState,
    SeriesState,
    backfill_series,
    backfill_studies,
    backfill_windows,
    instances,
    series,
)

__all__ = ["BackfillCatalog", "BackfilledSeries", "FINISHED_SERIES_STATES"]

#: Series states after which the series' pixel data is no longer needed
#: (``indexed`` is not one: the results step still reads the headers).
FINISHED_SERIES_STATES = (
    SeriesState.REPORTED,
    SeriesState.SKIPPED,
    SeriesState.FAILED,
)

# SQLite allows 32766 bound parameters per statement (999 before 3.32).
_CHUNK = 900


@dataclass(frozen=True)
class BackfilledSeries:
    """A series brought in by a backfill, and what was asked for it."""

    series_instance_uid: str
    study_instance_uid: str
    source: str
    send_results: bool
    index_only: bool
    pixel_data_released_at: float | None


class BackfillCatalog:
    """Checkpoints of ``dicom-node backfill`` and the series it brought in.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    # -- what is held already ----------------------------------------------

    def known_instances(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """The given SOP Instance UIDs that the catalog already holds."""
        uids = list(dict.fromkeys(sop_instance_uids))
        known: set[str] = set()
        with self._db.begin() as connection:
            for start in range(0, len(uids), _CHUNK):
                chunk = uids[start : start + _CHUNK]
                rows = connection.execute(
                    sa.select(instances.c.sop_instance_uid).where(
                        instances.c.sop_instance_uid.in_(chunk)
                    )
                ).all()
                known.update(str(row[0]) for row in rows)
        return known

    def series_instance_counts(self, series_instance_uids: Sequence[str]) -> dict[str, int]:
        """Instances catalogued per series (series the catalog does not know are absent)."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(series.c.series_instance_uid, series.c.instance_count).where(
                    series.c.series_instance_uid.in_(list(series_instance_uids))
                )
            ).all()
        return {str(row[0]): int(row[1]) for row in rows}

    # -- windows and studies -----------------------------------------------

    def window_done(self, source: str, window: str) -> bool:
        """True if ``window`` of ``source`` was finished by an earlier run."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(backfill_windows.c.done_at).where(
                    (backfill_windows.c.source == source) & (backfill_windows.c.window == window)
                )
            ).first()
        return row is not None

    def finish_window(self, source: str, window: str, studies: int) -> None:
        """Record that every study of ``window`` is done."""
        values = {"source": source, "window": window, "studies": studies, "done_at": time.time()}
        with self._db.begin() as connection:
            connection.execute(
                self._db.insert(backfill_windows)
                .values(**values)
                .on_conflict_do_update(
                    index_elements=["source", "window"],
                    set_={"studies": studies, "done_at": values["done_at"]},
                )
            )

    def done_studies(self, source: str, study_instance_uids: Sequence[str]) -> set[str]:
        """The given studies that an earlier run of ``source`` finished."""
        done: set[str] = set()
        uids = list(study_instance_uids)
        with self._db.begin() as connection:
            for start in range(0, len(uids), _CHUNK):
                rows = connection.execute(
                    sa.select(backfill_studies.c.study_instance_uid).where(
                        (backfill_studies.c.source == source)
                        & (backfill_studies.c.state == BackfillStudyState.DONE.value)
                        & backfill_studies.c.study_instance_uid.in_(uids[start : start + _CHUNK])
                    )
                ).all()
                done.update(str(row[0]) for row in rows)
        return done

    def finish_study(
        self,
        source: str,
        study_instance_uid: str,
        state: BackfillStudyState,
        *,
        study_date: str | None,
        instances_fetched: int,
        bytes_fetched: int,
        detail: str | None = None,
    ) -> None:
        """Record the outcome of one study (a later run retries a failed one)."""
        values = {
            "source": source,
            "study_instance_uid": study_instance_uid,
            "study_date": study_date,
            "state": state.value,
            "instances_fetched": instances_fetched,
            "bytes_fetched": bytes_fetched,
            "detail": detail,
            "updated_at": time.time(),
        }
        update = {k: v for k, v in values.items() if k not in ("source", "study_instance_uid")}
        with self._db.begin() as connection:
            connection.execute(
                self._db.insert(backfill_studies)
                .values(**values)
                .on_conflict_do_update(index_elements=["source", "study_instance_uid"], set_=update)
            )

    def study_counts(self, source: str) -> dict[BackfillStudyState, int]:
        """Studies of ``source`` per state."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(backfill_studies.c.state, sa.func.count())
                .where(backfill_studies.c.source == source)
                .group_by(backfill_studies.c.state)
            ).all()
        return {BackfillStudyState(row[0]): int(row[1]) for row in rows}

    # -- backfilled series -------------------------------------------------

    def record_series(
        self,
        series_instance_uid: str,
        study_instance_uid: str,
        *,
        source: str,
        send_results: bool,
        index_only: bool,
    ) -> None:
        """Record (or update) what a backfill asks for a series it brings in."""
        values = {
            "series_instance_uid": series_instance_uid,
            "study_instance_uid": study_instance_uid,
            "source": source,
            "send_results": send_results,
            "index_only": index_only,
            "created_at": time.time(),
        }
        with self._db.begin() as connection:
            connection.execute(
                self._db.insert(backfill_series)
                .values(**values)
                .on_conflict_do_update(
                    index_elements=["series_instance_uid"],
                    set_={"send_results": send_results, "index_only": index_only},
                )
            )

    def series(self, series_instance_uid: str) -> BackfilledSeries | None:
        """The backfill record of a series, or None for a series that was sent to the node."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(backfill_series).where(
                    backfill_series.c.series_instance_uid == series_instance_uid
                )
            ).first()
        return None if row is None else _backfilled(row)

    def may_send_results(self, series_instance_uid: str) -> bool:
        """False for a backfilled series whose run did not ask for ``--send-results``."""
        record = self.series(series_instance_uid)
        return record is None or record.send_results

    def releasable(self) -> list[BackfilledSeries]:
        """Index-only series that are finished and still hold their pixel data."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(backfill_series)
                .join(
                    series,
                    series.c.series_instance_uid == backfill_series.c.series_instance_uid,
                )
                .where(backfill_series.c.index_only.is_(True))
                .where(backfill_series.c.pixel_data_released_at.is_(None))
                .where(series.c.state.in_([s.value for s in FINISHED_SERIES_STATES]))
            ).all()
        return [_backfilled(row) for row in rows]

    def mark_released(self, series_instance_uid: str) -> None:
        """Record that the pixel data of an index-only series is gone."""
        with self._db.begin() as connection:
            connection.execute(
                backfill_series.update()
                .where(backfill_series.c.series_instance_uid == series_instance_uid)
                .values(pixel_data_released_at=time.time())
            )

    def released_series(self, series_instance_uids: Sequence[str]) -> set[str]:
        """The given series whose pixel data was released (their files are gone)."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(backfill_series.c.series_instance_uid).where(
                    backfill_series.c.series_instance_uid.in_(list(series_instance_uids))
                    & backfill_series.c.pixel_data_released_at.is_not(None)
                )
            ).all()
        return {str(row[0]) for row in rows}


def _backfilled(row: sa.Row[tuple[object, ...]]) -> BackfilledSeries:
    return BackfilledSeries(
        series_instance_uid=str(row.series_instance_uid),
        study_instance_uid=str(row.study_instance_uid),
        source=str(row.source),
        send_results=bool(row.send_results),
        index_only=bool(row.index_only),
        pixel_data_released_at=(
            None if row.pixel_data_released_at is None else float(row.pixel_data_released_at)
        ),
    )
