"""Nodules and their hash codes, per series and model version.

Nodule ids only grow, and every deleted nodule row leaves a row in
``nodule_removals`` (whose ``seq`` only grows too): an in-memory index that
remembers the last id and the last removal it has seen (its *cursor*) is
brought up to date by the rows after them (:meth:`NoduleCatalog.iter_codes`
with ``after_id``, :meth:`NoduleCatalog.removed_after`). Writers take the
catalog's ``nodules`` lock, so rows commit in the order of their ids and a
follower never skips one that commits late.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from ai.hashing.codes import LAYERS
from storage.catalog.engine import Database
from storage.catalog.leases import check_held
from storage.catalog.records import Claim, CodeBatch, NewNodule, NoduleRecord
from storage.catalog.schema import (
    nodule_removals,
    nodules,
    registration_images,
    series,
    studies,
)

__all__ = ["IndexCursor", "NoduleCatalog"]


@dataclasses.dataclass(frozen=True)
class IndexCursor:
    """How far an index has followed the catalog's nodule rows."""

    last_nodule_id: int = -1
    """The highest nodule id it has seen (rows with larger ids are new)."""
    last_removal: int = 0
    """The last ``nodule_removals.seq`` it has applied."""


#: Study columns every NoduleRecord carries.
_STUDY_COLUMNS = (
    studies.c.patient_id,
    studies.c.patient_name,
    studies.c.study_date,
    studies.c.accession_number,
)


