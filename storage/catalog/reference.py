"""The reference library: series whose nodules were given, not detected.

``dicom-node import-crops`` stores public crops (LIDC-IDRI) as CT series and
records each crop's nodules as the readers gave them (:meth:`ReferenceCatalog.record`).
Their codes are written like any series' (``NoduleCatalog.replace``); the
series is then marked ``reference`` with a finished ``analysis`` job for the
model version (:meth:`ReferenceCatalog.mark_indexed`), so no worker claims it
for detection. Queued again (``dicom-node reindex``, a new model), the worker
finds the given nodules here and encodes them instead of detecting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.leases import job_key
from storage.catalog.records import GivenNodule
from storage.catalog.schema import JobState, SeriesState, jobs, reference_nodules, series

__all__ = ["ReferenceCatalog"]


class ReferenceCatalog:
    """Given nodules of reference series, and the mark that they are indexed.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def record(
        self, series_instance_uid: str, given: Sequence[GivenNodule], *, now: float | None = None
    ) -> None:
        """Store a reference series' given nodules, replacing earlier ones (one transaction)."""
        now = time.time() if now is None else now
        this_series = reference_nodules.c.series_instance_uid == series_instance_uid
        with self._db.begin() as connection:
            connection.execute(reference_nodules.delete().where(this_series))
            for nodule in given:
                connection.execute(
                    reference_nodules.insert().values(
                        series_instance_uid=series_instance_uid,
                        created_at=now,
                        **(
                            nodule.columns()
                            | {"ratings": json.dumps(nodule.ratings, sort_keys=True)}
                        ),
                    )
                )

    def of_series(self, series_instance_uid: str) -> list[GivenNodule]:
        """The given nodules of a series by index; empty for a series that is not a reference."""
        query = (
            sa.select(reference_nodules)
            .where(reference_nodules.c.series_instance_uid == series_instance_uid)
            .order_by(reference_nodules.c.nodule_index)
        )
        with self._db.begin() as connection:
            return [
                GivenNodule.from_columns(
                    r, ratings={str(k): int(v) for k, v in json.loads(r.ratings).items()}
                )
                for r in connection.execute(query).all()
            ]

    def series_count(self) -> int:
        """Reference series in the catalog (those with given nodules)."""
        query = sa.select(sa.func.count(sa.distinct(reference_nodules.c.series_instance_uid)))
        with self._db.begin() as connection:
            return int(connection.execute(query).scalar() or 0)

    def is_indexed(self, series_instance_uid: str, step: str, version: str) -> bool:
        """True when the series is ``reference`` and ``step`` finished on it for ``version``."""
        query = (
            sa.select(jobs.c.id)
            .join(series, series.c.series_instance_uid == jobs.c.series_instance_uid)
            .where(*job_key(series_instance_uid, step, version))
            .where(jobs.c.state == JobState.DONE.value)
            .where(series.c.state == SeriesState.REFERENCE.value)
        )
        with self._db.begin() as connection:
            return connection.execute(query).first() is not None

    def mark_indexed(
        self,
        series_instance_uid: str,
        step: str,
        version: str,
        reason: str,
        *,
        now: float | None = None,
    ) -> bool:
        """Mark a reference series indexed for ``version``: ``reference``, ``step`` done.

        Only a series that no worker holds (``receiving``, ``complete`` or
        ``reference``) is marked; one a worker claimed meanwhile is left to it
        (it encodes the given nodules itself).

        Returns
        -------
        bool
            True if the series was marked.
        """
        now = time.time() if now is None else now
        movable = [SeriesState.RECEIVING, SeriesState.COMPLETE, SeriesState.REFERENCE]
        with self._db.begin() as connection:
            moved = connection.execute(
                series.update()
                .where(series.c.series_instance_uid == series_instance_uid)
                .where(series.c.state.in_([s.value for s in movable]))
                .values(state=SeriesState.REFERENCE.value, reason=reason, state_changed_at=now)
            ).rowcount
            if not moved:
                return False
            done = {
                "state": JobState.DONE.value,
                "worker": None,
                "lease_expires_at": None,
                "outcome": SeriesState.REFERENCE.value,
                "detail": reason,
                "started_at": now,
                "finished_at": now,
            }
            connection.execute(
                self._db.insert(jobs)
                .values(
                    series_instance_uid=series_instance_uid,
                    step=step,
                    version=version,
                    attempts=1,
                    created_at=now,
                    **done,
                )
                .on_conflict_do_update(
                    index_elements=["series_instance_uid", "step", "version"], set_=done
                )
            )
        return True
