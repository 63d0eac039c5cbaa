"""The catalog: studies, series, instances and processing jobs.

SQLAlchemy Core over SQLite (WAL, ``synchronous=FULL``) by default; the same
schema and statements run on PostgreSQL (``postgresql+psycopg://`` URLs).
The series state column is the truth about work: see :class:`SeriesState`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import CatalogError

__all__ = [
    "NODULE_FIELDS",
    "Catalog",
    "Condition",
    "Delivery",
    "DeliveryState",
    "InstanceRecord",
    "SeriesState",
    "SeriesSummary",
    "metadata",
]

logger = logging.getLogger(__name__)


class SeriesState(str, Enum):
    """Where a series stands (DESIGN: the catalog's series state is the truth)."""

    RECEIVING = "receiving"
    """Instances are arriving; the series is not idle long enough yet."""
    COMPLETE = "complete"
    """No new instance for ``series.idle_seconds``; waiting for the processor."""
    PROCESSING = "processing"
    """A worker has claimed the series."""
    INDEXED = "indexed"
    """Nodules found and their codes are in the index."""
    REPORTED = "reported"
    """Results were sent back (SR, montage)."""
    SKIPPED = "skipped"
    """Does not qualify for processing; ``reason`` says why."""
    FAILED = "failed"
    """Processing failed; ``reason`` says why."""


metadata = sa.MetaData()

UID = sa.String(64)

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("study_instance_uid", UID, primary_key=True),
    sa.Column("patient_id", sa.String(64), index=True),
    sa.Column("patient_name", sa.String(324)),
    sa.Column("patient_birth_date", sa.String(8)),
    sa.Column("patient_sex", sa.String(16)),
    sa.Column("study_date", sa.String(8)),
    sa.Column("study_time", sa.String(16)),
    sa.Column("accession_number", sa.String(16), index=True),
    sa.Column("study_id", sa.String(16)),
    sa.Column("study_description", sa.String(64)),
    sa.Column("referring_physician_name", sa.String(324)),
    sa.Column("created_at", sa.Float, nullable=False),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("series_instance_uid", UID, primary_key=True),
    sa.Column(
        "study_instance_uid",
        UID,
        sa.ForeignKey("studies.study_instance_uid"),
        nullable=False,
        index=True,
    ),
    sa.Column("modality", sa.String(16)),
    sa.Column("series_number", sa.Integer),
    sa.Column("series_description", sa.String(64)),
    sa.Column("calling_ae_title", sa.String(16)),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text),
    sa.Column("instance_count", sa.Integer, nullable=False, default=0),
    sa.Column("first_received_at", sa.Float, nullable=False),
    sa.Column("last_received_at", sa.Float, nullable=False),
    sa.Column("state_changed_at", sa.Float, nullable=False),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("sop_instance_uid", UID, primary_key=True),
    sa.Column(
        "series_instance_uid",
        UID,
        sa.ForeignKey("series.series_instance_uid"),
        nullable=False,
        index=True,
    ),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("instance_number", sa.Integer),
    sa.Column("transfer_syntax_uid", UID, nullable=False),
    sa.Column("relative_path", sa.String(200), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column(
        "series_instance_uid", UID, sa.ForeignKey("series.series_instance_uid"), primary_key=True
    ),
    sa.Column("processor_version", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
)


nodules = sa.Table(
    "nodules",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "series_instance_uid", UID, sa.ForeignKey("series.series_instance_uid"), nullable=False
    ),
    sa.Column(
        "study_instance_uid",
        UID,
        sa.ForeignKey("studies.study_instance_uid"),
        nullable=False,
    ),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("nodule_index", sa.Integer, nullable=False),
    sa.Column("center_x", sa.Float, nullable=False),
    sa.Column("center_y", sa.Float, nullable=False),
    sa.Column("center_z", sa.Float, nullable=False),
    sa.Column("diameter_mm", sa.Float, nullable=False),
    sa.Column("long_axis_mm", sa.Float, nullable=False),
    sa.Column("volume_mm3", sa.Float, nullable=False),
    sa.Column("mean_hu", sa.Float, nullable=False),
    sa.Column("peak_hu", sa.Float, nullable=False),
    sa.Column("texture", sa.String(16), nullable=False),
    sa.Column("laterality", sa.String(8), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("size_class", sa.Integer, nullable=False),
    sa.Column("predicted_size_class", sa.Integer, nullable=False),
    sa.Column("predicted_texture", sa.String(16), nullable=False),
    sa.Column("shallow", sa.LargeBinary, nullable=False),
    sa.Column("middle", sa.LargeBinary, nullable=False),
    sa.Column("deep", sa.LargeBinary, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("thumbnail", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("series_instance_uid", "model_version", "nodule_index", name="uq_nodule"),
    # Study first: a lone model_version index matches every row of an archive
    # (one version) and, without statistics, SQLite may choose it for
    # "nodules of this study" and scan a million rows (300 ms instead of 1).
    sa.Index("ix_nodules_study_version", "study_instance_uid", "model_version"),
)

#: Nodule columns a caller provides (the rest are keys and bookkeeping).
NODULE_FIELDS = (
    "nodule_index",
    "center_x",
    "center_y",
    "center_z",
    "diameter_mm",
    "long_axis_mm",
    "volume_mm3",
    "mean_hu",
    "peak_hu",
    "texture",
    "laterality",
    "confidence",
    "size_class",
    "predicted_size_class",
    "predicted_texture",
    "shallow",
    "middle",
    "deep",
    "embedding",
    "thumbnail",
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.String(120), nullable=False),
    sa.Column("sop_instance_uid", UID, nullable=False),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("relative_path", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float),
    sa.UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_destination_instance"),
)


class DeliveryState(str, Enum):
    """Where one outbox delivery stands."""

    PENDING = "pending"
    """Waiting for its next attempt."""
    DONE = "done"
    """The destination answered Success or Warning."""
    FAILED = "failed"
    """The destination answered Failure, or retries ran out; ``last_error`` says why."""


@dataclass(frozen=True)
class Delivery:
    """One object to send to one destination."""

    id: int
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    relative_path: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None


@dataclass(frozen=True)
class InstanceRecord:
    """What the catalog keeps of one received instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str
    size: int
    sha256: str
    modality: str | None = None
    instance_number: int | None = None
    series_number: int | None = None
    series_description: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    calling_ae_title: str | None = None


@dataclass(frozen=True)
class SeriesSummary:
    """One row of ``dicom-node status``."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    instance_count: int
    state: SeriesState
    reason: str | None
    last_received_at: float
    study_date: str | None
    patient_name: str | None
    patient_id: str | None


_STUDY_FIELDS = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
)


class Condition(Protocol):
    """One matching condition of a query (``dicom_node.net.query.Match`` fits).

    ``kind`` is ``single``, ``wildcard`` (``*``, ``?``), ``range`` (values
    ``(low, high)``, empty = open) or ``list`` (any of the values).
    """

    @property
    def keyword(self) -> str:
        """DICOM keyword of the matched attribute."""

    @property
    def kind(self) -> Any:
        """Matching kind (a str, or a str Enum)."""

    @property
    def values(self) -> tuple[str, ...]:
        """The values to match."""


#: DICOM keyword -> column, per query level (Study Root).
_STUDY_COLUMNS = {
    "StudyInstanceUID": studies.c.study_instance_uid,
    "PatientName": studies.c.patient_name,
    "PatientID": studies.c.patient_id,
    "PatientBirthDate": studies.c.patient_birth_date,
    "PatientSex": studies.c.patient_sex,
    "StudyDate": studies.c.study_date,
    "StudyTime": studies.c.study_time,
    "AccessionNumber": studies.c.accession_number,
    "StudyID": studies.c.study_id,
    "StudyDescription": studies.c.study_description,
    "ReferringPhysicianName": studies.c.referring_physician_name,
}
_SERIES_COLUMNS = {
    "SeriesInstanceUID": series.c.series_instance_uid,
    "Modality": series.c.modality,
    "SeriesNumber": series.c.series_number,
    "SeriesDescription": series.c.series_description,
    "NumberOfSeriesRelatedInstances": series.c.instance_count,
}
_INSTANCE_COLUMNS = {
    "SOPInstanceUID": instances.c.sop_instance_uid,
    "SOPClassUID": instances.c.sop_class_uid,
    "InstanceNumber": instances.c.instance_number,
}
_CASE_INSENSITIVE = {"PatientName", "ReferringPhysicianName"}


def _kind(kind: Any) -> str:
    """The matching kind as a plain string (str Enums included)."""
    return str(getattr(kind, "value", kind))


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition_clause(column: Any, condition: Condition) -> Any:
    kind, values = _kind(condition.kind), condition.values
    insensitive = condition.keyword in _CASE_INSENSITIVE
    if kind == "single":
        if isinstance(column.type, sa.Integer):
            try:
                return column == int(values[0])
            except ValueError:
                return sa.false()
        if insensitive:
            return sa.func.lower(column) == values[0].lower()
        return column == values[0]
    if kind == "wildcard":
        pattern = _like_pattern(values[0])
        return (
            column.ilike(pattern, escape="\\") if insensitive else column.like(pattern, escape="\\")
        )
    if kind == "range":
        low, high = values
        clauses = []
        if low:
            clauses.append(column >= low)
        if high:
            # A time range's high bound "1200" includes 120059.
            clauses.append(
                column <= high + ("\uffff" if condition.keyword.endswith("Time") else "")
            )
        return sa.and_(*clauses)
    if kind == "list":
        return column.in_(values)
    raise CatalogError(f"unknown matching kind {kind!r}")


@dataclass(frozen=True)
class _AsKeyword:
    """A condition re-targeted at another keyword (ModalitiesInStudy -> Modality)."""

    keyword: str
    condition: Any

    @property
    def kind(self) -> str:
        return _kind(self.condition.kind)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.condition.values)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # DICOM matching is case-sensitive except for person names (ilike).
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


