"""Deliveries: the outbox rows, one per (destination, object), delivered once."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.records import Delivery, GeneratedResult
from storage.catalog.schema import DeliveryState, deliveries

__all__ = ["DeliveryCatalog"]


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=int(row.id),
        destination=row.destination,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        relative_path=row.relative_path,
        state=DeliveryState(row.state),
        attempts=int(row.attempts),
        next_attempt_at=float(row.next_attempt_at),
        created_at=float(row.created_at),
        last_error=row.last_error,
    )


class DeliveryCatalog:
    """Queue objects for destinations and record each attempt.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def enqueue(
        self, destination: str, result: GeneratedResult, *, now: float | None = None
    ) -> bool:
        """Queue a generated object for a destination; False if it already was (delivered once)."""
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            return self._db.insert_ignore(
                connection,
                deliveries,
                {
                    "destination": destination,
                    "sop_instance_uid": result.sop_instance_uid,
                    "sop_class_uid": result.sop_class_uid,
                    "transfer_syntax_uid": result.transfer_syntax_uid,
                    "relative_path": result.relative_path,
                    "state": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                },
            )

    def in_states(
        self, states: Sequence[DeliveryState] | None = None, *, due_before: float | None = None
    ) -> list[Delivery]:
        """Deliveries, oldest first, optionally by state and due time."""
        query = sa.select(deliveries).order_by(deliveries.c.id)
        if states is not None:
            query = query.where(deliveries.c.state.in_([s.value for s in states]))
        if due_before is not None:
            query = query.where(deliveries.c.next_attempt_at <= due_before)
        with self._db.begin() as connection:
            return [_delivery(r) for r in connection.execute(query).all()]

    def finish(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        error: str | None = None,
        next_attempt_at: float | None = None,
        now: float | None = None,
    ) -> None:
        """Record one attempt: done, failed, or pending again at ``next_attempt_at``."""
        now = time.time() if now is None else now
        values: dict[str, Any] = {
            "state": state.value,
            "attempts": deliveries.c.attempts + 1,
            "last_error": error,
        }
        if state is DeliveryState.DONE:
            values["done_at"] = now
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        with self._db.begin() as connection:
            connection.execute(
                deliveries.update().where(deliveries.c.id == delivery_id).values(**values)
            )

    def supersede(self, sop_instance_uid: str, by_sop_instance_uid: str) -> int:
        """Stop pending deliveries of an object a newer revision replaced; return how many."""
        with self._db.begin() as connection:
            return int(
                connection.execute(
                    deliveries.update()
                    .where(deliveries.c.sop_instance_uid == sop_instance_uid)
                    .where(
                        deliveries.c.state.in_(
                            [DeliveryState.PENDING.value, DeliveryState.FAILED.value]
                        )
                    )
                    .values(
                        state=DeliveryState.SUPERSEDED.value,
                        last_error=f"superseded by {by_sop_instance_uid}",
                    )
                ).rowcount
            )

    def requeue(
        self,
        *,
        sop_instance_uids: Sequence[str] | None = None,
        include_done: bool = False,
        now: float | None = None,
    ) -> int:
        """Put failed (and optionally done) deliveries back to pending; return how many."""
        now = time.time() if now is None else now
        states = [DeliveryState.FAILED.value] + ([DeliveryState.DONE.value] if include_done else [])
        statement = deliveries.update().where(deliveries.c.state.in_(states))
        if sop_instance_uids:
            statement = statement.where(deliveries.c.sop_instance_uid.in_(list(sop_instance_uids)))
        statement = statement.values(
            state=DeliveryState.PENDING.value, next_attempt_at=now, created_at=now, done_at=None
        )
        with self._db.begin() as connection:
            return int(connection.execute(statement).rowcount)
