"""Nodules and their hash codes, per series and model version."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from ai.hashing.codes import LAYERS
from storage.catalog.engine import Database
from storage.catalog.records import CodeBatch, NewNodule, NoduleRecord
from storage.catalog.schema import nodules, series, studies

__all__ = ["NoduleCatalog"]

#: NewNodule fields stored as columns of the same name (center_xyz is three columns).
_PLAIN_FIELDS = tuple(f.name for f in dataclasses.fields(NewNodule) if f.name != "center_xyz")
#: Study columns every NoduleRecord carries.
_STUDY_COLUMNS = (
    studies.c.patient_id,
    studies.c.patient_name,
    studies.c.study_date,
    studies.c.accession_number,
)


def _values(nodule: NewNodule) -> dict[str, Any]:
    x, y, z = nodule.center_xyz
    return {
        **{name: getattr(nodule, name) for name in _PLAIN_FIELDS},
        "center_x": float(x),
        "center_y": float(y),
        "center_z": float(z),
    }


def _record(row: Any) -> NoduleRecord:
    return NoduleRecord(
        **{name: getattr(row, name) for name in _PLAIN_FIELDS},
        center_xyz=(float(row.center_x), float(row.center_y), float(row.center_z)),
        id=int(row.id),
        series_instance_uid=row.series_instance_uid,
        study_instance_uid=row.study_instance_uid,
        model_version=row.model_version,
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        study_date=row.study_date,
        accession_number=row.accession_number,
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
        now: float | None = None,
    ) -> list[NoduleRecord]:
        """Store a series' nodules for one model version, replacing earlier ones.

        Idempotent per (series, model version): a rerun after a crash or a
        re-index writes the same rows again in one transaction.

        Returns
        -------
        list of NoduleRecord
            The stored nodules with their new ids, in the order of ``found``
            (built from the input and the study row of the same transaction,
            not read back).
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            study = connection.execute(
                sa.select(series.c.study_instance_uid, *_STUDY_COLUMNS)
                .join(studies, studies.c.study_instance_uid == series.c.study_instance_uid)
                .where(series.c.series_instance_uid == series_instance_uid)
            ).one()
            connection.execute(
                nodules.delete()
                .where(nodules.c.series_instance_uid == series_instance_uid)
                .where(nodules.c.model_version == model_version)
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
                        **_values(nodule),
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

    def iter_codes(self, model_version: str, *, batch: int = 50_000) -> Iterator[CodeBatch]:
        """Batches of codes, embeddings and labels of a model version, by id (index rebuild)."""
        last = -1
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
        return {int(r.id): _record(r) for r in rows}

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
            return [_record(r) for r in connection.execute(query).all()]