class Catalog:
    """Catalog queries over one database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path/catalog.sqlite3`` (default embedded)
        or ``postgresql+psycopg://user@host/db``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        # Series known to have their study and series rows: later instances
        # skip those two statements (rows are never deleted while running).
        self._known_series: set[str] = set()
        try:
            self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=True)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _on_sqlite_connect)
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise CatalogError(f"cannot open the catalog: {exc.__class__.__name__}: {exc}") from exc
        # The two statements run for every received instance, built once:
        # constructing statements per call costs more than executing them.
        self._insert_instance = (
            self._dialect_insert(instances)
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

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise CatalogError(f"catalog statement failed: {exc.__class__.__name__}") from exc

    def _dialect_insert(self, table: sa.Table) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite_insert(table)
        if dialect == "postgresql":
            return postgresql_insert(table)
        raise CatalogError(f"unsupported catalog database {dialect!r}")  # pragma: no cover

    def _insert_ignore(
        self, connection: Connection, table: sa.Table, values: dict[str, Any]
    ) -> bool:
        """INSERT unless the primary key exists; True if a row was inserted."""
        key = list(table.primary_key.columns)
        statement = (
            self._dialect_insert(table).values(**values).on_conflict_do_nothing().returning(*key)
        )
        return connection.execute(statement).first() is not None

    # -- ingest ------------------------------------------------------------

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
        with self._begin() as connection:
            if record.series_instance_uid not in self._known_series:
                study_values = {k: getattr(record, k) for k in _STUDY_FIELDS}
                self._insert_ignore(
                    connection,
                    studies,
                    {
                        "study_instance_uid": record.study_instance_uid,
                        "created_at": now,
                        **study_values,
                    },
                )
                self._insert_ignore(
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

    def instance_sha256(self, sop_instance_uid: str) -> str | None:
        """The stored content hash of an instance, or None if not catalogued."""
        with self._begin() as connection:
            value = connection.execute(
                sa.select(instances.c.sha256).where(
                    instances.c.sop_instance_uid == sop_instance_uid
                )
            ).scalar_one_or_none()
        return None if value is None else str(value)

    # -- series state ------------------------------------------------------

    def due_series(self, idle_seconds: float, *, now: float | None = None) -> list[str]:
        """Series still ``receiving`` whose last instance is older than ``idle_seconds``."""
        now = time.time() if now is None else now
        with self._begin() as connection:
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
        with self._begin() as connection:
            changed = connection.execute(statement).rowcount
        return bool(changed)

    def series_in_states(self, states: Sequence[SeriesState]) -> list[str]:
        """Series UIDs in any of ``states``, oldest change first."""
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(series.c.series_instance_uid)
                .where(series.c.state.in_([s.value for s in states]))
                .order_by(series.c.state_changed_at)
            ).all()
        return [str(row[0]) for row in rows]

    def series_state(self, series_instance_uid: str) -> tuple[SeriesState, str | None] | None:
        """The state and reason of a series, or None if unknown."""
        with self._begin() as connection:
            row = connection.execute(
                sa.select(series.c.state, series.c.reason).where(
                    series.c.series_instance_uid == series_instance_uid
                )
            ).first()
        return None if row is None else (SeriesState(row[0]), row[1])

    def series_instance_paths(self, series_instance_uid: str) -> list[str]:
        """Relative paths of a series' instances, by InstanceNumber then UID."""
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(instances.c.relative_path)
                .where(instances.c.series_instance_uid == series_instance_uid)
                .order_by(instances.c.instance_number, instances.c.sop_instance_uid)
            ).all()
        return [str(row[0]) for row in rows]

    # -- jobs --------------------------------------------------------------

    def start_job(
        self, series_instance_uid: str, processor_version: str, *, now: float | None = None
    ) -> None:
        """Record that a processor run began (replacing an unfinished one)."""
        now = time.time() if now is None else now
        with self._begin() as connection:
            connection.execute(
                jobs.delete()
                .where(jobs.c.series_instance_uid == series_instance_uid)
                .where(jobs.c.processor_version == processor_version)
            )
            connection.execute(
                jobs.insert().values(
                    series_instance_uid=series_instance_uid,
                    processor_version=processor_version,
                    state=SeriesState.PROCESSING.value,
                    started_at=now,
                )
            )

    def finish_job(
        self,
        series_instance_uid: str,
        processor_version: str,
        state: SeriesState,
        detail: str | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Record the end of a processor run."""
        now = time.time() if now is None else now
        with self._begin() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.series_instance_uid == series_instance_uid)
                .where(jobs.c.processor_version == processor_version)
                .values(state=state.value, detail=detail, finished_at=now)
            )

    def clear_jobs(self, series_instance_uids: Sequence[str]) -> None:
        """Forget the processing runs of some series (they run again when complete)."""
        with self._begin() as connection:
            for start in range(0, len(series_instance_uids), 500):
                connection.execute(
                    jobs.delete().where(
                        jobs.c.series_instance_uid.in_(
                            list(series_instance_uids[start : start + 500])
                        )
                    )
                )

    def job(self, series_instance_uid: str, processor_version: str) -> dict[str, Any] | None:
        """The job row of a series for a processor version, or None."""
        with self._begin() as connection:
            row = (
                connection.execute(
                    sa.select(jobs)
                    .where(jobs.c.series_instance_uid == series_instance_uid)
                    .where(jobs.c.processor_version == processor_version)
                )
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    # -- reading -----------------------------------------------------------

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
        with self._begin() as connection:
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

    def find(self, level: str, conditions: Sequence[Condition]) -> Iterator[dict[str, Any]]:
        """Rows matching a Study Root query, keyed by DICOM keyword.

        Parameters
        ----------
        level : str
            ``STUDY``, ``SERIES`` or ``IMAGE``.
        conditions : sequence of Condition
            Matching keys; keys of other levels than ``level`` and those above
            it are ignored by the caller's parser.

        Yields
        ------
        dict
            One row per match, with every key the level can return.
        """
        columns = dict(_STUDY_COLUMNS)
        if level in ("SERIES", "IMAGE"):
            columns |= _SERIES_COLUMNS
        if level == "IMAGE":
            columns |= _INSTANCE_COLUMNS
        labelled = [column.label(keyword) for keyword, column in columns.items()]
        query = sa.select(*labelled)
        if level == "STUDY":
            query = query.select_from(studies)
        elif level == "SERIES":
            query = query.select_from(series.join(studies))
        else:
            query = query.select_from(instances.join(series).join(studies))
        for condition in conditions:
            if condition.keyword == "ModalitiesInStudy":
                modality = _condition_clause(series.c.modality, _AsKeyword("Modality", condition))
                query = query.where(
                    sa.exists()
                    .where(series.c.study_instance_uid == studies.c.study_instance_uid)
                    .where(modality)
                )
            elif condition.keyword in columns:
                query = query.where(_condition_clause(columns[condition.keyword], condition))
        order = {
            "STUDY": [studies.c.study_date, studies.c.study_instance_uid],
            "SERIES": [series.c.series_number, series.c.series_instance_uid],
            "IMAGE": [instances.c.instance_number, instances.c.sop_instance_uid],
        }[level]
        query = query.order_by(*order)
        with self._begin() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        if level == "STUDY" and rows:
            self._add_study_aggregates(rows)
        yield from rows

    def _add_study_aggregates(self, rows: list[dict[str, Any]]) -> None:
        uids = [row["StudyInstanceUID"] for row in rows]
        found: dict[str, dict[str, Any]] = {}
        with self._begin() as connection:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                result = connection.execute(
                    sa.select(
                        series.c.study_instance_uid, series.c.modality, series.c.instance_count
                    ).where(series.c.study_instance_uid.in_(chunk))
                )
                for study_uid, modality, count in result:
                    entry = found.setdefault(
                        study_uid, {"modalities": [], "series": 0, "instances": 0}
                    )
                    if modality and modality not in entry["modalities"]:
                        entry["modalities"].append(modality)
                    entry["series"] += 1
                    entry["instances"] += int(count)
        for row in rows:
            entry = found.get(
                row["StudyInstanceUID"], {"modalities": [], "series": 0, "instances": 0}
            )
            row["ModalitiesInStudy"] = "\\".join(sorted(entry["modalities"]))
            row["NumberOfStudyRelatedSeries"] = entry["series"]
            row["NumberOfStudyRelatedInstances"] = entry["instances"]

    # -- nodules and their codes ----------------------------------------------

    def replace_nodules(
        self,
        series_instance_uid: str,
        model_version: str,
        rows: Sequence[dict[str, Any]],
        *,
        now: float | None = None,
    ) -> list[int]:
        """Store a series' nodules for one model version, replacing earlier ones.

        Idempotent per (series, model version): a rerun after a crash or a
        re-index writes the same rows again in one transaction.

        Parameters
        ----------
        rows : sequence of dict
            One dict per nodule with every key of :data:`NODULE_FIELDS`.

        Returns
        -------
        list of int
            The new nodule ids, in the order of ``rows``.
        """
        now = time.time() if now is None else now
        with self._begin() as connection:
            study_instance_uid = connection.execute(
                sa.select(series.c.study_instance_uid).where(
                    series.c.series_instance_uid == series_instance_uid
                )
            ).scalar_one()
            connection.execute(
                nodules.delete()
                .where(nodules.c.series_instance_uid == series_instance_uid)
                .where(nodules.c.model_version == model_version)
            )
            ids = []
            for row in rows:
                values = {k: row[k] for k in NODULE_FIELDS}
                result = connection.execute(
                    nodules.insert()
                    .values(
                        series_instance_uid=series_instance_uid,
                        study_instance_uid=study_instance_uid,
                        model_version=model_version,
                        created_at=now,
                        **values,
                    )
                    .returning(nodules.c.id)
                )
                ids.append(int(result.scalar_one()))
        return ids

    def nodule_ids_of_series(self, series_instance_uid: str, model_version: str) -> list[int]:
        """Ids of a series' nodules for a model version."""
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(nodules.c.id)
                .where(nodules.c.series_instance_uid == series_instance_uid)
                .where(nodules.c.model_version == model_version)
                .order_by(nodules.c.nodule_index)
            ).all()
        return [int(r[0]) for r in rows]

    def iter_codes(
        self, model_version: str, *, batch: int = 50_000
    ) -> Iterator[list[dict[str, Any]]]:
        """Batches of ``{id, shallow, middle, deep, embedding, predicted_size_class}`` for an index rebuild."""
        last = -1
        columns = (
            nodules.c.id,
            nodules.c.shallow,
            nodules.c.middle,
            nodules.c.deep,
            nodules.c.embedding,
            nodules.c.predicted_size_class,
        )
        while True:
            with self._begin() as connection:
                rows = (
                    connection.execute(
                        sa.select(*columns)
                        .where(nodules.c.model_version == model_version)
                        .where(nodules.c.id > last)
                        .order_by(nodules.c.id)
                        .limit(batch)
                    )
                    .mappings()
                    .all()
                )
            if not rows:
                return
            yield [dict(r) for r in rows]
            last = int(rows[-1]["id"])

    def model_versions(self) -> list[str]:
        """Model versions with stored nodules."""
        with self._begin() as connection:
            return [
                str(r[0]) for r in connection.execute(sa.select(nodules.c.model_version).distinct())
            ]

    def nodules_by_id(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Nodule rows with their study (patient, date), keyed by id."""
        if not ids:
            return {}
        query = (
            sa.select(
                nodules,
                studies.c.patient_id,
                studies.c.patient_name,
                studies.c.study_date,
                studies.c.accession_number,
            )
            .join(studies, studies.c.study_instance_uid == nodules.c.study_instance_uid)
            .where(nodules.c.id.in_([int(i) for i in ids]))
        )
        with self._begin() as connection:
            rows = connection.execute(query).mappings().all()
        return {int(r["id"]): dict(r) for r in rows}

    def nodules_of(
        self,
        *,
        model_version: str,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        patient_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Nodules of a study, a series or a patient (with study date), by study date."""
        query = (
            sa.select(nodules, studies.c.patient_id, studies.c.study_date)
            .join(studies, studies.c.study_instance_uid == nodules.c.study_instance_uid)
            .where(nodules.c.model_version == model_version)
            .order_by(studies.c.study_date, nodules.c.series_instance_uid, nodules.c.nodule_index)
        )
        if study_instance_uid is not None:
            query = query.where(nodules.c.study_instance_uid == study_instance_uid)
        if series_instance_uid is not None:
            query = query.where(nodules.c.series_instance_uid == series_instance_uid)
        if patient_id is not None:
            query = query.where(studies.c.patient_id == patient_id)
        with self._begin() as connection:
            return [dict(r) for r in connection.execute(query).mappings().all()]

    def studies_with_nodules(self, model_version: str) -> list[str]:
        """Study UIDs that have nodules of ``model_version``."""
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(nodules.c.study_instance_uid)
                .where(nodules.c.model_version == model_version)
                .distinct()
            ).all()
        return [str(r[0]) for r in rows]

    def study(self, study_instance_uid: str) -> dict[str, Any] | None:
        """One study row, or None."""
        with self._begin() as connection:
            row = (
                connection.execute(
                    sa.select(studies).where(studies.c.study_instance_uid == study_instance_uid)
                )
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    # -- outbox --------------------------------------------------------------

    def enqueue_delivery(
        self,
        destination: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        relative_path: str,
        *,
        now: float | None = None,
    ) -> bool:
        """Queue an object for a destination; False if it already was (delivered once)."""
        now = time.time() if now is None else now
        with self._begin() as connection:
            return self._insert_ignore(
                connection,
                outbox,
                {
                    "destination": destination,
                    "sop_instance_uid": sop_instance_uid,
                    "sop_class_uid": sop_class_uid,
                    "relative_path": relative_path,
                    "state": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                },
            )

    def deliveries(
        self, states: Sequence[DeliveryState] | None = None, *, due_before: float | None = None
    ) -> list[Delivery]:
        """Outbox rows, oldest first, optionally by state and due time."""
        query = sa.select(outbox).order_by(outbox.c.id)
        if states is not None:
            query = query.where(outbox.c.state.in_([s.value for s in states]))
        if due_before is not None:
            query = query.where(outbox.c.next_attempt_at <= due_before)
        with self._begin() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            Delivery(
                id=int(r["id"]),
                destination=r["destination"],
                sop_instance_uid=r["sop_instance_uid"],
                sop_class_uid=r["sop_class_uid"],
                relative_path=r["relative_path"],
                state=DeliveryState(r["state"]),
                attempts=int(r["attempts"]),
                next_attempt_at=float(r["next_attempt_at"]),
                created_at=float(r["created_at"]),
                last_error=r["last_error"],
            )
            for r in rows
        ]

    def finish_delivery(
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
            "attempts": outbox.c.attempts + 1,
            "last_error": error,
        }
        if state is DeliveryState.DONE:
            values["done_at"] = now
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        with self._begin() as connection:
            connection.execute(outbox.update().where(outbox.c.id == delivery_id).values(**values))

    def requeue_deliveries(
        self,
        *,
        sop_instance_uids: Sequence[str] | None = None,
        include_done: bool = False,
        now: float | None = None,
    ) -> int:
        """Put failed (and optionally done) deliveries back to pending; return how many."""
        now = time.time() if now is None else now
        states = [DeliveryState.FAILED.value] + ([DeliveryState.DONE.value] if include_done else [])
        statement = outbox.update().where(outbox.c.state.in_(states))
        if sop_instance_uids:
            statement = statement.where(outbox.c.sop_instance_uid.in_(list(sop_instance_uids)))
        statement = statement.values(
            state=DeliveryState.PENDING.value, next_attempt_at=now, created_at=now, done_at=None
        )
        with self._begin() as connection:
            return int(connection.execute(statement).rowcount)

    def instance_count(self) -> int:
        """Number of catalogued instances."""
        with self._begin() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(instances)).scalar_one()
            )

    def instance_paths(self) -> dict[str, str]:
        """``{sop_instance_uid: relative_path}`` for every instance."""
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(instances.c.sop_instance_uid, instances.c.relative_path)
            ).all()
        return {str(r[0]): str(r[1]) for r in rows}