class NoduleCatalog:
    """Store nodules with their codes; find them by id, series, study or patient.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def _select(self) -> Any:
        return sa.select(nodules, *_STUDY_COLUMNS).join(
            studies, studies.c.study_instance_uid == nodules.c.study_instance_uid
        )

    def replace(
        self,
        series_instance_uid: str,
        model_version: str,
        found: Sequence[NewNodule],
        *,
        claim: Claim | None = None,
        now: float | None = None,
        registration_image: bytes | None = None,
    ) -> list[NoduleRecord]:
        """Store a series' nodules for one model version, replacing earlier ones.

        Idempotent per (series, model version): a rerun after a crash or a
        re-index writes the same rows again in one transaction, and records
        the ids it removed.

        Parameters
        ----------
        claim : Claim, optional
            The job computing them: nothing is written unless its worker
            still holds it (:func:`storage.catalog.workflow.check_held`).
        registration_image : bytes, optional
            The series' compact image for registering the patient's later
            scans to it (``ai.registration.RegistrationImage.to_bytes``);
            replaces the one stored before.

        Raises
        ------
        LeaseLost
            The job was taken over by another worker; nothing was written.

        Returns
        -------
        list of NoduleRecord
            The stored nodules with their new ids, in the order of ``found``
            (built from the input and the study row of the same transaction,
            not read back).
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            self._db.serialize(connection, "nodules")
            if claim is not None:
                check_held(connection, claim)
            study = connection.execute(
                sa.select(series.c.study_instance_uid, *_STUDY_COLUMNS)
                .join(studies, studies.c.study_instance_uid == series.c.study_instance_uid)
                .where(series.c.series_instance_uid == series_instance_uid)
            ).one()
            earlier = (nodules.c.series_instance_uid == series_instance_uid) & (
                nodules.c.model_version == model_version
            )
            connection.execute(
                nodule_removals.insert().from_select(
                    ["nodule_id", "model_version", "removed_at"],
                    sa.select(nodules.c.id, nodules.c.model_version, sa.literal(now))
                    .where(earlier)
                    .order_by(nodules.c.id),
                )
            )
            connection.execute(nodules.delete().where(earlier))
            if registration_image is not None:
                this_series = registration_images.c.series_instance_uid == series_instance_uid
                connection.execute(registration_images.delete().where(this_series))
                connection.execute(
                    registration_images.insert().values(
                        series_instance_uid=series_instance_uid,
                        image=registration_image,
                        created_at=now,
                    )
                )
            stored = []
            for nodule in found:
                new_id = connection.execute(
                    nodules.insert()
                    .values(
                        series_instance_uid=series_instance_uid,
                        study_instance_uid=study.study_instance_uid,
                        model_version=model_version,
                        created_at=now,
                        **nodule.columns(),
                    )
                    .returning(nodules.c.id)
                ).scalar_one()
                stored.append(
                    NoduleRecord(
                        **{f.name: getattr(nodule, f.name) for f in dataclasses.fields(NewNodule)},
                        id=int(new_id),
                        series_instance_uid=series_instance_uid,
                        study_instance_uid=study.study_instance_uid,
                        model_version=model_version,
                        patient_id=study.patient_id,
                        patient_name=study.patient_name,
                        study_date=study.study_date,
                        accession_number=study.accession_number,
                    )
                )
        return stored

    def registration_image(self, series_instance_uid: str) -> bytes | None:
        """The series' compact registration image, or None when none was stored."""
        with self._db.begin() as connection:
            image = connection.execute(
                sa.select(registration_images.c.image).where(
                    registration_images.c.series_instance_uid == series_instance_uid
                )
            ).scalar()
        return None if image is None else bytes(image)

    def ids_of_series(self, series_instance_uid: str, model_version: str) -> list[int]:
        """Ids of a series' nodules for a model version."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(nodules.c.id)
                .where(nodules.c.series_instance_uid == series_instance_uid)
                .where(nodules.c.model_version == model_version)
                .order_by(nodules.c.nodule_index)
            ).all()
        return [int(r[0]) for r in rows]

    def iter_codes(
        self,
        model_version: str,
        *,
        after_id: int = -1,
        up_to_id: int | None = None,
        batch: int = 50_000,
    ) -> Iterator[CodeBatch]:
        """Batches of codes, embeddings and labels of a model version, by id.

        Parameters
        ----------
        after_id : int
            Only nodules with a larger id (an index's cursor); -1 for all.
        up_to_id : int, optional
            Only nodules with this id or a smaller one.
        """
        last = after_id
        columns = (
            nodules.c.id,
            *(nodules.c[layer] for layer in LAYERS),
            nodules.c.embedding,
            nodules.c.predicted_size_class,
        )
        while True:
            with self._db.begin() as connection:
                rows = connection.execute(
                    sa.select(*columns)
                    .where(nodules.c.model_version == model_version)
                    .where(nodules.c.id > last)
                    .where(sa.true() if up_to_id is None else nodules.c.id <= up_to_id)
                    .order_by(nodules.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            yield CodeBatch(
                ids=np.array([r.id for r in rows], np.int64),
                codes=np.stack(
                    [
                        np.frombuffer(
                            b"".join(bytes(r._mapping[layer]) for layer in LAYERS), np.uint8
                        )
                        for r in rows
                    ]
                ),
                embeddings=np.stack([np.frombuffer(bytes(r.embedding), np.float32) for r in rows]),
                labels=np.array([r.predicted_size_class for r in rows], np.uint8),
            )
            last = int(rows[-1].id)

    def removed_after(self, model_version: str, after: int) -> tuple[list[int], int]:
        """Ids of ``model_version``'s nodules removed after removal ``after``, and the last seq.

        Returns
        -------
        (list of int, int)
            The removed ids in order, and the ``seq`` of the last removal of
            any version (``after`` when there was none).
        """
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(
                    nodule_removals.c.seq,
                    nodule_removals.c.nodule_id,
                    nodule_removals.c.model_version,
                )
                .where(nodule_removals.c.seq > after)
                .order_by(nodule_removals.c.seq)
            ).all()
        ids = [int(r.nodule_id) for r in rows if r.model_version == model_version]
        return ids, int(rows[-1].seq) if rows else after

    def cursor(self) -> IndexCursor:
        """The catalog's newest nodule id and removal now.

        Every row up to them has committed (writers commit in id order), so
        an index holding every row of its version up to this cursor needs
        only the rows after it.
        """
        with self._db.begin() as connection:
            last_id = connection.execute(sa.select(sa.func.max(nodules.c.id))).scalar()
            last_removal = connection.execute(
                sa.select(sa.func.max(nodule_removals.c.seq))
            ).scalar()
        return IndexCursor(
            -1 if last_id is None else int(last_id),
            0 if last_removal is None else int(last_removal),
        )

    def model_versions(self) -> list[str]:
        """Model versions with stored nodules."""
        with self._db.begin() as connection:
            return [
                str(r[0]) for r in connection.execute(sa.select(nodules.c.model_version).distinct())
            ]

    def by_id(self, ids: Sequence[int]) -> dict[int, NoduleRecord]:
        """Nodules with their study's patient and date, keyed by id."""
        if not ids:
            return {}
        query = self._select().where(nodules.c.id.in_([int(i) for i in ids]))
        with self._db.begin() as connection:
            rows = connection.execute(query).all()
        return {int(r.id): NoduleRecord.from_columns(r) for r in rows}

    def patients_of(self, ids: Sequence[int]) -> dict[int, str | None]:
        """``{nodule id: PatientID}`` (without the codes and thumbnails of :meth:`by_id`)."""
        if not ids:
            return {}
        query = (
            sa.select(nodules.c.id, studies.c.patient_id)
            .join(studies, studies.c.study_instance_uid == nodules.c.study_instance_uid)
            .where(nodules.c.id.in_([int(i) for i in ids]))
        )
        with self._db.begin() as connection:
            return {int(r.id): r.patient_id for r in connection.execute(query).all()}

    def of(
        self,
        *,
        model_version: str,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        patient_id: str | None = None,
    ) -> list[NoduleRecord]:
        """Nodules of a study, a series or a patient, by study date."""
        query = (
            self._select()
            .where(nodules.c.model_version == model_version)
            .order_by(studies.c.study_date, nodules.c.series_instance_uid, nodules.c.nodule_index)
        )
        if study_instance_uid is not None:
            query = query.where(nodules.c.study_instance_uid == study_instance_uid)
        if series_instance_uid is not None:
            query = query.where(nodules.c.series_instance_uid == series_instance_uid)
        if patient_id is not None:
            query = query.where(studies.c.patient_id == patient_id)
        with self._db.begin() as connection:
            return [NoduleRecord.from_columns(r) for r in connection.execute(query).all()]
