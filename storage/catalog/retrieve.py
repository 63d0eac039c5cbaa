"""Retrieve: the stored files a C-MOVE or C-GET asks for, by Study, Series or SOP Instance UIDs.

Received instances come from ``instances``; the node's own results (SR, key
images) of a study come from ``results`` and are part of a STUDY-level
retrieve, and of a SERIES or IMAGE level one that names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.schema import instances, results, series

__all__ = ["RetrieveCatalog", "StoredFile"]


@dataclass(frozen=True)
class StoredFile:
    """One stored object to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str


class RetrieveCatalog:
    """Files to send for a retrieve request.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def files(
        self,
        *,
        study_instance_uids: Sequence[str],
        series_instance_uids: Sequence[str] = (),
        sop_instance_uids: Sequence[str] = (),
    ) -> list[StoredFile]:
        """The stored objects matching every UID list given (an empty list matches all).

        Ordered by series and InstanceNumber, results last.
        """
        received = (
            sa.select(
                instances.c.sop_instance_uid,
                instances.c.sop_class_uid,
                instances.c.transfer_syntax_uid,
                instances.c.relative_path,
            )
            .join(series, series.c.series_instance_uid == instances.c.series_instance_uid)
            .where(series.c.study_instance_uid.in_(list(study_instance_uids)))
            .order_by(
                series.c.series_number, instances.c.instance_number, instances.c.sop_instance_uid
            )
        )
        generated = sa.select(
            results.c.sop_instance_uid,
            results.c.sop_class_uid,
            results.c.transfer_syntax_uid,
            results.c.relative_path,
        ).where(results.c.study_instance_uid.in_(list(study_instance_uids)))
        if series_instance_uids:
            received = received.where(
                instances.c.series_instance_uid.in_(list(series_instance_uids))
            )
            generated = generated.where(
                results.c.series_instance_uid.in_(list(series_instance_uids))
            )
        if sop_instance_uids:
            received = received.where(instances.c.sop_instance_uid.in_(list(sop_instance_uids)))
            generated = generated.where(results.c.sop_instance_uid.in_(list(sop_instance_uids)))
        with self._db.begin() as connection:
            rows = [*connection.execute(received).all(), *connection.execute(generated).all()]
        return [StoredFile(*(str(value) for value in row)) for row in rows]
