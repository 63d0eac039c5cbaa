"""Workflow: the series state machine and the jobs run on series."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.catalog.engine import Database
from storage.catalog.records import JobRecord, SeriesSummary
from storage.catalog.schema import JobState, SeriesState, instances, jobs, series, studies

__all__ = ["WorkflowCatalog"]


class WorkflowCatalog:
    """Series states, their transitions, and processing jobs.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    # -- series state ------------------------------------------------------

    def due_series(self, idle_seconds: float, *, now: float | None = None) -> list[str]:
        """Series still ``receiving`` whose last instance is older than ``idle_seconds``."""
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(series.c.series_instance_uid)
                .where(series.c.state == SeriesState.RECEIVING.value)
                .where(series.c.last_received_at <= now - idle_seconds)
                .order_by(series.c.last_received_at)
            ).all()
        return [str(row[0]) for row in rows]

    def transition(
        self,
        series_instance_uid: str,
        to_state: SeriesState,
        *,
        from_states: Iterable[SeriesState] | None = None,
        reason: str | None = None,
        idle_before: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Atomically move a series to ``to_state``.

        Parameters
        ----------
        from_states : iterable of SeriesState, optional
            Only move it if it is in one of these states.
        idle_before : float, optional
            Only move it if its last instance arrived at or before this time
            (guards ``receiving → complete`` against a late instance racing in).

        Returns
        -------
        bool
            True if the row changed.
        """
        now = time.time() if now is None else now
        statement = series.update().where(series.c.series_instance_uid == series_instance_uid)
        if from_states is not None:
            statement = statement.where(series.c.state.in_([s.value for s in from_states]))
        if idle_before is not None:
            statement = statement.where(series.c.last_received_at <= idle_before)
        statement = statement.values(state=to_state.value, reason=reason, state_changed_at=now)
        with self._db.begin() as connection:
            changed = connection.execute(statement).rowcount
        return bool(changed)

    def send_results(self, series_instance_uid: str) -> bool:
        """False when the series was queued again by ``reindex`` without ``--send-results``
        and no instance arrived since: its results are kept, not sent."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(series.c.send_results).where(
                    series.c.series_instance_uid == series_instance_uid
                )
            ).first()
        return True if row is None else bool(row[0])

    def requeue(
        self,
        series_instance_uids: Sequence[str],
        from_states: Sequence[SeriesState],
        *,
        send_results: bool,
        reason: str,
        now: float | None = None,
    ) -> int:
        """Put processed series back to ``complete`` (their jobs forgotten) to run again.

        Returns
        -------
        int
            How many series moved.
        """
        now = time.time() if now is None else now
        moved = 0
        with self._db.begin() as connection:
            for start in range(0, len(series_instance_uids), 500):
                chunk = list(series_instance_uids[start : start + 500])
                connection.execute(jobs.delete().where(jobs.c.series_instance_uid.in_(chunk)))
                moved += connection.execute(
                    series.update()
                    .where(series.c.series_instance_uid.in_(chunk))
                    .where(series.c.state.in_([s.value for s in from_states]))
                    .values(
                        state=SeriesState.COMPLETE.value,
                        reason=reason,
                        state_changed_at=now,
                        send_results=send_results,
                    )
                ).rowcount
        return moved

    def series_in_states(self, states: Sequence[SeriesState]) -> list[str]:
        """Series UIDs in any of ``states``, oldest change first."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(series.c.series_instance_uid)
                .where(series.c.state.in_([s.value for s in states]))
                .order_by(series.c.state_changed_at)
            ).all()
        return [str(row[0]) for row in rows]

    def due_for_step(self, state: SeriesState, step: str, version: str) -> list[str]:
        """Series in ``state`` that the step (of this version) has yet to run on, oldest first.

        Due means: no job row, a job not finished, or a job finished before
        the series' last instance arrived (a late instance reopened it after
        the step ran; after a restart it must run again, not be skipped).
        """
        finished = [JobState.DONE.value, JobState.FAILED.value]
        joined = series.outerjoin(
            jobs,
            sa.and_(
                jobs.c.series_instance_uid == series.c.series_instance_uid,
                jobs.c.step == step,
                jobs.c.version == version,
            ),
        )
        query = (
            sa.select(series.c.series_instance_uid)
            .select_from(joined)
            .where(series.c.state == state.value)
            .where(
                sa.or_(
                    jobs.c.id.is_(None),
                    jobs.c.state.not_in(finished),
                    jobs.c.finished_at < series.c.last_received_at,
                )
            )
            .order_by(series.c.state_changed_at)
        )
        with self._db.begin() as connection:
            return [str(row[0]) for row in connection.execute(query).all()]

    def series_state(self, series_instance_uid: str) -> tuple[SeriesState, str | None] | None:
        """The state and reason of a series, or None if unknown."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(series.c.state, series.c.reason).where(
                    series.c.series_instance_uid == series_instance_uid
                )
            ).first()
        return None if row is None else (SeriesState(row[0]), row[1])

    def series_instance_paths(self, series_instance_uid: str) -> list[str]:
        """Relative paths of a series' instances, by InstanceNumber then UID."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(instances.c.relative_path)
                .where(instances.c.series_instance_uid == series_instance_uid)
                .order_by(instances.c.instance_number, instances.c.sop_instance_uid)
            ).all()
        return [str(row[0]) for row in rows]

    def summaries(self) -> list[SeriesSummary]:
        """Every series with its study, newest study first."""
        query = (
            sa.select(
                series.c.study_instance_uid,
                series.c.series_instance_uid,
                series.c.modality,
                series.c.series_number,
                series.c.series_description,
                series.c.instance_count,
                series.c.state,
                series.c.reason,
                series.c.last_received_at,
                studies.c.study_date,
                studies.c.patient_name,
                studies.c.patient_id,
            )
            .join(studies, studies.c.study_instance_uid == series.c.study_instance_uid)
            .order_by(
                studies.c.study_date.desc(),
                series.c.study_instance_uid,
                series.c.series_number,
                series.c.series_instance_uid,
            )
        )
        with self._db.begin() as connection:
            rows = connection.execute(query).all()
        return [
            SeriesSummary(
                study_instance_uid=row.study_instance_uid,
                series_instance_uid=row.series_instance_uid,
                modality=row.modality,
                series_number=row.series_number,
                series_description=row.series_description,
                instance_count=int(row.instance_count),
                state=SeriesState(row.state),
                reason=row.reason,
                last_received_at=float(row.last_received_at),
                study_date=row.study_date,
                patient_name=row.patient_name,
                patient_id=row.patient_id,
            )
            for row in rows
        ]

    # -- jobs --------------------------------------------------------------

    def _upsert_job(
        self,
        connection: Connection,
        key: tuple[str, str, str],
        values: dict[str, Any],
        now: float,
    ) -> None:
        """Insert the job of ``key`` (series, step, version) or update it with ``values``."""
        names = dict(zip(("series_instance_uid", "step", "version"), key, strict=True))
        first = {
            **names,
            "created_at": now,
            **values,
            "attempts": 1 if values.get("state") == JobState.RUNNING.value else 0,
        }
        connection.execute(
            self._db.insert(jobs)
            .values(**first)
            .on_conflict_do_update(index_elements=list(names), set_=values)
        )

    def queue_job(
        self, series_instance_uid: str, step: str, version: str, *, now: float | None = None
    ) -> None:
        """Mark a step as due on a series (pending), whatever ran before."""
        now = time.time() if now is None else now
        values = {
            "state": JobState.PENDING.value,
            "worker": None,
            "lease_expires_at": None,
            "outcome": None,
            "detail": None,
            "started_at": None,
            "finished_at": None,
        }
        with self._db.begin() as connection:
            self._upsert_job(connection, (series_instance_uid, step, version), values, now)

    def claim(
        self,
        series_instance_uid: str,
        step: str,
        version: str,
        *,
        from_state: SeriesState,
        worker: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> bool:
        """Claim a series for a step: ``from_state → processing`` and the job running, atomically.

        Returns
        -------
        bool
            False (and nothing changed) if the series is not in ``from_state``.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            claimed = connection.execute(
                series.update()
                .where(series.c.series_instance_uid == series_instance_uid)
                .where(series.c.state == from_state.value)
                .values(state=SeriesState.PROCESSING.value, reason=None, state_changed_at=now)
            ).rowcount
            if not claimed:
                return False
            values = {
                "state": JobState.RUNNING.value,
                "attempts": jobs.c.attempts + 1,
                "worker": worker,
                "lease_expires_at": now + lease_seconds,
                "outcome": None,
                "detail": None,
                "started_at": now,
                "finished_at": None,
            }
            self._upsert_job(connection, (series_instance_uid, step, version), values, now)
        return True

    def finish(
        self,
        series_instance_uid: str,
        step: str,
        version: str,
        job_state: JobState,
        *,
        outcome: SeriesState,
        detail: str | None,
        series_reason: str | None,
        now: float | None = None,
    ) -> bool:
        """Finish a step's job and move its series ``processing → outcome``, atomically.

        Returns
        -------
        bool
            False if the series was no longer ``processing`` (a late instance
            reopened it); the job is finished either way.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.series_instance_uid == series_instance_uid)
                .where(jobs.c.step == step)
                .where(jobs.c.version == version)
                .values(
                    state=job_state.value,
                    outcome=outcome.value,
                    detail=detail,
                    finished_at=now,
                    lease_expires_at=None,
                )
            )
            moved = connection.execute(
                series.update()
                .where(series.c.series_instance_uid == series_instance_uid)
                .where(series.c.state == SeriesState.PROCESSING.value)
                .values(state=outcome.value, reason=series_reason, state_changed_at=now)
            ).rowcount
        return bool(moved)

    def job(self, series_instance_uid: str, step: str, version: str) -> JobRecord | None:
        """The job of a step on a series for a version, or None."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(jobs)
                .where(jobs.c.series_instance_uid == series_instance_uid)
                .where(jobs.c.step == step)
                .where(jobs.c.version == version)
            ).first()
        return None if row is None else _job(row)

    def jobs_in_states(self, states: Sequence[JobState]) -> list[JobRecord]:
        """Jobs in any of ``states``, oldest first."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(jobs)
                .where(jobs.c.state.in_([s.value for s in states]))
                .order_by(jobs.c.created_at, jobs.c.id)
            ).all()
        return [_job(r) for r in rows]


def _job(row: Any) -> JobRecord:
    return JobRecord(
        series_instance_uid=row.series_instance_uid,
        step=row.step,
        version=row.version,
        state=JobState(row.state),
        attempts=int(row.attempts),
        worker=row.worker,
        outcome=None if row.outcome is None else SeriesState(row.outcome),
        detail=row.detail,
        created_at=float(row.created_at),
        started_at=None if row.started_at is None else float(row.started_at),
        finished_at=None if row.finished_at is None else float(row.finished_at),
    )
