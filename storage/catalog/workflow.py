"""Workflow: the series state machine and the jobs run on series.

Jobs are claimed by workers under leases: the node's own threads and any
number of ``dicom-node worker`` processes share the same statements
(:meth:`WorkflowCatalog.claim_next`, :meth:`~WorkflowCatalog.renew`,
:meth:`~WorkflowCatalog.finish`). Every write of a claimed job names its
holder, so a worker whose job was taken over changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.catalog.engine import Database
from storage.catalog.leases import PENDING, check_held, job_key
from storage.catalog.records import Claim, Finished, JobRecord, SeriesSummary, StepKey
from storage.catalog.schema import JobState, SeriesState, instances, jobs, series, studies

__all__ = ["WorkflowCatalog"]

logger = logging.getLogger(__name__)


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
        query = sa.select(series.c.send_results).where(
            series.c.series_instance_uid == series_instance_uid
        )
        with self._db.begin() as connection:
            row = connection.execute(query).first()
        return True if row is None else bool(row[0])

    def requeue(
        self, uids: Sequence[str], from_states: Sequence[SeriesState], *, send_results: bool,
        reason: str, now: float | None = None,
    ) -> int:  # fmt: skip
        """Put series back to ``complete`` (their jobs forgotten) to run again; return how many."""
        now = time.time() if now is None else now
        moved = 0
        with self._db.begin() as connection:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start : start + 500])
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
        of_step = (jobs.c.step == step) & (jobs.c.version == version)
        joined = series.outerjoin(
            jobs, (jobs.c.series_instance_uid == series.c.series_instance_uid) & of_step
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

    # -- jobs ------------------------------------------------------------

    def complete(
        self, series_instance_uid: str, *, idle_before: float, now: float | None = None
    ) -> bool:
        """``receiving → complete`` if the last instance arrived at or before ``idle_before``.

        The series' finished jobs become pending in the same transaction: new
        instances arrived since they ran, so every step is due again.

        Returns
        -------
        bool
            True if the series changed (False: a late instance raced in, or
            another node completed it first).
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            moved = connection.execute(
                series.update()
                .where(series.c.series_instance_uid == series_instance_uid)
                .where(series.c.state == SeriesState.RECEIVING.value)
                .where(series.c.last_received_at <= idle_before)
                .values(state=SeriesState.COMPLETE.value, reason=None, state_changed_at=now)
            ).rowcount
            if moved:
                connection.execute(
                    jobs.update()
                    .where(jobs.c.series_instance_uid == series_instance_uid)
                    .where(jobs.c.state.in_([JobState.DONE.value, JobState.FAILED.value]))
                    .values(**PENDING)
                )
        return bool(moved)

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
        with self._db.begin() as connection:
            self._upsert_job(connection, (series_instance_uid, step, version), dict(PENDING), now)

    def _claim_in(
        self,
        connection: Connection,
        series_instance_uid: str,
        step: StepKey,
        worker: str,
        lease_seconds: float,
        now: float,
    ) -> Claim | None:
        """In ``connection``'s transaction: ``requires → processing`` and the job running."""
        claimed = connection.execute(
            series.update()
            .where(series.c.series_instance_uid == series_instance_uid)
            .where(series.c.state == step.requires.value)
            .values(state=SeriesState.PROCESSING.value, reason=None, state_changed_at=now)
        ).rowcount
        if not claimed:
            return None
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
        key = (series_instance_uid, step.name, step.version)
        self._upsert_job(connection, key, values, now)
        attempts = connection.execute(sa.select(jobs.c.attempts).where(*job_key(*key))).scalar()
        return Claim(series_instance_uid, step.name, step.version, worker, int(attempts or 1))

    def claim(
        self,
        series_instance_uid: str,
        step: StepKey,
        *,
        worker: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> Claim | None:
        """Claim one series for a step: ``requires → processing`` and the job running, atomically.

        Returns
        -------
        Claim or None
            None (and nothing changed) if the series is not in ``step.requires``.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            return self._claim_in(connection, series_instance_uid, step, worker, lease_seconds, now)

    def claim_next(
        self,
        steps: Sequence[StepKey],
        *,
        worker: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> Claim | None:
        """Claim the next due job of any of ``steps``, for ``worker``, under a lease.

        First a job whose holder's lease ran out (the holder died: it is taken
        over as it stands, the series still ``processing``), then a series
        waiting in a step's starting state whose job is pending or absent,
        later steps first (series under way finish before new ones start),
        oldest first. Rows are selected ``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL, so concurrent workers never wait on each other's
        candidate; every update is conditional on the state it read, so on
        SQLite (no row locks) the loser of a race changes nothing.

        Returns
        -------
        Claim or None
            None when nothing is due.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            claim = self._take_over(connection, steps, worker, lease_seconds, now)
            for step in reversed(steps):
                if claim is not None:
                    break
                uid = connection.execute(
                    sa.select(series.c.series_instance_uid)
                    .where(series.c.state == step.requires.value)
                    .where(
                        ~sa.select(jobs.c.id)
                        .where(jobs.c.series_instance_uid == series.c.series_instance_uid)
                        .where(jobs.c.step == step.name)
                        .where(jobs.c.version == step.version)
                        .where(jobs.c.state != JobState.PENDING.value)
                        .exists()
                    )
                    .order_by(series.c.state_changed_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).scalar()
                if uid is not None:
                    claim = self._claim_in(connection, uid, step, worker, lease_seconds, now)
        return claim

    def _take_over(
        self,
        connection: Connection,
        steps: Sequence[StepKey],
        worker: str,
        lease_seconds: float,
        now: float,
    ) -> Claim | None:
        keys = sa.or_(*[sa.and_(jobs.c.step == s.name, jobs.c.version == s.version) for s in steps])
        expired = (jobs.c.state == JobState.RUNNING.value) & (jobs.c.lease_expires_at < now) & keys
        row = connection.execute(
            sa.select(
                jobs.c.id,
                jobs.c.series_instance_uid,
                jobs.c.step,
                jobs.c.version,
                jobs.c.attempts,
                jobs.c.worker,
            )
            .where(expired)
            .order_by(jobs.c.lease_expires_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            return None
        taken = connection.execute(
            jobs.update()
            .where(jobs.c.id == row.id)
            .where(expired)
            .values(
                worker=worker,
                lease_expires_at=now + lease_seconds,
                attempts=row.attempts + 1,
                started_at=now,
            )
        ).rowcount
        if not taken:
            return None
        logger.warning(
            "series %s: %s taken over from %s, whose lease ran out",
            row.series_instance_uid,
            row.step,
            row.worker,
        )
        return Claim(row.series_instance_uid, row.step, row.version, worker, row.attempts + 1)

    def ensure_held(self, claim: Claim) -> None:
        """Raise LeaseLost unless ``claim.worker`` still holds its job (before writing results)."""
        with self._db.begin() as connection:
            check_held(connection, claim)

    def renew(self, worker_prefix: str, lease_seconds: float, *, now: float | None = None) -> int:
        """Extend the leases of the running jobs held by workers named ``worker_prefix…``.

        Returns
        -------
        int
            Jobs renewed (a job another worker took over is no longer ours).
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            renewed = connection.execute(
                jobs.update()
                .where(jobs.c.state == JobState.RUNNING.value)
                .where(jobs.c.worker.startswith(worker_prefix, autoescape=True))
                .values(lease_expires_at=now + lease_seconds)
            ).rowcount
        return int(renewed)

    def expire(self, workers: Sequence[str]) -> int:
        """End the leases of running jobs held by ``workers`` (known dead); return how many."""
        if not workers:
            return 0
        with self._db.begin() as connection:
            expired = connection.execute(
                jobs.update()
                .where(jobs.c.state == JobState.RUNNING.value)
                .where(jobs.c.worker.in_(list(workers)))
                .values(lease_expires_at=0.0)
            ).rowcount
        return int(expired)

    def release(self, claim: Claim, back_to: SeriesState, *, now: float | None = None) -> bool:
        """Give back a claimed job not started: pending again, the series ``back_to``.

        Returns
        -------
        bool
            False if the job was no longer the claimant's (nothing changed).
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            released = connection.execute(
                jobs.update()
                .where(*job_key(claim.series_instance_uid, claim.step, claim.version))
                .where(jobs.c.worker == claim.worker)
                .where(jobs.c.state == JobState.RUNNING.value)
                .values(**PENDING, attempts=jobs.c.attempts - 1)
            ).rowcount
            if released:
                connection.execute(
                    series.update()
                    .where(series.c.series_instance_uid == claim.series_instance_uid)
                    .where(series.c.state == SeriesState.PROCESSING.value)
                    .values(state=back_to.value, state_changed_at=now)
                )
        return bool(released)

    def finish(
        self,
        claim: Claim,
        job_state: JobState,
        *,
        outcome: SeriesState,
        detail: str | None,
        series_reason: str | None,
        then: StepKey | None = None,
        lease_seconds: float = 0.0,
        now: float | None = None,
    ) -> tuple[Finished, Claim | None]:
        """Finish a claimed job and move its series ``processing → outcome``, atomically.

        Parameters
        ----------
        claim : Claim
            The job; it is finished only if ``claim.worker`` still holds it.
        then : StepKey, optional
            The next step: when ``outcome`` is its starting state, it is claimed
            for the same worker in the same transaction (no other worker can
            take the series between the two steps).
        lease_seconds : float
            The lease of that next claim.

        Returns
        -------
        (Finished, Claim or None)
            What happened, and the claim of ``then`` when it was made.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            finished = connection.execute(
                jobs.update()
                .where(*job_key(claim.series_instance_uid, claim.step, claim.version))
                .where(jobs.c.worker == claim.worker)
                .where(jobs.c.state == JobState.RUNNING.value)
                .values(
                    state=job_state.value,
                    outcome=outcome.value,
                    detail=detail,
                    finished_at=now,
                    lease_expires_at=None,
                )
            ).rowcount
            if not finished:
                return Finished.LOST, None
            moved = connection.execute(
                series.update()
                .where(series.c.series_instance_uid == claim.series_instance_uid)
                .where(series.c.state == SeriesState.PROCESSING.value)
                .values(state=outcome.value, reason=series_reason, state_changed_at=now)
            ).rowcount
            if not moved:
                return Finished.REOPENED, None
            if then is None or then.requires is not outcome:
                return Finished.MOVED, None
            following = self._claim_in(
                connection, claim.series_instance_uid, then, claim.worker, lease_seconds, now
            )
            return Finished.MOVED, following

    def job(self, series_instance_uid: str, step: str, version: str) -> JobRecord | None:
        """The job of a step on a series for a version, or None."""
        with self._db.begin() as connection:
            row = connection.execute(
                sa.select(jobs).where(*job_key(series_instance_uid, step, version))
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
        lease_expires_at=None if row.lease_expires_at is None else float(row.lease_expires_at),
    )
