"""The fence of a claimed job: its key, its pending values, and the check that it is still held.

Every statement that writes for a claimed job (finishing it, storing the
nodules it found) runs :func:`check_held` or an equivalent condition in the
same transaction, so a worker whose lease ran out and whose job another
worker took over writes nothing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.catalog.records import Claim
from storage.catalog.schema import JobState, jobs
from storage.errors import LeaseLost

__all__ = ["PENDING", "check_held", "job_key"]

#: A job's columns when it is due and nobody holds it.
PENDING: dict[str, Any] = {
    "state": JobState.PENDING.value,
    "worker": None,
    "lease_expires_at": None,
    "outcome": None,
    "detail": None,
    "started_at": None,
    "finished_at": None,
}


def job_key(series_instance_uid: str, step: str, version: str) -> list[sa.ColumnElement[bool]]:
    """The conditions selecting the job of (series, step, version)."""
    return [
        jobs.c.series_instance_uid == series_instance_uid,
        jobs.c.step == step,
        jobs.c.version == version,
    ]


def check_held(connection: Connection, claim: Claim) -> None:
    """Lock the claimed job's row if ``claim.worker`` still holds it, else raise LeaseLost.

    Called first in a transaction that writes a step's results (the fence:
    a worker whose job was taken over writes nothing).

    Raises
    ------
    LeaseLost
    """
    held = connection.execute(
        sa.select(jobs.c.id)
        .where(*job_key(claim.series_instance_uid, claim.step, claim.version))
        .where(jobs.c.worker == claim.worker)
        .where(jobs.c.state == JobState.RUNNING.value)
        .with_for_update()
    ).first()
    if held is None:
        raise LeaseLost(
            f"series {claim.series_instance_uid}: the {claim.step} job is no longer held by "
            f"{claim.worker} (its lease ran out and another worker took it over)"
        )
